"""Checkpoints that resume exactly: trainable weights, optimizer, RNG states and the training state.

Layout of ``out_dir/checkpoints/step-000040/``: ``trainable.safetensors`` (only the weights that
train), ``optimizer.pt``, ``rng.pt`` (python, numpy, torch, cuda), ``state.json`` (step, epoch,
early-stopping state, metrics, resolved config) and ``run_info.json``. The learning-rate schedule
is a pure function of the step and the data order a pure function of (seed, epoch, step), so
neither needs more state. Each checkpoint is written to a temporary directory and renamed into
place, so a kill -9 leaves either the whole checkpoint or none.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"checkpoint lacks trainable weights {missing[:3]}...: was it written by another method?")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


ADAPTER_DIR = "adapter"  # a checkpoint's servable adapter (PEFT format), when the method has one


def save_checkpoint(root: Path, model, optimizer, state: dict, run_info: dict, export=None) -> Path:
    """Write one checkpoint atomically; ``export(dir)``, if given, also saves the servable adapter into
    ``dir`` (``<checkpoint>/adapter``) so the checkpoint can be registered as a model."""
    path = Path(root) / f"{PREFIX}{state['step']:06d}"
    with atomic_dir(path) as tmp:
        if export is not None:
            export(tmp / ADAPTER_DIR)
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        (tmp / "run_info.json").write_text(json.dumps(run_info, indent=1))
    return path


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    return {"weights": load_file(str(path / "trainable.safetensors")),
            "optimizer": torch.load(path / "optimizer.pt", weights_only=False),
            "rng": torch.load(path / "rng.pt", weights_only=False),
            "state": json.loads((path / "state.json").read_text())}


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run directory (``out_dir/checkpoints``), or None."""
    found = list_checkpoints(Path(out_dir) / "checkpoints")
    return found[-1] if found else None


def prune(root: Path, keep_steps: set[int]) -> None:
    """Delete checkpoints except the given steps (the latest and the best)."""
    for p in list_checkpoints(root):
        if int(p.name[len(PREFIX):]) not in keep_steps:
            shutil.rmtree(p, ignore_errors=True)
