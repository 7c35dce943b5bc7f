"""Replica processes vs the in-process engine, in one run (ratios against baselines measured here).

    python bench/replicas.py [--model-path ~/.graft/models/smollm2-135m-instruct] [--rounds 2]

1. Out-of-process ÷ in-process: tokens/s and TTFT p50 at 1 and 32 concurrent requests (one replica with the
   same threads as the in-process engine; the rounds alternate the two, medians reported).
2. API responsiveness: p99 of GET /v1/models while 32 streams decode, `graft serve` with GRAFT_REPLICAS=inproc
   vs process (a 1-unit hosting cluster, the streams through its endpoint).
3. 2 replicas ÷ 1 on a mixed 32-adapter load (16 LoRA r=8, 16 T-Few): on a CPU each of the 2 replicas has
   half the threads of the 1.

Without --model-path a random Llama of SmolLM2-135M's shape is built; fp32 throughout. Everything printed is
also written to bench/results/replicas.json, with the CPU's name and the load average (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.workloads import cpu_name  # noqa: E402
from graftlm.serve import Engine, SamplingParams  # noqa: E402
from graftlm.serve.remote import ReplicaSet  # noqa: E402
from graftlm.testing.adapters import make_peft_adapters  # noqa: E402
from graftlm.testing.models import build_smollm_shaped_llama  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "replicas.json"
ROOT = Path(__file__).resolve().parents[1]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def run(engine, prompts, adapters, new_tokens) -> dict:
    """Submit every request at once, wait for all: tokens/s over the wall time, TTFT p50."""
    t0 = time.perf_counter()
    handles = [engine.submit(p, greedy(new_tokens), a) for p, a in zip(prompts, adapters)]
    outs = [h.result() for h in handles]
    wall = time.perf_counter() - t0
    return {"tokens_per_s": sum(o.completion_tokens for o in outs) / wall,
            "ttft_p50_ms": 1e3 * statistics.median(o.ttft_s for o in outs)}


def same_engine_ratio(args, model_path, prompts, threads) -> dict:
    inproc = Engine(model_path, dtype="float32", max_batch_size=32, max_seq_len=512, threads=threads)
    inproc.start()
    remote = ReplicaSet(model_path, units=1, dtype="float32", max_batch_size=32, max_seq_len=512, threads=threads,
                        name="bench")
    out = {}
    try:
        for c in (1, 32):
            rows = {"inproc": [], "process": []}
            for _ in range(args.rounds):
                for name, engine in (("inproc", inproc), ("process", remote)):
                    run(engine, prompts[:c], [None] * c, 4)  # warm
                    rows[name].append(run(engine, prompts[:c], [None] * c, args.new_tokens))
            med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rows.items()}
            out[f"c{c}"] = med | {
                "tokens_per_s_ratio": med["process"]["tokens_per_s"] / med["inproc"]["tokens_per_s"],
                "ttft_p50_ratio": med["process"]["ttft_p50_ms"] / med["inproc"]["ttft_p50_ms"]}
            print(f"concurrency {c:>2}: tokens/s in-process {med['inproc']['tokens_per_s']:.1f}, replica "
                  f"{med['process']['tokens_per_s']:.1f} ({out[f'c{c}']['tokens_per_s_ratio']:.2f}x); TTFT p50 "
                  f"{med['inproc']['ttft_p50_ms']:.1f} vs {med['process']['ttft_p50_ms']:.1f} ms "
                  f"({out[f'c{c}']['ttft_p50_ratio']:.2f}x)", flush=True)
    finally:
        inproc.stop()
        remote.stop()
    return out


def mixed_ratio(args, model_path, prompts, adapters, threads) -> dict:
    names = [f"a{i}" for i in range(len(adapters))]
    out = {}
    for units in (1, 2):
        rs = ReplicaSet(model_path, units=units, dtype="float32", max_batch_size=32, max_seq_len=512,
                        threads=max(1, threads // units), name=f"bench{units}")
        try:
            for name, path in zip(names, adapters):
                rs.register_adapter(name, path)
            run(rs, prompts, names, 4)  # warm: every adapter loaded where the router puts it
            out[f"units{units}"] = statistics.median(run(rs, prompts, names, args.new_tokens)["tokens_per_s"]
                                                     for _ in range(args.rounds))
        finally:
            rs.stop()
    out["ratio"] = out["units2"] / out["units1"]
    print(f"mixed 32 adapters: 1 replica x {threads} threads {out['units1']:.1f} tokens/s, 2 replicas x "
          f"{max(1, threads // 2)} {out['units2']:.1f} ({out['ratio']:.2f}x)", flush=True)
    return out


def api_p99(args, model_path, mode: str) -> dict:
    """p99 of GET /v1/models while 32 streams decode through a hosting endpoint (`graft serve` subprocess)."""
    import httpx

    home = Path(tempfile.mkdtemp(prefix=f"graft-bench-{mode}-"))
    env = {**os.environ, "GRAFT_HOME": str(home), "GRAFT_ADMIN_KEY": "bench", "GRAFT_REPLICAS": mode,
           "GRAFT_DTYPE": "float32", "PYTHONPATH": str(ROOT), "GRAFT_WARM_ENDPOINTS": "false"}
    subprocess.run([sys.executable, "-m", "graftlm.cli", "models", "import", str(model_path), "--name", "base"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    from graftlm.testing.live import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "graftlm.cli", "serve", "--port", str(port), "--log-level",
                             "warning"], env=env, stdout=subprocess.DEVNULL)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600, headers={"Authorization": "Bearer bench"})
    try:
        for _ in range(600):
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        c = http.post("/v1/dedicated_ai_clusters", json={"type": "HOSTING", "base_model": "base", "unit_count": 1})
        c.raise_for_status()
        http.post("/v1/endpoints", json={"model": "base", "dedicated_ai_cluster_id": c.json()["id"],
                                         "name": "ep"}).raise_for_status()
        body = {"model": "ep", "stream": True, "max_tokens": args.stream_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": "tell me a long story"}]}
        http.post("/v1/chat/completions", json=body | {"stream": False, "max_tokens": 2}).raise_for_status()
        started = threading.Barrier(33)
        done = threading.Event()

        def stream():
            with httpx.Client(base_url=str(http.base_url), timeout=600, headers=dict(http.headers)) as c2:
                started.wait()
                with c2.stream("POST", "/v1/chat/completions", json=body) as r:
                    for _ in r.iter_lines():
                        pass
        threads = [threading.Thread(target=stream) for _ in range(32)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(1.0)  # the streams are admitted and decoding
        times = []
        while any(t.is_alive() for t in threads) and len(times) < args.probes:
            t0 = time.perf_counter()
            http.get("/v1/models").raise_for_status()
            times.append(1e3 * (time.perf_counter() - t0))
            time.sleep(0.02)
        done.set()
        for t in threads:
            t.join()
        return {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99), "probes": len(times)}
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--stream-tokens", type=int, default=64)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--skip", default="", help="comma-separated: same, api, mixed")
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    model_path = args.model_path.expanduser() if args.model_path else build_smollm_shaped_llama(tmp / "model")
    threads = torch.get_num_threads()
    prompts = [torch.randint(3, 300, (args.prompt_tokens,)).tolist() for _ in range(32)]
    results = {"cpu": cpu_name(), "threads": threads, "model": str(model_path), "new_tokens": args.new_tokens,
               "prompt_tokens": args.prompt_tokens, "rounds": args.rounds, "load_before": os.getloadavg()}
    print(f"{results['cpu']}, {threads} threads, load average {results['load_before'][0]:.1f}", flush=True)
    skip = set(args.skip.split(","))
    if "same" not in skip:
        results["process_vs_inproc"] = same_engine_ratio(args, model_path, prompts, threads)
    if "api" not in skip:
        results["models_latency"] = {mode: api_p99(args, model_path, mode) for mode in ("inproc", "process")}
        m = results["models_latency"]
        print(f"GET /v1/models while 32 streams decode: p99 in-process {m['inproc']['p99_ms']:.1f} ms, "
              f"replicas {m['process']['p99_ms']:.1f} ms (p50 {m['inproc']['p50_ms']:.1f} vs "
              f"{m['process']['p50_ms']:.1f})", flush=True)
    if "mixed" not in skip:
        adapters = make_peft_adapters(model_path, [tmp / f"lora{i}" for i in range(16)], "lora", r=8, scale=0.05) + \
            make_peft_adapters(model_path, [tmp / f"ia3_{i}" for i in range(16)], "ia3", scale=0.05)
        results["two_vs_one_replica_mixed"] = mixed_ratio(args, model_path, prompts, adapters, threads)
    results["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"load average after {results['load_after'][0]:.1f}; written to {RESULTS}")


if __name__ == "__main__":
    main()
