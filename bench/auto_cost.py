"""What an ``auto`` run costs next to the OCI-default run it replaces, on SmolLM2-135M, measured in one process.

    nice -n 10 python bench/auto_cost.py [--set travel10] [--examples 16] [--rounds 1] [--threads 1]

A full run of each on this shared CPU takes the better part of an hour, so this times the same number of
training examples under each config's batch size (``--examples`` per round, rounds interleaved so all see
the same machine load), through ``graftlm.train.loop.train`` with no validation, and projects each full
run as cost per example x examples seen (epochs x training examples; evaluation is once per epoch in
all of them and not counted). Cost is measured twice: wall seconds, and CPU seconds of this process
(``time.process_time``). On a shared, overloaded CPU the wall figure mostly measures the other jobs (one
earlier run read a 4-example step at 1.64x an 8-example step's per-example cost, this file's next run
0.45x); with one torch thread the CPU seconds do not depend on the load, so the ratios use them.

Configs: ``auto`` (the current rule's picks for this set), ``oci`` (batch 8, 2e-4, 3 epochs) and
``auto-b4`` (the previous rule: batch 4, 4 epochs at 100 examples), so the file shows why batch 8 is
auto's floor. Prints each projected run ÷ OCI's and the ratio of examples seen.
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
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds independent of load)")
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

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="auto-cost-"))
    train_path = quality.build_set(args.set, work)[0]
    rows = [json.loads(line) for line in train_path.read_text().splitlines() if line.strip()]
    base = {"path": args.base} if args.base else pull(quality.BASE)
    n = len(rows)
    picked = auto.resolve(parse_config({}), {"examples": n}, 576)[0]  # SmolLM2-135M: hidden 576
    configs = {"auto": {"batch_size": picked.training_batch_size, "learning_rate": picked.learning_rate,
                        "epochs": picked.total_training_epochs},
               "oci": {"batch_size": 8, "learning_rate": 2e-4, "epochs": 3},
               "auto-b4": {"batch_size": auto.steps_batch(n, picked.total_training_epochs), "learning_rate": 2e-3,
                           "epochs": picked.total_training_epochs}}
    timing = {name: {"wall": 0.0, "cpu": 0.0, "examples": 0, "rounds": []} for name in configs}
    for r in range(args.rounds):
        for name, c in configs.items():
            steps = max(1, args.examples // c["batch_size"])
            stamps = []

            def stamp(e, stamps=stamps):
                if e["type"] == "metrics":
                    stamps.append((time.perf_counter(), time.process_time()))
            train({"defaults": "oci" if name == "oci" else "auto", "batch_size": c["batch_size"],
                   "learning_rate": c["learning_rate"], "max_steps": steps + 1, "seed": r},
                  base["path"], rows, None, work / f"{name}-{r}", on_event=stamp)
            wall, cpu = (stamps[-1][i] - stamps[0][i] for i in (0, 1))  # from the end of step 1 (warm) to the last
            timing[name]["wall"] += wall
            timing[name]["cpu"] += cpu
            timing[name]["examples"] += steps * c["batch_size"]
            timing[name]["rounds"].append(f"{steps} steps of {c['batch_size']}: {wall:.1f} s wall, {cpu:.1f} CPU-s")
            print(f"[auto_cost] round {r} {name}: {timing[name]['rounds'][-1]} (load {os.getloadavg()[0]:.0f})",
                  flush=True)
    out = {"set": args.set, "n_train": n, "configs": configs, "torch_threads": torch.get_num_threads(),
           "cpu": quality.cpu_name(), "date": time.strftime("%Y-%m-%d"), "load_average_at_end": os.getloadavg()[0]}
    for name, c in configs.items():
        t = timing[name]
        out[name] = {"cpu_s_per_example": round(t["cpu"] / t["examples"], 3),
                     "wall_s_per_example": round(t["wall"] / t["examples"], 3),
                     "examples_seen": c["epochs"] * n, "steps": c["epochs"] * -(-n // c["batch_size"]),
                     "projected_cpu_s": round(t["cpu"] / t["examples"] * c["epochs"] * n), "rounds": t["rounds"]}
    for name in ("auto", "auto-b4"):
        a, o = out[name], out["oci"]
        out[f"{name} / oci"] = {"examples_seen": round(a["examples_seen"] / o["examples_seen"], 3),
                                "steps": round(a["steps"] / o["steps"], 3),
                                "cpu_s_per_example": round(a["cpu_s_per_example"] / o["cpu_s_per_example"], 3),
                                "wall_s_per_example": round(a["wall_s_per_example"] / o["wall_s_per_example"], 3),
                                "projected_cpu": round(a["projected_cpu_s"] / o["projected_cpu_s"], 3)}
        print(f"[auto_cost] {args.set} {name} {configs[name]} / OCI: {out[f'{name} / oci']}", flush=True)
    path = Path(args.out)
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[args.set] = out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
