"""Request-logging overhead: completion tokens/s through the HTTP API with an endpoint's logging on ÷ off.

    python bench/logging_overhead.py [--layers 30] [--requests 32] [--concurrency 8] [--max-tokens 32] [--rounds 3]

A random Llama of SmolLM2-135M's shape (tiny vocabulary) is served by a real `graft serve` app (uvicorn, in this
process) on one hosting cluster with two endpoints of the base model: ``plain`` (log_requests off) and ``logged``
(on). Both arms send the same greedy requests (so the same tokens are generated), ``concurrency`` at a time;
rounds alternate the arms (plain, logged, logged, plain, ...) so machine load drifts hit both alike. The ratio
is the median logged tokens/s over the median plain tokens/s (goal >= 0.97). Results also go to
bench/results/logging.json. Every logged row is checked to exist at the end. Because this machine's load swings
the end-to-end ratio by more than logging could cost, the script also times logging's own CPU per request
(queueing the row and the writer's insert, 2,000 synthetic rows) and states it as a share of a request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workloads import cpu_name

RESULTS = Path(__file__).parent / "results" / "logging.json"


def logging_cost_ms(endpoint: dict, max_tokens: int, n: int = 2000) -> float:
    """CPU milliseconds logging adds to one request, timed without the model: queueing the row (what the request
    path does) plus the writer's insert of it (batched, in its thread), each over ``n`` synthetic rows."""
    from graftlm.config import get_settings
    from graftlm.observe import logs

    def entry(i):
        return {"id": f"chatcmpl-cost-{i}", "endpoint_id": endpoint["id"], "endpoint_name": endpoint["name"],
                "model": endpoint["model"], "adapter": None, "kind": "chat", "status": 200, "finish_reason": "length",
                "prompt_tokens": 20, "completion_tokens": max_tokens, "latency_ms": 100.0, "ttft_ms": 10.0,
                "request": {"messages": [{"role": "user", "content": f"request {i}: tell me something"}]},
                "response": {"choices": [{"index": 0, "text": "word " * max_tokens, "finish_reason": "length"}]}}

    t0 = time.process_time()
    for i in range(n):
        logs.record(entry(i))
    logs.flush(600)
    queued_and_written = time.process_time() - t0  # this process's CPU: the request side and the writer thread
    return 1000 * queued_and_written / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per arm")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="graft-bench-logs-"))
    os.environ.update(GRAFT_HOME=str(home), GRAFT_ADMIN_KEY="gk-bench", GRAFT_DTYPE="float32",
                      TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    import httpx

    from graftlm.api.app import create_app
    from graftlm.clusters import clusters, endpoints
    from graftlm.models.catalog import import_model
    from graftlm.observe import logs
    from graftlm.testing.live import serve_in_thread
    from graftlm.testing.models import build_smollm_shaped_llama

    base = import_model(build_smollm_shaped_llama(home / "base-src", layers=args.layers), "bench-base")
    cluster = clusters.create_cluster("HOSTING", base_model=base["id"], name="bench")
    endpoints.create_endpoint(base["id"], cluster["id"], "plain")
    logged_ep = endpoints.create_endpoint(base["id"], cluster["id"], "logged", log_requests=True)

    live = serve_in_thread(create_app(run_scheduler=False))
    client = httpx.Client(base_url=f"{live.origin}/v1", timeout=600,
                          headers={"Authorization": "Bearer gk-bench"},
                          limits=httpx.Limits(max_connections=args.concurrency))
    prompts = [f"request {i}: tell me something about the number {i * 7}" for i in range(args.requests)]

    def ask(model: str, prompt: str) -> int:
        r = client.post("/chat/completions", json={"model": model, "max_tokens": args.max_tokens, "temperature": 0,
                                                   "messages": [{"role": "user", "content": prompt}]})
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    def arm(model: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            tokens = sum(pool.map(lambda p: ask(model, p), prompts))
        return tokens / (time.perf_counter() - t0), tokens

    arm("plain")  # warm-up: weights, kernels, first allocations
    speeds: dict[str, list[float]] = {"plain": [], "logged": []}
    tokens: dict[str, set[int]] = {"plain": set(), "logged": set()}
    order = [("plain", "logged") if i % 2 == 0 else ("logged", "plain") for i in range(args.rounds)]
    for pair in order:
        for name in pair:
            speed, n = arm(name)
            speeds[name].append(speed)
            tokens[name].add(n)
            print(f"  {name:6s} {speed:8.1f} tokens/s ({n} tokens)", flush=True)
    logs.flush()
    stored = logs.list_logs(logged_ep["id"], limit=1)["data"]
    from sqlalchemy import func, select

    from graftlm.store.db import session
    from graftlm.store.models import RequestLog

    with session() as s:
        rows = s.scalar(select(func.count()).select_from(RequestLog))
    live.stop()

    cost_ms = logging_cost_ms(logged_ep, args.max_tokens)
    plain, logged = statistics.median(speeds["plain"]), statistics.median(speeds["logged"])
    per_request_ms = 1000 * args.max_tokens * args.concurrency / plain  # wall time of one request at that load
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "dtype": "float32", "layers": args.layers,
              "requests_per_round": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
              "rounds_per_arm": args.rounds, "completion_tokens_per_round": sorted(tokens["plain"] | tokens["logged"]),
              "plain_tokens_per_s": speeds["plain"], "logged_tokens_per_s": speeds["logged"],
              "median_plain": plain, "median_logged": logged, "ratio_logged_over_plain": logged / plain,
              "rows_logged": rows, "rows_expected": args.requests * args.rounds, "goal": 0.97,
              "logging_cpu_ms_per_request": cost_ms, "request_wall_ms": per_request_ms,
              "cost_bound_ratio": 1 - cost_ms / per_request_ms}
    assert rows == args.requests * args.rounds and stored, "every logged request must have its row"
    print(f"CPU: {result['cpu']} ({result['cores']} cores), fp32, {args.layers}-layer SmolLM2-135M-shaped random "
          f"Llama; {args.requests} requests x {args.max_tokens} tokens, {args.concurrency} at a time, "
          f"{args.rounds} rounds per arm")
    print(f"logging off: {plain:8.1f} tokens/s  (rounds: {', '.join(f'{x:.1f}' for x in speeds['plain'])})")
    print(f"logging on:  {logged:8.1f} tokens/s  (rounds: {', '.join(f'{x:.1f}' for x in speeds['logged'])})")
    print(f"ratio on/off: {logged / plain:.3f}x (goal >= 0.97); {rows} rows logged")
    print(f"logging's own CPU per request (record + the writer's insert, timed alone): {cost_ms:.3f} ms of a "
          f"{per_request_ms:.0f} ms request: at most {100 * cost_ms / per_request_ms:.4f}% "
          f"(bound on the ratio: {1 - cost_ms / per_request_ms:.4f}x)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
