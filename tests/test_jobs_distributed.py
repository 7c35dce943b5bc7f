"""Clusters own ranks: a job on a FINE_TUNING cluster of 2 units trains on 2 torchrun ranks, its events say so,
and kill -9 of rank 1 mid-job restarts the group from the last checkpoint; pause checkpoints every rank and
resume continues, cancel ends every rank; OOM on one rank fails the job naming it; bad settings are 400s.

Cost: 5 two-rank torchrun groups (each ~15-25 s to start: two interpreters importing torch), ~2-3 min on
2 CPU cores."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import pytest

from tests.test_jobs import hyper, toy_dataset, upload, wait_job


def create(client, fid, **kw):
    cluster = kw.pop("cluster", None)
    extra = {"extra_body": {"dedicated_ai_cluster_id": cluster}} if cluster else {}
    return client.fine_tuning.jobs.create(model="tiny", training_file=fid, method=hyper(**kw), **extra)


def refused(client, fid, **kw) -> str:
    with pytest.raises(openai.BadRequestError) as e:
        create(client, fid, **kw)
    return e.value.body["param"]


def test_distributed_settings_that_cannot_run_are_400_naming_the_field(client, tiny_model):
    from graftlm.clusters.clusters import create_cluster

    fid = upload(client, toy_dataset())
    two = create_cluster("FINE_TUNING", unit_count=2)["id"]
    assert refused(client, fid, distributed={"strategy": "fsdp"}) == "distributed.strategy"  # 1 process
    assert refused(client, fid, distributed={"strategy": "ddp", "cpu_offload": True}) == "distributed.cpu_offload"
    # lora at 2 ranks is ddp (auto): cpu_offload needs fsdp
    assert refused(client, fid, cluster=two, distributed={"cpu_offload": True}) == "distributed.cpu_offload"
    assert refused(client, fid, cluster=two, distributed={"world_size": 3}) == "distributed.world_size"
    assert refused(client, fid, distributed={"world_size": 2}) == "distributed.world_size"  # no cluster: 1
    assert refused(client, fid, cluster=two, label_set_losses=True) == "label_set_losses"  # one process only
    assert refused(client, fid, distributed={"sharding": "fast"}) == "distributed.sharding"
    assert refused(client, fid, distributed={"stratgy": "ddp"}) == "distributed.stratgy"
    big = create_cluster("FINE_TUNING", unit_count=(os.cpu_count() or 1) + 1)["id"]
    assert refused(client, fid, cluster=big) == "dedicated_ai_cluster_id"  # more ranks than this machine has cores
    # fits: stored with the resolved world size; the units it holds bound the cluster's other jobs
    job = create(client, fid, cluster=two, distributed={"world_size": 1}, n_epochs=1)
    assert job.to_dict()["hyperparameters"]["distributed"]["world_size"] == 1
    client.fine_tuning.jobs.cancel(job.id)


def alive(pid: int) -> bool:
    from graftlm.jobs.scheduler import pid_alive
    return pid_alive(pid)


def ranks_gone(job_id: str, timeout: float = 60) -> bool:
    """Every process of the job's latest rank group (each rank records its pid) has exited."""
    from graftlm.jobs.worker import rank_pids

    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = rank_pids(job_id)
        if len(pids) == 2 and not any(alive(p) for p in pids.values()) and rank_pid(job_id, 0) is None \
                and rank_pid(job_id, 1) is None:
            return True
        time.sleep(0.2)
    return False


