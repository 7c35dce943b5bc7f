"""The job scheduler: starts queued jobs as worker subprocesses and recovers from crashes.

Runs inside `graft serve` (a background thread) or standalone as `graft worker`. All state lives
in the DB, so a scheduler that dies (kill -9 of the server) loses nothing: on its next start it
finds jobs marked running whose worker is gone and requeues them; the worker resumes from the
newest checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from sqlalchemy import func, select, update

from graftlm.clusters import metering
from graftlm.config import get_settings
from graftlm.jobs.service import add_event
from graftlm.store.db import session
from graftlm.store.models import Cluster, File, FineTuningJob, now

log = logging.getLogger("graftlm.jobs")
MAX_RESTARTS = 3
ORPHAN_AFTER_SECONDS = 30.0  # a running job whose worker beat within this window is not an orphan


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def world_size(config: dict | None) -> int:
    """The ranks a job runs (and units of its cluster it holds): resolved when it was created; 1 before."""
    return int(((config or {}).get("distributed") or {}).get("world_size") or 1)


def worker_command(job_id: str, world: int) -> tuple[list[str], dict]:
    """One rank: the worker itself. More: torchrun starts ``world`` ranks of the same worker on this machine
    (gloo on CPU with cores / world threads each, NCCL on CUDA), or with GRAFT_RAY_ADDRESS set, Ray Train
    places them on the Ray cluster. A dead rank ends the group (``--max-restarts 0``); the scheduler then
    requeues the job, which resumes from its last checkpoint."""
    env = {"GRAFT_HOME": str(get_settings().home)}
    worker = ["-m", "graftlm.jobs.worker", job_id]
    if world == 1:
        return [sys.executable, *worker], env
    if os.environ.get("GRAFT_RAY_ADDRESS"):
        return [sys.executable, "-m", "graftlm.jobs.ray_ranks", job_id, str(world)], env
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
            "--max-restarts", "0", *worker], env


def spawn_worker(job_id: str, world: int = 1) -> subprocess.Popen:
    log_path = get_settings().jobs_dir / f"{job_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    cmd, env = worker_command(job_id, world)
    return subprocess.Popen(cmd, stdout=out, stderr=out, env={**os.environ, **env}, start_new_session=True)


class Scheduler:
    """Owns the worker processes it started; everything else is read from the DB each tick."""

    def __init__(self, concurrency: int | None = None, interval: float = 0.5):
        self.concurrency = concurrency or get_settings().job_concurrency
        self.interval = interval
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="graft-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep scheduling; the DB is the source of truth
                log.exception("scheduler tick failed")
            self._stop.wait(self.interval)

    def tick(self) -> None:
        self.reap()
        with session() as s:
            promote_validated(s)
            recover_orphans(s, owned=set(self.procs))
        self.start_queued()

    def reap(self) -> None:
        for job_id, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            del self.procs[job_id]
            # a rank ended by its launcher (torchrun's SIGTERM after a peer failed) skips its own cleanup:
            # the job's metering span closes here whatever the outcome (a restarted worker opens a new one)
            metering.end_job(job_id)
            with session() as s:
                job = s.get(FineTuningJob, job_id)
                if job is not None and job.status == "running":  # died without recording an outcome
                    requeue_or_fail(s, job, exit_reason(proc.returncode))

    def start_queued(self) -> None:
        with session() as s:
            queued = list(s.scalars(select(FineTuningJob).where(FineTuningJob.status == "queued")
                                    .order_by(FineTuningJob.created_at, FineTuningJob.id)))
            running: dict[str, int] = {}  # units held by running jobs, per cluster (a job holds its ranks)
            for cluster, config in s.execute(select(FineTuningJob.dedicated_ai_cluster_id, FineTuningJob.config)
                                             .where(FineTuningJob.status == "running")):
                running[cluster] = running.get(cluster, 0) + world_size(config)
            units = {c.id: c.unit_count for c in s.scalars(select(Cluster))}
            total = s.scalar(select(func.count()).select_from(FineTuningJob)
                             .where(FineTuningJob.status == "running"))
            to_start = []
            for job in queued:
                cluster, world = job.dedicated_ai_cluster_id, world_size(job.config)
                if total >= self.concurrency or running.get(cluster, 0) + world > units.get(cluster, 1):
                    continue  # a cluster's units bound the ranks of its jobs that run at once
                if not claim_job(s, job.id):
                    continue  # another scheduler started it first
                running[cluster] = running.get(cluster, 0) + world
                total += 1
                to_start.append((job.id, world))
        for job_id, world in to_start:
            proc = spawn_worker(job_id, world)
            self.procs[job_id] = proc
            with session() as s:
                s.get(FineTuningJob, job_id).worker_pid = proc.pid


def promote_validated(s) -> None:
    for job in s.scalars(select(FineTuningJob).where(FineTuningJob.status == "validating_files")):
        files = [s.get(File, fid) for fid in (job.training_file, job.validation_file) if fid]
        bad = [f for f in files if f is None or f.status == "error"]
        if bad:
            f = bad[0]
            param = "training_file" if f is not None and f.id == job.training_file else "validation_file"
            job.status, job.finished_at = "failed", now()
            job.error = {"code": "invalid_file", "param": param,
                         "message": f"{param} failed validation: {f.status_details if f else 'file deleted'}"}
            add_event(s, job.id, job.error["message"], level="error")
        elif all(f.status == "processed" for f in files):
            job.status = "queued"
            add_event(s, job.id, "files validated: job queued")


def claim_job(s, job_id: str) -> bool:
    """Move one queued job to running in a single conditional UPDATE: of concurrent claimers, one wins."""
    result = s.execute(update(FineTuningJob)
                       .where(FineTuningJob.id == job_id, FineTuningJob.status == "queued")
                       .values(status="running", heartbeat_at=time.time()))
    return result.rowcount == 1


def exit_reason(returncode: int) -> str:
    """Why a worker process ended without recording an outcome, in words for the job's events."""
    if returncode == -signal.SIGKILL:
        return ("worker was killed (SIGKILL, exit code -9), likely out of memory (the Linux OOM killer); "
                "lower training_batch_size or max_tokens_per_micro_batch if this repeats")
    return f"worker exited with code {returncode}"


