"""Run ``train()`` from a JSON spec in every rank: ``torchrun --nproc-per-node 2 -m graftlm.train.launch SPEC``.

The spec: ``{"config": {...}, "base_model_path", "train_examples", "valid_examples", "out_dir",
"events": "events.jsonl", "resume_from": null, "stop_after_step": null}``. Rank 0 appends the loop's events
to ``events`` (one JSON object a line, with the wall-clock ``time`` it was written) and writes ``result.json`` into ``out_dir``. ``stop_after_step`` pauses
the run after that step (a checkpoint every rank writes), for resume tests; ``hang: {"rank": r, "step": s}``
makes rank r stop responding in step s (a fault drill for ``distributed.timeout_seconds``);
``kill_in_async_save: s`` makes every rank SIGKILL itself as soon as step s's background checkpoint write has
started (a drill for crash-safety of ``dcp.async_save``). A rank that fails
prints ``rank R of W: error`` and exits 1. Jobs launch the same loop through
``graftlm.jobs.worker``; this entry point is for tests, benchmarks and hand-made runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path


def run_spec(spec: dict) -> dict:
    import torch

    from graftlm.train.loop import train

    events_path = Path(spec["events"]) if spec.get("events") else None

    def on_event(event: dict) -> None:
        if events_path is not None:
            with events_path.open("a") as f:
                f.write(json.dumps({**event, "time": time.time()}, default=str) + "\n")

    stop_after = spec.get("stop_after_step")
    steps = [0]

    def should_stop():
        steps[0] += 1
        return "pause" if stop_after is not None and steps[0] >= stop_after else None

    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    if spec.get("hang") and int(os.environ.get("RANK", "0")) == spec["hang"]["rank"]:
        import graftlm.train.loop as loop
        step_once = loop.train_step

        def hanging_step(run, state):
            if state.step + 1 == spec["hang"]["step"]:
                time.sleep(3600)
            return step_once(run, state)
        loop.train_step = hanging_step
    if spec.get("kill_in_async_save"):
        import signal

        import graftlm.train.checkpoint as ckpt
        save_once = ckpt.save_checkpoint

        def save_then_die(root, model, optimizer, state, *args, **kwargs):
            saved = save_once(root, model, optimizer, state, *args, **kwargs)
            if state["step"] == spec["kill_in_async_save"] and isinstance(saved, ckpt.PendingCheckpoint):
                os.kill(os.getpid(), signal.SIGKILL)
            return saved
        ckpt.save_checkpoint = save_then_die
    result = train(spec["config"], spec["base_model_path"], spec["train_examples"], spec.get("valid_examples"),
                   spec["out_dir"], on_event=on_event, should_stop=should_stop, resume_from=spec.get("resume_from"))
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        (Path(spec["out_dir"]) / "result.json").write_text(json.dumps(out, default=str, indent=1))
    if dist.is_initialized() and os.environ.get("GRAFT_RANK_LAUNCHER") != "ray":  # Ray Train tears its own down
        dist.destroy_process_group()
    return out


def main() -> None:
    try:
        run_spec(json.loads(Path(sys.argv[1]).read_text()))
    except Exception as exc:
        import traceback
        traceback.print_exc()
        print(f"graftlm: rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