def wait_event(client, job_id, start: str, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data:
            if e.message.startswith(start):
                return e
        time.sleep(0.2)
    raise AssertionError(f"no event {start!r}")


def metric_steps(client, job_id) -> list[int]:
    return sorted(e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data
                  if e.type == "metrics")


def test_pause_resume_and_cancel_of_a_two_rank_job(client, tiny_model):
    """Pause: every rank writes its shards of one checkpoint at the step it stops, then every rank exits; resume
    starts a new group at that step (each step logged once); cancel ends both ranks at their next step."""
    from graftlm.clusters.clusters import create_cluster

    cluster = create_cluster("FINE_TUNING", unit_count=2)["id"]
    fid = upload(client, toy_dataset(24))
    job = create(client, fid, cluster=cluster, training_method="lora", n_epochs=20, batch_size=4,
                 learning_rate=0.01, log_model_metrics_interval_in_steps=1, checkpoint_interval_steps=1000)
    total = 5 * 20  # 19 training examples (the 80:20 split), batch 4: 5 steps an epoch
    deadline = time.time() + 180
    while not metric_steps(client, job.id) or metric_steps(client, job.id)[-1] < 2:
        assert time.time() < deadline, "no training step"
        time.sleep(0.1)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_job(client, job.id, statuses=("paused", "failed", "succeeded"), timeout=120)
    assert paused.status == "paused", paused.error
    at = wait_event(client, job.id, "training paused at step").data["step"]
    assert 2 <= at < total
    assert ranks_gone(job.id), "a rank outlived the pause"
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [at]  # the pause's own checkpoint (interval 1000: no other)
    ckpt_dir = next((p for p in Path(os.environ["GRAFT_HOME"], "jobs", job.id, "checkpoints").iterdir()
                     if p.name.startswith("step-")))
    assert len(list((ckpt_dir / "dcp").glob("*.distcp"))) == 2  # both ranks wrote their shards

    client.fine_tuning.jobs.resume(job.id)
    resumed = wait_event(client, job.id, "resumed from step")
    assert resumed.data["step"] == at
    deadline = time.time() + 180
    while metric_steps(client, job.id)[-1] < at + 2:
        assert time.time() < deadline, "no step after resume"
        time.sleep(0.1)
    client.fine_tuning.jobs.cancel(job.id)
    cancelled_at = time.time()
    done = wait_job(client, job.id, timeout=120)
    assert done.status == "cancelled", done.error
    assert ranks_gone(job.id), "a rank outlived the cancel"
    stop_s = time.time() - cancelled_at
    steps = metric_steps(client, job.id)
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < total  # each step once, stopped early
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    ranks = [e for e in events if e.message.startswith("distributed: 2 ranks (torchrun)")]
    assert len(ranks) == 2  # the group before the pause and the resumed one
    print(f"cancel -> every rank gone in {stop_s:.1f} s")


def test_out_of_memory_on_one_rank_fails_the_job_naming_the_rank_and_the_knobs(client, tiny_model, monkeypatch):
    from sqlalchemy import select

    from graftlm.clusters.clusters import create_cluster
    from graftlm.store.db import session
    from graftlm.store.models import UsageRecord

    monkeypatch.setenv("GRAFT_FAULT_OOM", "1:2")  # rank 1 raises torch.OutOfMemoryError as step 2 starts
    cluster = create_cluster("FINE_TUNING", unit_count=2)["id"]
    fid = upload(client, toy_dataset(24))
    job = create(client, fid, cluster=cluster, training_method="lora", n_epochs=3, batch_size=4,
                 log_model_metrics_interval_in_steps=1)
    done = wait_job(client, job.id, timeout=240)
    assert done.status == "failed"
    error = done.error
    assert error.code == "out_of_memory" and error.param == "training_batch_size"
    assert error.message.startswith("rank 1 of 2 ran out of memory")
    for knob in ("distributed.cpu_offload", "sharding full", "training_batch_size"):
        assert knob in error.message, error.message
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    failed = [e for e in events if e.level == "error"]
    assert len(failed) == 1 and "rank 1 of 2 ran out of memory" in failed[0].message
    assert not any("requeued" in e.message or "stopped:" in e.message for e in events)  # no retry of an OOM
    assert ranks_gone(job.id), "a rank outlived the failure"
    with session() as s:  # metered until the group ended, not for ever (rank 0 was ended by torchrun)
        spans = list(s.scalars(select(UsageRecord).where(UsageRecord.job_id == job.id)))
    assert spans and all(r.ended_at is not None for r in spans)


def rank_pid(job_id: str, rank: int) -> int | None:
    """The process of one rank of a job's worker group (torchrun's children carry RANK in their environment)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if job_id.encode() in cmd and b"graftlm.jobs.worker" in cmd and b"torch.distributed.run" not in cmd \
                and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_a_two_unit_cluster_trains_on_two_ranks_and_survives_kill_9_of_a_rank(client, tiny_model):
    from graftlm.clusters.clusters import create_cluster

    cluster = create_cluster("FINE_TUNING", unit_count=2)["id"]
    fid = upload(client, toy_dataset(24))
    job = create(client, fid, cluster=cluster, training_method="lora", n_epochs=3, batch_size=4,
                 learning_rate=0.01, log_model_metrics_interval_in_steps=1, checkpoint_interval_steps=1)
    assert job.to_dict()["hyperparameters"]["distributed"]["world_size"] == 2  # the cluster's units
    deadline = time.time() + 180
    while True:  # kill -9 rank 1 once the job has a checkpoint, mid-run
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        pid = rank_pid(job.id, 1) if ckpts else None
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed_after = max(c.step_number for c in ckpts)
            break
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.05)
    done = wait_job(client, job.id, timeout=300)
    assert done.status == "succeeded", done.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    messages = [e.message for e in events]
    assert any("requeued to resume from the last checkpoint" in m for m in messages), messages
    ranks = [e for e in events if e.message.startswith("distributed: 2 ranks (torchrun), strategy ddp")]
    assert len(ranks) == 2  # the first group and the restarted one
    assert all(len(e.data["rank_peak_memory_bytes"]) == 2 for e in ranks)
    resumed = [e.data["step"] for e in events if e.message.startswith("resumed from step")]
    assert resumed and resumed[0] >= killed_after - 1  # lost at most one checkpoint interval
    steps = sorted(e.data["step"] for e in events if e.type == "metrics")
    assert steps == list(range(1, 16))  # 19 train examples, batch 4: 5 steps x 3 epochs, each logged once
    assert done.fine_tuned_model


def wait_steps_past(client, job_id, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not metric_steps(client, job_id) or metric_steps(client, job_id)[-1] < step:
        assert time.time() < deadline, f"no step past {step}"
        time.sleep(0.2)


@pytest.mark.slow  # ~12-20 min on 2 loaded CPU cores: a local Ray and 4 Ray Train groups of 2 workers (1-4 min each)
@pytest.mark.timeout(2400)
def test_ray_places_a_jobs_ranks_and_kill_9_pause_and_cancel_work_as_with_torchrun(client, tiny_model, monkeypatch):
    """GRAFT_RAY_ADDRESS set: the scheduler places a 2-unit job's ranks as Ray Train TorchTrainer workers
    (ScalingConfig(num_workers=2), one Ray CPU a rank). Rank 0 beats the job's heartbeat; kill -9 of the worker
    holding rank 1 fails the trainer, the scheduler requeues and the new group resumes from the last checkpoint;
    pause checkpoints and every worker exits; resume continues at that step; cancel ends both workers."""
    ray = pytest.importorskip("ray")
    from graftlm.clusters.clusters import create_cluster
    from graftlm.jobs.worker import rank_pids
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        monkeypatch.setenv("GRAFT_RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        monkeypatch.setenv("GRAFT_RAY_USE_GPU", "0")
        cluster = create_cluster("FINE_TUNING", unit_count=2)["id"]
        fid = upload(client, toy_dataset(24))

        # kill -9 of rank 1 mid-job: requeued, resumed from its checkpoint, succeeds, each step logged once
        job = create(client, fid, cluster=cluster, training_method="lora", n_epochs=6, batch_size=4,
                     learning_rate=0.01, log_model_metrics_interval_in_steps=1, checkpoint_interval_steps=1)
        deadline = time.time() + 900  # a Ray Train group takes minutes to start on a loaded 2-core machine
        while True:
            ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
            pid = rank_pids(job.id).get(1) if ckpts else None
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed_after = max(c.step_number for c in ckpts)
                break
            status = client.fine_tuning.jobs.retrieve(job.id).status
            assert status in ("queued", "running", "validating_files"), (status, "ended before the kill")
            assert time.time() < deadline, "no checkpoint"
            time.sleep(0.05)
        done = wait_job(client, job.id, timeout=600)
        assert done.status == "succeeded", done.error
        events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
        messages = [e.message for e in events]
        assert any("requeued to resume from the last checkpoint" in m for m in messages), messages
        groups = [e for e in events if e.message.startswith("distributed: 2 ranks (ray), strategy ddp")]
        # 2 groups (before and after the kill), more if Ray's memory monitor also ended one on a crowded machine
        assert len(groups) >= 2 and all(len(e.data["rank_peak_memory_bytes"]) == 2 for e in groups)
        resumed = [e.data["step"] for e in events if e.message.startswith("resumed from step")]
        assert resumed and resumed[0] >= killed_after - 1  # lost at most one checkpoint interval
        assert sorted(e.data["step"] for e in events if e.type == "metrics") == list(range(1, 31))
        with session() as s:
            assert s.get(FineTuningJob, job.id).heartbeat_at > done.created_at  # rank 0 beat through Ray

        # pause -> every worker exits with a checkpoint; resume continues there; cancel ends both workers
        job = create(client, fid, cluster=cluster, training_method="lora", n_epochs=20, batch_size=4,
                     learning_rate=0.01, log_model_metrics_interval_in_steps=1, checkpoint_interval_steps=1000)
        wait_steps_past(client, job.id, 2)
        client.fine_tuning.jobs.pause(job.id)
        paused = wait_job(client, job.id, statuses=("paused", "failed", "succeeded"), timeout=300)
        assert paused.status == "paused", paused.error
        at = wait_event(client, job.id, "training paused at step").data["step"]
        assert ranks_gone(job.id, timeout=120), "a Ray worker outlived the pause"
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [at]
        client.fine_tuning.jobs.resume(job.id)
        assert wait_event(client, job.id, "resumed from step", timeout=300).data["step"] == at
        wait_steps_past(client, job.id, at + 2)
        client.fine_tuning.jobs.cancel(job.id)
        done = wait_job(client, job.id, timeout=300)
        assert done.status == "cancelled", done.error
        assert ranks_gone(job.id, timeout=120), "a Ray worker outlived the cancel"
        steps = metric_steps(client, job.id)
        assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 100
    finally:
        ray.shutdown()
