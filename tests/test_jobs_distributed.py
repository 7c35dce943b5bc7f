"""Clusters own ranks: a job on a FINE_TUNING cluster of 2 units trains on 2 torchrun ranks, its events say so,
and kill -9 of rank 1 mid-job restarts the group from the last checkpoint; bad distributed settings are 400s.

Cost: the 2-rank job runs twice (before and after the kill), ~1 min on 2 CPU cores."""

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
