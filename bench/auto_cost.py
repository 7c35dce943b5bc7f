"""What an ``auto`` run costs next to the OCI-default run it replaces, on SmolLM2-135M, measured in one process.

    nice -n 10 python bench/auto_cost.py [--set travel10] [--examples 16] [--rounds 2]

A full run of each on this shared CPU takes the better part of an hour, so this times the same number of
training examples under each config's batch size (``--examples`` per round, rounds interleaved so both see
the same machine load), through ``graftlm.train.loop.train`` with no validation, and projects each full
run as seconds per example x examples seen (epochs x training examples; evaluation is once per epoch in
both and not counted). Prints the projected ratio auto / OCI and the ratio of examples seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="travel10", choices=["travel10", "banking8", "hotel-json"])
    ap.add_argument("--examples", type=int, default=16, help="training examples timed per config and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--base", help="a model directory (default: pull SmolLM2-135M-Instruct into GRAFT_HOME)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/auto_cost.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    import quality
    import torch

    from graftlm.models.catalog import pull
    from graftlm.train import auto
    from graftlm.train.config import parse_config
    from graftlm.train.loop import train

    work = Path(tempfile.mkdtemp(prefix="auto-cost-"))
    train_path = quality.build_set(args.set, work)[0]
    rows = [json.loads(line) for line in train_path.read_text().splitlines() if line.strip()]
    base = {"path": args.base} if args.base else pull(quality.BASE)
    n = len(rows)
    picked = auto.resolve(parse_config({}), {"examples": n}, 576)[0]  # SmolLM2-135M: hidden 576
    configs = {"auto": {"batch_size": picked.training_batch_size, "learning_rate": picked.learning_rate,
                        "epochs": picked.total_training_epochs},
               "oci": {"batch_size": 8, "learning_rate": 2e-4, "epochs": 3}}
    timing = {name: {"seconds": 0.0, "examples": 0} for name in configs}
    for r in range(args.rounds):
        for name, c in configs.items():
            steps = max(1, args.examples // c["batch_size"])
            stamps = []
            train({"defaults": "oci" if name == "oci" else "auto", "batch_size": c["batch_size"],
                   "learning_rate": c["learning_rate"], "max_steps": steps + 1, "seed": r},
                  base["path"], rows, None, work / f"{name}-{r}",
                  on_event=lambda e: stamps.append(time.perf_counter()) if e["type"] == "metrics" else None)
            timing[name]["seconds"] += stamps[-1] - stamps[0]  # from the end of step 1 (warm) to the last
            timing[name]["examples"] += steps * c["batch_size"]
            print(f"[auto_cost] round {r} {name}: {steps} steps of {c['batch_size']} in "
                  f"{stamps[-1] - stamps[0]:.1f}s", flush=True)
    out = {"set": args.set, "n_train": n, "configs": configs, "torch_threads": torch.get_num_threads(),
           "cpu": quality.cpu_name(), "date": time.strftime("%Y-%m-%d")}
    for name, c in configs.items():
        per = timing[name]["seconds"] / timing[name]["examples"]
        out[name] = {"seconds_per_example": round(per, 3), "examples_seen": c["epochs"] * n,
                     "projected_training_s": round(per * c["epochs"] * n)}
    out["examples_seen_ratio"] = round(out["auto"]["examples_seen"] / out["oci"]["examples_seen"], 3)
    out["seconds_per_example_ratio"] = round(out["auto"]["seconds_per_example"] / out["oci"]["seconds_per_example"], 3)
    out["projected_cost_ratio"] = round(out["auto"]["projected_training_s"] / out["oci"]["projected_training_s"], 3)
    print(f"[auto_cost] {args.set}: auto {configs['auto']} vs OCI {configs['oci']}: seconds per example "
          f"{out['seconds_per_example_ratio']:.2f}x, examples seen {out['examples_seen_ratio']:.2f}x, "
          f"projected run {out['projected_cost_ratio']:.2f}x", flush=True)
    path = Path(args.out)
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[args.set] = out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
