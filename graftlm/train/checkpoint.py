"""Checkpoints that resume exactly: trainable weights, optimizer, RNG states and the training state.

Layout of ``out_dir/checkpoints/step-000040/``: ``trainable.safetensors`` (only the weights that
train, whole, written by rank 0), ``dcp/`` (a ``torch.distributed.checkpoint`` of the trainable weights
and the AdamW state keyed by parameter name, each rank writing its own shards), ``rng.pt`` (python,
numpy, torch, cuda), ``state.json`` (step, epoch, early-stopping state, metrics, resolved config) and
``run_info.json``. DCP reshards on load, so a checkpoint written by 2 FSDP2 ranks resumes on 1 process
or on DDP ranks and the other way round. (Checkpoints from before DCP hold ``optimizer.pt`` instead; they
resume in one process.) The learning-rate schedule is a pure function of the step and the data order a
pure function of (seed, epoch, step), so neither needs more state. Each checkpoint is written to a
temporary directory and renamed into place by rank 0 once every rank has written its shards, so a
kill -9 (of any rank) leaves either the whole checkpoint or none. By default the shards are written in the
background (``dcp.async_save``, a ``PendingCheckpoint`` the loop finishes one step later), which cut the
training thread's stall per checkpoint (bench/dcp_async.py); GRAFT_ASYNC_CHECKPOINT=0 writes them inline.
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


def _dcp_options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(ignore_frozen_params=True, strict=strict)  # set_*: the frozen base is not in it


ADAPTER_DIR = "adapter"  # a checkpoint's servable adapter (PEFT format), when the method has one


ASYNC_ENV = "GRAFT_ASYNC_CHECKPOINT"  # "0": every checkpoint written before training goes on (the old way)


def async_default() -> bool:
    """Whether checkpoints are written in the background (``dcp.async_save``): yes unless GRAFT_ASYNC_CHECKPOINT=0
    (bench/dcp_async.py measured the training thread's stall per checkpoint on 2 gloo ranks; see the README)."""
    return os.environ.get(ASYNC_ENV, "1") not in ("0", "false", "no")


_CKPT_GROUPS: dict = {}


def _ckpt_group():
    """A gloo group for async_save's background collectives, so they never interleave with the training
    thread's on the default group (the DCP docs' advice); created once per process group, by every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    key = id(dist.group.WORLD)
    if key not in _CKPT_GROUPS:
        _CKPT_GROUPS[key] = dist.new_group(backend="gloo")
    return _CKPT_GROUPS[key]


class PendingCheckpoint:
    """A checkpoint whose DCP shards are still being written by a background thread (each rank's own). Its
    directory is still the temporary one: ``finish()`` (every rank, at the same point of the run) waits for
    the shards, then rank 0 renames it into place, so a kill -9 before that leaves the previous checkpoint as
    the newest complete one (at most one interval lost, as with synchronous saves)."""

    def __init__(self, future, tmp: Path, path: Path, ranks):
        self.future, self.tmp, self.path, self.ranks = future, tmp, path, ranks

    def finish(self) -> Path:
        try:
            self.future.result()
            self.ranks.barrier()  # every rank's shards (and rank 0's .metadata) are on disk
            if self.ranks.main:
                _into_place(self.tmp, self.path)
        except BaseException:
            if self.ranks.main:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.ranks.barrier()
        return self.path


def _into_place(tmp: Path, path: Path) -> None:
    old = path.parent / f".old-{path.name}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(root: Path, model, optimizer, state: dict, run_info: dict, export=None, ranks=None,
                    asynchronous: bool = False):
    """Every rank calls it (DCP is a collective); rank 0 writes the metadata and renames it into place.
    ``export(dir, weights)``, if given, also saves the servable adapter into ``dir`` (``<checkpoint>/adapter``)
    from the gathered trainable ``weights``, so the checkpoint can be registered as a model. With
    ``asynchronous`` the shards are staged (copied) now and written in the background: it returns a
    PendingCheckpoint whose ``finish()`` puts it in place; else it returns the checkpoint's path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from graftlm.train.distributed import Ranks, full_state

    ranks = ranks or Ranks()
    path = Path(root) / f"{PREFIX}{state['step']:06d}"
    tmp = path.parent / f".tmp-{path.name}"
    if ranks.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ranks.barrier()
    try:
        weights = full_state(model, {n for n, p in model.named_parameters() if p.requires_grad})
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_dcp_options())
        future = None
        if asynchronous:  # staged into CPU copies before it returns: the next optimizer step may change the weights
            future = dcp.async_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"),
                                    process_group=_ckpt_group())
        else:
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        if ranks.main:
            if export is not None:
                export(tmp / ADAPTER_DIR, weights)
            save_file(weights, str(tmp / "trainable.safetensors"))
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            (tmp / "run_info.json").write_text(json.dumps(run_info, indent=1))
            if future is None:
                _into_place(tmp, path)
    except BaseException:
        if ranks.main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if future is not None:
        return PendingCheckpoint(future, tmp, path, ranks)
    ranks.barrier()
    return path


def load_checkpoint(path: Path) -> dict:
    """The whole trainable weights, RNG states and TrainState (and a pre-DCP checkpoint's optimizer)."""
    path = Path(path)
    legacy = path / "optimizer.pt"
    return {"weights": load_file(str(path / "trainable.safetensors")),
            "optimizer": torch.load(legacy, weights_only=False) if legacy.exists() else None,
            "rng": torch.load(path / "rng.pt", weights_only=False),
            "state": json.loads((path / "state.json").read_text())}


def load_sharded(path: Path, model, optimizer=None) -> None:
    """Trainable weights (and the optimizer's state) from a checkpoint's DCP into this run's sharding: the
    world size and strategy that wrote it do not matter. Every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                           set_model_state_dict, set_state_dict)

    where = str(Path(path) / "dcp")
    if optimizer is None:
        model_sd = get_model_state_dict(model, options=_dcp_options())
        dcp.load({"model": model_sd}, checkpoint_id=where)
        set_model_state_dict(model, model_sd, options=_dcp_options(strict=False))
        return
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_dcp_options())
    loaded = {"model": model_sd, "optim": optim_sd}
    dcp.load(loaded, checkpoint_id=where)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"],
                   options=_dcp_options(strict=False))


def has_sharded(path: Path) -> bool:
    return (Path(path) / "dcp" / ".metadata").exists()


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
