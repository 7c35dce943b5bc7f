"""A job's ranks on a Ray cluster: ``python -m graftlm.jobs.ray_ranks JOB_ID WORLD`` (the scheduler runs it when
GRAFT_RAY_ADDRESS is set). Each Ray Train worker runs the job's worker (``graftlm.jobs.worker.run_job``) as
one rank: rank 0 writes the job's state, heartbeat and events; cancel, pause and recovery are the worker's.
If a worker dies, the trainer fails, this process exits non-zero and the scheduler requeues the job, which
resumes from its last checkpoint (as with torchrun)."""

from __future__ import annotations

import os
import sys


def rank_main(cfg: dict) -> None:
    from graftlm.config import reset_settings
    from graftlm.jobs.worker import run_job

    reset_settings()  # GRAFT_HOME comes with the config, not the Ray worker's own environment
    status = run_job(cfg["job_id"])
    if status == "restart":
        raise RuntimeError(f"rank {os.environ.get('RANK')} of job {cfg['job_id']} stopped; see the job's events")


def main() -> None:
    from graftlm.config import get_settings
    from graftlm.train.ray_ranks import run_on_ray

    job_id, world = sys.argv[1], int(sys.argv[2])
    settings = get_settings()
    env = {"GRAFT_HOME": str(settings.home), "TOKENIZERS_PARALLELISM": "false"}
    env |= {k: os.environ[k] for k in ("GRAFT_DATABASE_URL", "GRAFT_DTYPE", "GRAFT_DEVICE", "HF_HUB_OFFLINE")
            if k in os.environ}
    cpus = float(os.environ.get("GRAFT_RAY_CPUS_PER_RANK", "1"))
    use_gpu = os.environ.get("GRAFT_RAY_USE_GPU", "auto")
    if use_gpu == "auto":
        import ray
        ray.init(address=os.environ.get("GRAFT_RAY_ADDRESS"))
        use_gpu = ray.cluster_resources().get("GPU", 0) >= world
    try:
        run_on_ray(rank_main, world, address=os.environ.get("GRAFT_RAY_ADDRESS"),
                   storage=settings.jobs_dir / "ray", name=job_id, config={"job_id": job_id, "env": env},
                   cpus_per_rank=cpus, use_gpu=use_gpu in (True, "1", "true"))
    except Exception as exc:  # the scheduler sees the exit code and requeues
        print(f"ray train of {job_id} failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
