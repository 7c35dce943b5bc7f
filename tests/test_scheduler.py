"""Scheduler rules without training: cluster units bound concurrency, orphans are requeued, files gate the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from graftlm.clusters import clusters
from graftlm.jobs import scheduler as sched
from graftlm.store.db import session
from graftlm.store.models import File, FineTuningJob, JobEvent


@pytest.fixture
def fake_workers(monkeypatch):
    procs = []

    def spawn(job_id, world=1):
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(p)
        return p

    monkeypatch.setattr(sched, "spawn_worker", spawn)
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def add_job(job_id, cluster_id, status="queued", files=("file-t",), world_size=None):
    config = {"training_method": "tfew"} | ({"distributed": {"world_size": world_size}} if world_size else {})
    with session() as s:
        s.add(FineTuningJob(id=job_id, model="tiny", training_file=files[0], status=status,
                            config=config, dedicated_ai_cluster_id=cluster_id))


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


def test_a_job_holds_one_unit_per_rank(tiny_model, fake_workers, monkeypatch):
    two = clusters.create_cluster("FINE_TUNING", unit_count=2)["id"]
    add_job("ftjob-a2", two, world_size=2)
    add_job("ftjob-b1", two, world_size=1)
    sched.Scheduler(concurrency=10).tick()
    assert statuses() == {"ftjob-a2": "running", "ftjob-b1": "queued"}  # the 2-rank job holds both units
    cmd, env = sched.worker_command("ftjob-a2", 2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node" in cmd and cmd[-1] == "ftjob-a2"
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))  # cores / units threads a rank
    assert sched.worker_command("ftjob-b1", 1)[0][1:] == ["-m", "graftlm.jobs.worker", "ftjob-b1"]
    monkeypatch.setenv("GRAFT_RAY_ADDRESS", "ray://head:10001")  # ranks placed by Ray Train instead
    assert sched.worker_command("ftjob-a2", 2)[0][1:] == ["-m", "graftlm.jobs.ray_ranks", "ftjob-a2", "2"]


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


def test_a_queued_job_is_claimed_once(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=4)["id"]
    add_job("ftjob-claim", ft)
    with session() as s1:
        assert s1.get(FineTuningJob, "ftjob-claim").status == "queued"  # s1 read it as queued ...
        with session() as s2:
            assert sched.claim_job(s2, "ftjob-claim")  # ... but another claimer commits first
        assert not sched.claim_job(s1, "ftjob-claim")
    with session() as s:
        assert not sched.claim_job(s, "ftjob-claim")
    assert statuses() == {"ftjob-claim": "running"}


def test_two_schedulers_racing_start_a_job_once(tiny_model, fake_workers, monkeypatch):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=4)["id"]
    add_job("ftjob-race", ft)
    first, second = sched.Scheduler(concurrency=4), sched.Scheduler(concurrency=4)
    claim = sched.claim_job

    def other_scheduler_claims_first(s, job_id):
        monkeypatch.setattr(sched, "claim_job", claim)
        second.start_queued()  # runs between the first scheduler's read of the queue and its claim
        return claim(s, job_id)

    monkeypatch.setattr(sched, "claim_job", other_scheduler_claims_first)
    first.start_queued()
    assert len(fake_workers) == 1
    assert list(second.procs) == ["ftjob-race"] and not first.procs


def test_orphan_with_a_recent_heartbeat_is_left_running(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=1)["id"]
    add_job("ftjob-beating", ft, status="running")
    with session() as s:
        job = s.get(FineTuningJob, "ftjob-beating")
        job.worker_pid, job.heartbeat_at = 999_999_999, time.time()  # e.g. a worker on another host
        sched.recover_orphans(s, owned=set())
    assert statuses()["ftjob-beating"] == "running"
    with session() as s:
        s.get(FineTuningJob, "ftjob-beating").heartbeat_at = time.time() - sched.ORPHAN_AFTER_SECONDS - 1
        sched.recover_orphans(s, owned=set())
    assert statuses()["ftjob-beating"] == "queued"


def test_sigkilled_worker_is_reported_as_likely_out_of_memory(tiny_model, fake_workers):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=1)["id"]
    add_job("ftjob-oom", ft)
    scheduler = sched.Scheduler(concurrency=1)
    for _ in range(sched.MAX_RESTARTS + 1):
        scheduler.start_queued()
        proc = fake_workers[-1]
        proc.send_signal(signal.SIGKILL)  # what the Linux OOM killer sends
        proc.wait()
        scheduler.reap()
    with session() as s:
        job = s.get(FineTuningJob, "ftjob-oom")
        events = [e.message for e in s.query(JobEvent).filter_by(job_id=job.id)]
        assert job.status == "failed" and job.error["code"] == "worker_crashed"
        assert "killed" in job.error["message"] and "out of memory" in job.error["message"]
    assert sum("killed" in m and "likely out of memory" in m and "requeued" in m for m in events) == sched.MAX_RESTARTS
    assert "worker exited with code 3" == sched.exit_reason(3)
