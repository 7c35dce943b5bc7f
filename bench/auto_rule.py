"""How many epochs and what batch size ``auto`` needs: a sweep on a tiny model, cost counted in examples seen.

    nice -n 10 python bench/auto_rule.py [--sizes 24,48,100,200] [--seeds 0,1] [--out bench/results/auto_rule.json]

A synthetic intent task (the label is decided by one keyword among filler words; 8 labels, 1-3 tokens each)
on the tiny learnable Llama of ``graftlm.testing`` (2 layers, hidden 64), LoRA, learning rates 1e-3, 2e-3 and 4e-3. For each training-set size it trains OCI's defaults (3 epochs,
batch 8, lr 2e-4), the previous auto rule (about 100 steps: up to 10 epochs) and a grid of epochs x batch,
and reports the kept checkpoint's ``valid_exact_match`` on 64 held-out queries, examples seen (epochs x
examples: what a run costs, since a step's compute is proportional to its examples) and seconds. The
ratio printed is each rule's examples seen / OCI's.

A tiny model is a proxy: it says how the number of optimizer steps and passes trade at a fixed cost,
not what a 135M model reaches; bench/quality.py checks the chosen rule on SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRAFT_DTYPE", "float32")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"balance": "100", "flight": "paris", "weather": "fine", "hello": "lazy dog", "transfer": "money",
          "hotel": "london", "account": "0 1", "book": "fox"}
FILLER = "the quick brown fox jumps over please tell me what is my and a in today how are you".split()


def chat(query: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": label}]}


def intent_set(n: int, seed: int, labels: int = 8) -> list[dict]:
    rng = random.Random(seed)
    keys = list(LABELS)[:labels]
    out = []
    for i in range(n):
        keyword = keys[i % len(keys)]
        words = rng.sample(FILLER, 4)
        words.insert(rng.randrange(5), keyword)
        out.append(chat(" ".join(words), LABELS[keyword]))
    rng.shuffle(out)
    return out


def numbers(text: str, kind) -> list:
    """A comma-separated list ("" for none)."""
    return [kind(x) for x in text.split(",") if x.strip()]


def old_rule(n: int) -> tuple[int, int]:
    """The rule before this sweep: batch 4/8/16, epochs for about 100 steps, 3 to 10."""
    batch = 4 if n < 100 else 8 if n < 1000 else 16
    return min(10, max(3, math.ceil(100 * batch / n))), batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="24,48,100,200")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--labels", type=int, default=8, help="distinct labels (at most 8)")
    ap.add_argument("--grid-lr", default="1e-3,2e-3,4e-3")
    ap.add_argument("--grid-epochs", default="3,4")
    ap.add_argument("--grid-batch", default="1,2,4,8")
    ap.add_argument("--auto-lr", default="", help="also train auto's epochs and batch at these learning rates")
    ap.add_argument("--out", default=str(ROOT / "bench/results/auto_rule.json"))
    args = ap.parse_args()
    import torch

    from graftlm.testing import build_learnable_llama
    from graftlm.train import auto
    from graftlm.train.config import parse_config
    from graftlm.train.loop import train

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="auto-rule-"))
    base = build_learnable_llama(work / "base")
    valid = intent_set(64, seed=999, labels=args.labels)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        configs = {"oci": {"defaults": "oci"}}
        e, b = old_rule(n)  # with its learning rate: 2e-3 x sqrt(batch / 8)
        configs[f"old auto ({e} ep, batch {b})"] = {"n_epochs": e, "batch_size": b,
                                                     "learning_rate": float(f"{2e-3 * math.sqrt(b / 8):.3g}")}
        for e in numbers(args.grid_epochs, int):
            for b in numbers(args.grid_batch, int):
                for lr in numbers(args.grid_lr, float):
                    configs[f"{e} ep, batch {b}, lr {lr:g}"] = {"n_epochs": e, "batch_size": b, "learning_rate": lr}
        picked = auto.resolve(parse_config({}), {"examples": n}, 64)[0]
        configs[f"new auto ({picked.total_training_epochs} ep, batch {picked.training_batch_size}, "
                f"lr {picked.learning_rate:g})"] = {}
        for lr in numbers(args.auto_lr, float):  # auto's epochs and batch at other learning rates
            configs[f"auto epochs and batch, lr {lr:g}"] = {"learning_rate": lr}
        for seed in (int(s) for s in args.seeds.split(",")):
            data = intent_set(n, seed=seed, labels=args.labels)
            for name, hp in configs.items():
                out = work / f"run-{n}-{seed}-{len(rows)}"
                started = time.perf_counter()
                result = train({**hp, "seed": seed}, base, data, valid, out)
                cfg = result.run_info["config"]
                row = {"n": n, "seed": seed, "rule": name, "epochs": cfg["total_training_epochs"],
                       "batch": cfg["training_batch_size"], "lr": cfg["learning_rate"], "steps": result.steps,
                       "examples_seen": result.steps and min(result.steps * cfg["training_batch_size"],
                                                             n * cfg["total_training_epochs"]),
                       "valid_exact_match": result.metrics.get("valid_exact_match"),
                       "seconds": round(time.perf_counter() - started, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for r in rows:
        s = summary.setdefault(f"{r['n']}: {r['rule']}", {"em": [], "seen": r["examples_seen"], "steps": r["steps"]})
        s["em"].append(r["valid_exact_match"])
    for key, s in summary.items():
        n = int(key.split(":")[0])
        oci_seen = 3 * n
        s["mean_exact_match"] = round(sum(s["em"]) / len(s["em"]), 3)
        s["cost_vs_oci"] = round(s["seen"] / oci_seen, 2)
        print(f"[auto_rule] n={key}: exact match {s['mean_exact_match']:.3f} (seeds {s['em']}), "
              f"{s['steps']} steps, examples seen {s['cost_vs_oci']:.2f}x OCI's")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"labels": args.labels, "rows": rows, "summary": summary, "model": "tiny learnable Llama (hidden 64)",
                                "torch_threads": 1, "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()
