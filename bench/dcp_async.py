"""Checkpoint stall: ``torch.distributed.checkpoint.save`` vs ``async_save`` on 2 gloo ranks (FSDP2, CPU).

    python bench/dcp_async.py                     # launches itself under torchrun, 2 ranks x 1 thread
    python bench/dcp_async.py --hidden 1024 --layers 8 --steps 24 --every 4

Each rank trains the same FSDP2-sharded MLP stack (``fully_shard`` per layer + the root, AdamW: weights and
two moments, the state graftlm's checkpoints hold) for ``--steps`` steps and checkpoints every ``--every``
steps the way ``graftlm.train.checkpoint.save_checkpoint`` does (``get_state_dict`` → DCP into a fresh
directory), once with ``dcp.save`` and once with ``dcp.async_save`` (a separate gloo group for the background
write, as the DCP docs advise; the previous save is awaited before the next one and at the end). Reported:
the training thread's stall per checkpoint (sync: the whole save; async: staging + planning + any wait for
the previous save), the run's wall time, and their async ÷ sync ratios, measured in the same run in both
orders (sync first, then async first) because this machine's load drifts. The CPU is named.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ranks_main(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    ckpt_group = dist.new_group(backend="gloo")  # async_save's background collectives stay off the training group
    root = Path(args.out)

    def run(mode: str) -> dict:
        torch.manual_seed(0)
        layers = [torch.nn.Sequential(torch.nn.Linear(args.hidden, args.hidden), torch.nn.GELU())
                  for _ in range(args.layers)]
        model = torch.nn.Sequential(*layers)
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(args.batch, args.hidden)
        stalls, pending = [], None
        dist.barrier()
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step % args.every == 0:
                t0 = time.perf_counter()
                if pending is not None:
                    pending.result()
                model_sd, optim_sd = get_state_dict(model, opt)
                where = root / mode / f"step-{step:06d}" / "dcp"
                if mode == "sync":
                    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(where))
                else:
                    pending = dcp.async_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(where),
                                             process_group=ckpt_group)
                stalls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if pending is not None:
            pending.result()
        stalls.append(time.perf_counter() - t0)  # the last save's wait (async) or nothing (sync)
        dist.barrier()
        wall = time.perf_counter() - started
        params = sum(p.numel() for p in model.parameters())  # global (DTensor) sizes
        return {"stall_s": sum(stalls), "checkpoints": args.steps // args.every, "wall_s": wall,
                "params": params}

    results = {}
    for order in (("sync", "async"), ("async", "sync")):
        for mode in order:
            shutil.rmtree(root / mode, ignore_errors=True) if rank == 0 else None
            dist.barrier()
            results.setdefault(mode, []).append(run(mode))
    dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--ranks-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.ranks_child:
        ranks_main(args)
        return
    from bench.workloads import cpu_name

    out = Path(tempfile.mkdtemp(prefix="dcp-async-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--ranks-child", "--out", str(out), *[f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "batch",
                                                                                        "steps", "every")]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-4000:])
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    params = results["sync"][0]["params"]
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); 2 gloo ranks x 1 thread, FSDP2 MLP {params / 1e6:.1f}M "
          f"params ({params * 12 / 1e6:.0f} MB of weights + AdamW state), checkpoint every {args.every} of "
          f"{args.steps} steps")
    for i, order in enumerate(("sync first", "async first")):
        s, a = results["sync"][i], results["async"][i]
        print(f"  {order}: stall per checkpoint sync {s['stall_s'] / s['checkpoints'] * 1e3:.0f} ms, async "
              f"{a['stall_s'] / a['checkpoints'] * 1e3:.0f} ms (async / sync {a['stall_s'] / s['stall_s']:.2f}x); "
              f"wall async / sync {a['wall_s'] / s['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
