"""Jobs without a server: one scheduler thread in this process (started on first use) and a blocking wait.

The SDK's embedded mode and the customization ladder use it; ``graft serve`` runs its own scheduler.
"""

from __future__ import annotations

import threading
import time

from graftlm.jobs import service

FINAL = ("succeeded", "failed", "cancelled", "paused")

_scheduler = None
_lock = threading.Lock()


def ensure_scheduler() -> None:
    global _scheduler
    with _lock:
        if _scheduler is None:
            from graftlm.jobs.scheduler import Scheduler

            _scheduler = Scheduler()
            _scheduler.start()


def scheduler_running() -> bool:
    """Whether this process runs a scheduler (so a new job starts without `graft serve` / `graft worker`)."""
    return _scheduler is not None


def stop_scheduler() -> None:
    """Stop the scheduler this process started (running jobs go on in their own processes)."""
    global _scheduler
    with _lock:
        if _scheduler is not None:
            _scheduler.stop()
            _scheduler = None


def wait_for_job(job_id: str, *, timeout: float = 3600, poll: float = 0.5) -> dict:
    """The job once it succeeds, fails, is cancelled or paused; TimeoutError after ``timeout`` seconds."""
    ensure_scheduler()
    deadline = time.time() + timeout
    while True:
        job = service.get_job(job_id)
        if job["status"] in FINAL:
            return job
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} is still {job['status']}")
        time.sleep(poll)


def events_oldest_first(job_id: str, limit: int = 1000) -> list[dict]:
    return service.list_events(job_id, limit=limit)["data"][::-1]
