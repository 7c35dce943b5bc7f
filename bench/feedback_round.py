"""One feedback round on CLINC150 with the real model (issue 23): does training on rated logs help?

    nice -n 5 python bench/feedback_round.py [--per-intent 20] [--out bench/results/feedback_round.json]

1. The T-Few model of `make demo` (tfew, 2 epochs, batch 8 on examples/clinc150/train.jsonl; reused when this
   GRAFT_HOME has it) is served on an endpoint with request logs on, by a real server (uvicorn, HTTP).
2. Feedback queries — CLINC150's *validation* split, ``--per-intent`` queries of each of the 8 banking intents
   (none is in the demo's train or test file) — are asked through the endpoint; each answer is rated against its
   label with POST /v1/feedback: thumbs up when right, thumbs down with the label as the correction when not.
3. `graft data from-logs --upload` turns the rated logs into SFT examples (good answers and corrections) and
   preference pairs (correction preferred over the wrong answer).
4. Two jobs continue the T-Few model (its adapter is the start; product defaults otherwise): DPO on the pairs
   (beta 0.1; reference = the T-Few model), and SFT on the SFT examples.
5. Held-out accuracy on examples/clinc150/test.jsonl (80 queries the round never saw), with 95% bootstrap CIs,
   and the paired difference of each trained model against the T-Few model it started from.

Baseline: the T-Few model before the round, evaluated in the same run on the same examples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from workloads import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(os.environ.get("CLINC150_DIR") or next(  # ../shared beside a checkout, ../../shared beside a worktree
    (p for p in (ROOT.parent / "shared" / "data" / "clinc150", ROOT.parents[1] / "shared" / "data" / "clinc150")
     if p.is_dir()), ROOT.parent / "shared" / "data" / "clinc150"))
TRAIN, TEST = ROOT / "examples" / "clinc150" / "train.jsonl", ROOT / "examples" / "clinc150" / "test.jsonl"
BASE = "smollm2-135m-instruct"
SUFFIX = "clinc-demo"  # the demo's custom model
SEED = 23


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def feedback_queries(per_intent: int) -> list[tuple[list[dict], str]]:
    """(prompt messages, label): CLINC150 validation queries of the demo's intents, with the demo's system prompt."""
    first = json.loads(TRAIN.read_text().splitlines()[0])
    system = first["messages"][0]
    labels = sorted({json.loads(x)["messages"][-1]["content"] for x in TRAIN.read_text().splitlines() if x.strip()})
    seen = {json.loads(x)["messages"][1]["content"] for f in (TRAIN, TEST) for x in f.read_text().splitlines() if x}
    data = json.loads((SOURCE / "data_small.json").read_text())
    rng = random.Random(SEED)
    out = []
    for label in labels:
        texts = [t for t, lab in data["val"] if lab == label and t not in seen]
        out += [([system, {"role": "user", "content": t}], label) for t in rng.sample(texts, min(per_intent, len(texts)))]
    rng.shuffle(out)
    return out


def tfew_model() -> str:
    from graftlm.jobs.service import create_job
    from graftlm.files.service import upload_local
    from graftlm.models.catalog import list_models

    mine = [m for m in list_models() if m["kind"] == "custom" and m["id"].startswith(f"ft:{BASE}:{SUFFIX}:")
            and "ckpt-step" not in m["id"]]
    if mine:
        log(f"reusing the demo's T-Few model {mine[-1]['id']}")
        return mine[-1]["id"]
    job = create_job(model=BASE, training_file=upload_local(TRAIN), suffix=SUFFIX, hyperparameters={
        "training_method": "tfew", "training_duration": "2ep", "training_batch_size": 8, "context_length": 256})
    return wait(job, "the demo's T-Few model")


def wait(job: dict, what: str) -> str:
    from graftlm.jobs import embedded

    embedded.ensure_scheduler()
    log(f"training {what} ({job['id']})")
    done = embedded.wait_for_job(job["id"], timeout=7200)
    if done["status"] != "succeeded":
        raise SystemExit(f"{what}: job {done['status']}: {done['error']}")
    log(f"trained {done['fine_tuned_model']}")
    return done["fine_tuned_model"]


def admin_key() -> str:
    """GRAFT_ADMIN_KEY, else GRAFT_HOME/admin.key (created on first use, as `graft serve` does)."""
    from graftlm.config import get_settings
    from graftlm.keys.service import ensure_admin_key

    settings = get_settings()
    return settings.admin_key or ensure_admin_key() or (settings.home / "admin.key").read_text().strip()


def is_right(answer: str, label: str) -> bool:
    from graftlm.evals.scorers import label_accuracy

    return label_accuracy(answer, label) == 1.0


def held_out(models: dict[str, str]) -> tuple[dict, dict]:
    from graftlm.evals.run import compare_runs, run_eval

    runs = {name: run_eval(model, str(TEST), max_tokens=8, save=False) for name, model in models.items()}
    table = {name: {"model": models[name], "accuracy": r["score"], "ci": [r["ci_low"], r["ci_high"]], "n": r["n"]}
             for name, r in runs.items()}
    for name, r in runs.items():
        if name != "before":
            d = compare_runs(runs["before"], r)
            table[name]["vs_before"] = {"diff": d["diff"], "ci": [d["ci_low"], d["ci_high"]],
                                        "significant": d["significant"]}
    return table, runs


def main() -> None:
    global BASE
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-intent", type=int, default=20, help="feedback queries per intent (CLINC150 val split)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "feedback_round.json"))
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--model", default=BASE, help="base model (a registered one; a tiny model smoke-tests the script)")
    ap.add_argument("--start-model", default=None, help="the custom model the round starts from (default: the "
                                                        "demo's T-Few model, trained when missing)")
    ap.add_argument("--epochs", type=int, default=None, help="n_epochs of both jobs (default: the product's auto)")
    args = ap.parse_args()
    BASE = args.model
    started = time.time()
    import httpx
    from typer.testing import CliRunner

    from graftlm.cli.main import app
    from graftlm.clusters import clusters, endpoints
    from graftlm.jobs.service import create_job

    import torch

    threads = torch.get_num_threads()
    queries = feedback_queries(args.per_intent)  # before training: a missing data set fails now, not later
    tfew = args.start_model or tfew_model()
    cluster = next((c for c in clusters.list_clusters("HOSTING") if c["name"] == "feedback-round"), None)
    cluster = cluster or clusters.create_cluster("HOSTING", base_model=BASE, name="feedback-round")
    name = f"feedback-{int(started)}"  # a fresh endpoint: its logs are this round's only
    ep = endpoints.create_endpoint(tfew, cluster["id"], name, log_requests=True, log_retention_days=1)
    key = admin_key()
    from graftlm.testing.live import serve_in_thread

    live = serve_in_thread()
    url = live.origin
    log(f"asking {len(queries)} feedback queries through endpoint {name} ({url})")
    right = 0
    with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as http:
        def ask(item):
            messages, label = item
            r = http.post("/v1/chat/completions", json={"model": name, "messages": messages, "max_tokens": 8,
                                                        "temperature": 0})
            r.raise_for_status()
            return r.json(), label

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:  # concurrent requests share the engine's batch
            answers = list(pool.map(ask, queries))
        for body, label in answers:
            text = body["choices"][0]["message"]["content"]
            ok = is_right(text, label)
            right += ok
            fb = {"completion_id": body["id"], "rating": 1 if ok else -1}
            if not ok:
                fb |= {"correction": label, "comment": "wrong intent"}
            r = http.post("/v1/feedback", json=fb)
            r.raise_for_status()
    log(f"the T-Few model got {right}/{len(queries)} feedback queries right; rated all")
    out_dir = Path(tempfile.mkdtemp(prefix="feedback-round-"))
    r = CliRunner().invoke(app, ["data", "from-logs", "--endpoint", name, "--out", str(out_dir), "--upload", "--json"])
    if r.exit_code != 0:
        raise SystemExit(f"graft data from-logs failed: {r.output}")
    built = json.loads(r.output)
    log(f"from-logs: {built['stats']}")
    files = built["files"]
    live.stop()
    trained = {"before": tfew}
    jobs = {}
    epochs = {"n_epochs": args.epochs} if args.epochs else {}
    if "preference" in files:
        jobs["dpo"] = create_job(model=tfew, training_file=files["preference"]["file_id"], suffix="feedback-dpo",
                                 method={"type": "dpo", "dpo": {"hyperparameters": {"beta": args.beta, **epochs}}})
    if "sft" in files:
        jobs["sft"] = create_job(model=tfew, training_file=files["sft"]["file_id"], suffix="feedback-sft",
                                 hyperparameters=epochs)
    for what, job in jobs.items():
        trained[what] = wait(job, f"{what} on top of {tfew}")
    log("held-out accuracy (examples/clinc150/test.jsonl)")
    table, runs = held_out(trained)
    result = {"cpu": cpu_name(), "torch_threads": threads, "base_model": BASE, "start_model": tfew,
              "feedback_queries": len(queries), "feedback_right": right, "from_logs": built["stats"],
              "dpo_beta": args.beta, "n_epochs": args.epochs or "auto", "held_out": table, "wall_s": round(time.time() - started, 1),
              "load_average_at_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for k, row in table.items():
        vs = row.get("vs_before")
        extra = f"  vs before {vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]" if vs else ""
        print(f"{k:<7} {row['accuracy']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]{extra}  {row['model']}")
    print(f"wrote {args.out}")
    from graftlm.clusters.hosting import shutdown_runtime

    shutdown_runtime()


if __name__ == "__main__":
    main()
