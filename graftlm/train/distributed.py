"""Ranks: the one training loop at any world size (1 process, torchrun, Ray Train's TorchTrainer).

A launcher starts the same ``train()`` in every rank; ``setup`` reads ``torch.distributed``'s environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``: torchrun and Ray Train both set
them, Ray Train also initialises the process group itself) and joins the group: gloo on CPU, NCCL on CUDA.

- **Data**: every rank holds the whole (small, tokenized) dataset and computes the same global step order,
  so rank r takes examples ``r, r + W, ...`` of each optimizer step and knows the step's *global* number of
  target tokens without a collective. Its loss is ``sum of its cross-entropy x W / global targets``: DDP and
  FSDP2 average gradients over W ranks, which gives exactly the gradient of the mean over the global
  batch, i.e. 2 ranks with half the examples each step the same as 1 rank with all of them.
- **Lockstep**: FSDP2 gathers weights in every forward and DDP reduces gradients in the last backward, so
  every rank runs the same number of micro-batches: a rank with fewer runs padding micro-batches whose loss is
  multiplied by 0 (their tokens are not counted).
- **Strategies** (``distributed`` hyperparameters; DeepSpeed's names in brackets): ``ddp``
  (DistributedDataParallel, ZeRO-0); ``fsdp`` (FSDP2 ``fully_shard`` on every decoder layer, then the root):
  ``sharding: full`` reshards weights after forward (ZeRO-3), ``grad_op`` keeps them gathered until backward
  (ZeRO-2); ``cpu_offload`` (``CPUOffloadPolicy``, ZeRO-Offload); ``mixed_precision``
  (``MixedPrecisionPolicy``: bf16 weights and compute, fp32 gradient reduction).
- **Metrics** are sums all-reduced over ranks; only rank 0 emits events and writes checkpoint metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from graftlm.errors import GraftError


@dataclass
class Ranks:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp (auto resolved)
    launcher: str = "none"  # none | torchrun | ray

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        return {"world_size": self.world_size, "strategy": self.strategy, "launcher": self.launcher}

    # collectives (no-ops at world size 1)
    def sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, value):
        """Rank 0's value on every rank (pause/cancel decisions come from rank 0's view of the DB)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's value, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(cfg, device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the launcher's process group (if any) and pick this rank's device; resolve the strategy."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_world_size()
    strategy = cfg.strategy_for(world)
    if world == 1:
        return Ranks(strategy=strategy), device
    launcher = "ray" if os.environ.get("GRAFT_RANK_LAUNCHER") == "ray" else "torchrun"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GraftError(f"rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}",
                             param="distributed.world_size")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=cfg.distributed.timeout_seconds))
    return Ranks(world, dist.get_rank(), local_rank, strategy, launcher), device


def shard(items: list, ranks: Ranks) -> list:
    """This rank's share of a list: items r, r + W, ..."""
    return items[ranks.rank::ranks.world_size]


def wrap(module: torch.nn.Module, decoder_layers, ranks: Ranks, cfg, device) -> torch.nn.Module:
    """DDP or FSDP2 around ``module`` (the loss module holding the model); the module itself at 1 rank."""
    if ranks.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False)
    if ranks.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        d = cfg.distributed
        mesh = init_device_mesh(device.type, (ranks.world_size,))
        kwargs = {"mesh": mesh, "reshard_after_forward": d.sharding == "full",
                  "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if d.cpu_offload
                  else OffloadPolicy()}
        if d.mixed_precision:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in decoder_layers:
            fully_shard(layer, **kwargs)
        fully_shard(module, **kwargs)
        return module
    return module


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module DDP wraps (an evaluation forward need not synchronise anything)."""
    return module.module if hasattr(module, "no_sync") and hasattr(module, "module") else module


def local_numel(param) -> int:
    """Elements of a parameter this rank holds (its shard under FSDP2)."""
    local = param.to_local() if hasattr(param, "to_local") else param
    return local.numel()


def full_state(model, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU copies of the named parameters (every one when ``names`` is None); a collective
    under FSDP2, so every rank calls it, and every rank gets the tensors."""
    out = {}
    for n, p in model.named_parameters():
        if names is not None and n not in names:
            continue
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out[n] = t.to("cpu", copy=True).contiguous()
    return out


def full_model_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole state dict, gathered (for vanilla's one safetensors model). Tied weights (embeddings and LM
    head) stay one tensor, so ``save_pretrained`` stores them once, as it does unsharded."""
    out, seen = {}, {}
    for n, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            full = t.detach()
            if hasattr(full, "full_tensor"):
                full = full.full_tensor()
            seen[id(t)] = full.to("cpu", copy=True).contiguous()
        out[n] = seen[id(t)]
    return out


def rank_error(ranks: Ranks, exc: BaseException) -> str:
    return f"rank {ranks.rank} of {ranks.world_size}: {type(exc).__name__}: {exc}"