def heartbeat_is_recent(job: FineTuningJob) -> bool:
    return job.heartbeat_at is not None and time.time() - job.heartbeat_at < ORPHAN_AFTER_SECONDS


def recover_orphans(s, owned: set[str]) -> None:
    """Jobs marked running whose worker process is gone (server or worker killed) go back to the queue.

    A job whose worker beat recently is left alone: its worker may run on another host (where
    ``pid_alive`` cannot see it) or have just started; if it is really gone, a later tick requeues it.
    """
    for job in s.scalars(select(FineTuningJob).where(FineTuningJob.status == "running")):
        if job.id in owned or pid_alive(job.worker_pid) or heartbeat_is_recent(job):
            continue
        requeue_or_fail(s, job, "worker process is gone")


def requeue_or_fail(s, job: FineTuningJob, why: str) -> None:
    info = dict(job.run_info or {})
    info["restarts"] = info.get("restarts", 0) + 1
    job.run_info = info
    if info["restarts"] > MAX_RESTARTS:
        job.status, job.finished_at = "failed", now()
        job.error = {"code": "worker_crashed", "param": None,
                     "message": f"{why}; gave up after {MAX_RESTARTS} restarts (see GRAFT_HOME/jobs/{job.id}.log)"}
        add_event(s, job.id, job.error["message"], level="error")
    else:
        job.status, job.worker_pid = "queued", None
        add_event(s, job.id, f"{why}: requeued to resume from the last checkpoint", level="warn")
