"""Scheduler rules without training: cluster units bound concurrency, orphans are requeued, files gate the queue."""

from __future__ import annotations

import subprocess
import sys

import pytest

from graftlm.clusters import clusters
from graftlm.jobs import scheduler as sched
from graftlm.store.db import session
from graftlm.store.models import File, FineTuningJob


@pytest.fixture
def fake_workers(monkeypatch):
    procs = []

    def spawn(job_id):
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(p)
        return p

    monkeypatch.setattr(sched, "spawn_worker", spawn)
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def add_job(job_id, cluster_id, status="queued", files=("file-t",)):
    with session() as s:
        s.add(FineTuningJob(id=job_id, model="tiny", training_file=files[0], status=status,
                            config={"training_method": "tfew"}, dedicated_ai_cluster_id=cluster_id))


def statuses():
    with session() as s:
        return {j.id: j.status for j in s.query(FineTuningJob)}


def test_cluster_units_bound_running_jobs(tiny_model, fake_workers):
    one = clusters.create_cluster("FINE_TUNING", unit_count=1)["id"]
    two = clusters.create_cluster("FINE_TUNING", unit_count=2)["id"]
    for i in range(3):
        add_job(f"ftjob-a{i}", one)
        add_job(f"ftjob-b{i}", two)
    sched.Scheduler(concurrency=10).tick()
    st = statuses()
    assert sum(st[f"ftjob-a{i}"] == "running" for i in range(3)) == 1
    assert sum(st[f"ftjob-b{i}"] == "running" for i in range(3)) == 2
    assert len(fake_workers) == 3


def test_global_concurrency(tiny_model, fake_workers):
    big = clusters.create_cluster("FINE_TUNING", unit_count=8)["id"]
    for i in range(4):
        add_job(f"ftjob-c{i}", big)
    sched.Scheduler(concurrency=2).tick()
    assert list(statuses().values()).count("running") == 2


def test_orphaned_running_job_is_requeued_then_failed_after_restarts(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=1)["id"]
    add_job("ftjob-orphan", ft, status="running")
    for attempt in range(sched.MAX_RESTARTS + 1):
        with session() as s:
            job = s.get(FineTuningJob, "ftjob-orphan")
            job.status, job.worker_pid = "running", 999_999_999  # no such process
            sched.recover_orphans(s, owned=set())
    with session() as s:
        job = s.get(FineTuningJob, "ftjob-orphan")
        assert job.status == "failed" and job.error["code"] == "worker_crashed"


def test_jobs_wait_for_file_validation(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=1)["id"]
    with session() as s:
        s.add(File(id="file-ok", filename="a", purpose="fine-tune", bytes=1, sha256="x", status="uploaded"))
        s.add(File(id="file-bad", filename="b", purpose="fine-tune", bytes=1, sha256="y", status="error",
                   status_details="line 3: messages: missing"))
    add_job("ftjob-wait", ft, status="validating_files", files=("file-ok",))
    add_job("ftjob-bad", ft, status="validating_files", files=("file-bad",))
    with session() as s:
        sched.promote_validated(s)
    assert statuses() == {"ftjob-wait": "validating_files", "ftjob-bad": "failed"}
    with session() as s:
        s.get(File, "file-ok").status = "processed"
        sched.promote_validated(s)
    assert statuses()["ftjob-wait"] == "queued"
