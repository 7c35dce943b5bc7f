"""Ray Train placement: the same per-rank function on ``world`` Ray workers (``TorchTrainer``).

``TorchTrainer`` starts one worker per rank where the Ray cluster has room (``ScalingConfig(num_workers=U,
use_gpu=...)``: a unit is one GPU, or ``cpus_per_rank`` CPUs), sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR`` and initialises the process group (gloo on CPU, NCCL on GPUs), then calls the function. The
training loop finds the group initialised and joins it (``graftlm.train.distributed.setup``), so Ray Train
adds placement, never a second loop. Checkpoints stay graftlm's own (DCP under the job's directory, which
every worker must see: one machine, or shared storage such as NFS under GRAFT_HOME).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def run_on_ray(per_rank: Callable[[dict], None], world: int, *, address: str | None, storage: Path,
               name: str, config: dict, cpus_per_rank: float = 1, use_gpu: bool = False,
               timeout_s: int = 600) -> None:
    """Run ``per_rank(config)`` on ``world`` Ray Train workers and wait; raises if a worker failed."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)

    def loop(cfg: dict) -> None:
        os.environ["GRAFT_RANK_LAUNCHER"] = "ray"
        for k, v in cfg.get("env", {}).items():
            os.environ[k] = v
        per_rank(cfg)

    trainer = TorchTrainer(
        loop, train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=timeout_s),
        scaling_config=ScalingConfig(num_workers=world, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_rank}),
        run_config=RunConfig(name=name, storage_path=str(storage)))
    trainer.fit()
