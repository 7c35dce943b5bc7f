"""Fine-tuning jobs end to end: the official SDK drives a job; bad hyperparameters are 400s;
cancel; a killed worker is resumed from its checkpoint with the same loss curve."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import time

import openai
import pytest

WORDS = ["hello", "weather", "flight", "balance", "transfer", "hotel"]


def toy_dataset(n: int = 16) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"say {WORDS[i % len(WORDS)]}"},
                          {"role": "assistant", "content": WORDS[i % len(WORDS)]}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client, data: bytes, name="train.jsonl"):
    f = client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")
    deadline = time.time() + 30
    while client.files.retrieve(f.id).status == "uploaded" and time.time() < deadline:
        time.sleep(0.1)
    return f.id


def wait_job(client, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job stuck in {job.status}")


def hyper(**kw):
    return {"type": "supervised", "supervised": {"hyperparameters": kw}}


def test_sdk_drives_a_tfew_job_to_a_custom_model(client, tiny_model):
    fid = upload(client, toy_dataset())
    job = client.fine_tuning.jobs.create(model="tiny", training_file=fid, suffix="toy", seed=7,
                                         method=hyper(training_method="tfew", n_epochs=2, batch_size=4,
                                                      log_model_metrics_interval_in_steps=1))
    assert job.status in ("queued", "validating_files") and job.id.startswith("ftjob-")
    shown = job.to_dict()["hyperparameters"]
    assert (shown["n_epochs"], shown["batch_size"], shown["learning_rate"]) == (2, 4, "auto")
    assert not [k for k in shown if k.startswith("lora_")]  # only what T-Few reads is shown
    job = wait_job(client, job.id)
    assert job.status == "succeeded", job.error
    # auto's pick is shown once training chose it, and its reason is in the events
    picked = job.to_dict()["hyperparameters"]["learning_rate"]
    assert isinstance(picked, float) and picked == job.to_dict()["run_info"]["auto"]["picks"]["learning_rate"]["value"]
    assert any(e.message.startswith("auto hyperparameters: learning_rate")
               for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data)
    assert job.fine_tuned_model == f"ft:tiny:toy:{job.id}"
    assert job.trained_tokens > 0 and job.result_files
    assert client.files.retrieve(job.result_files[0]).status == "processed"  # a result, not left `uploaded`
    # 16 examples, 80:20 split → 13 train (ceil(13/4) = 4 steps per epoch) × 2 epochs
    events = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    steps = sorted(e.data["step"] for e in events)
    assert steps == list(range(1, 9))
    assert any("valid_loss" in e.data for e in events)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and all(c.metrics.valid_loss is not None for c in ckpts)
    models = {m.id: m for m in client.models.list().data}
    assert models[job.fine_tuned_model].parent == "tiny"
    # the adapter is plain PEFT: it loads unchanged
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from graftlm.models.catalog import get_model

    custom = get_model(job.fine_tuned_model)
    assert custom["lineage"]["method"] == "tfew" and custom["lineage"]["datasets"]["training_file"]
    base = AutoModelForCausalLM.from_pretrained(get_model("tiny")["path"])
    PeftModel.from_pretrained(base, custom["path"])


@pytest.mark.parametrize("params,param", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": 1.5}, "learning_rate"),
    ({"training_batch_size": 0}, "training_batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"n_epochs": 0}, "n_epochs"),
    ({"total_training_epochs": 0}, "total_training_epochs"),
    ({"early_stopping_patience": -1}, "early_stopping_patience"),
    ({"early_stopping_threshold": -0.1}, "early_stopping_threshold"),
    ({"log_model_metrics_interval_in_steps": -1}, "log_model_metrics_interval_in_steps"),
    ({"training_method": "magic"}, "training_method"),
    ({"lora_r": 0}, "lora_r"),
    ({"training_method": "tfew", "lora_r": 8}, "lora_r"),
    ({"learning_rte": 1e-3}, "learning_rte"),
    ({"training_method": "qlora"}, "training_method"),
    ({"lora_target_modules": ["q_proj", "attn"]}, "lora_target_modules"),
])
def test_invalid_hyperparameters_are_400_with_param(client, tiny_model, params, param):
    fid = upload(client, toy_dataset())
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=fid, method=hyper(**params))
    assert e.value.body["param"] == param


def test_invalid_files_and_models_are_refused(client, tiny_model):
    bad = upload(client, b'{"messages": []}\n')
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file=bad)
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="tiny", training_file="file-missing")
    good = upload(client, toy_dataset())
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=good)
    assert e.value.body["param"] == "model"


def test_no_epoch_cap_and_any_threshold(client, tiny_model):
    fid = upload(client, toy_dataset())
    job = client.fine_tuning.jobs.create(model="tiny", training_file=fid,
                                         method=hyper(total_training_epochs=500, early_stopping_threshold=7.5))
    assert job.hyperparameters.n_epochs == 500
    client.fine_tuning.jobs.cancel(job.id)


def test_cancel_a_running_job(client, tiny_model):
    fid = upload(client, toy_dataset(64))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=fid,
                                         method=hyper(training_method="lora", n_epochs=200, batch_size=2))
    wait_job(client, job.id, statuses=("running",))
    deadline = time.time() + 60  # wait for the first metrics so the worker is inside the loop
    while not [e for e in client.fine_tuning.jobs.list_events(job.id).data if e.type == "metrics"]:
        assert time.time() < deadline
        time.sleep(0.2)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelling"  # the state it moves to, not "running"
    assert client.fine_tuning.jobs.retrieve(job.id).status in ("cancelling", "cancelled")
    job = wait_job(client, job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None


def test_killed_worker_resumes_with_the_same_loss_curve(client, tiny_model):
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob

    fid = upload(client, toy_dataset(24))
    spec = hyper(training_method="lora", n_epochs=3, batch_size=4, learning_rate=0.01,
                 log_model_metrics_interval_in_steps=1, checkpoint_interval_steps=1)
    straight = wait_job(client, client.fine_tuning.jobs.create(model="tiny", training_file=fid, seed=3,
                                                               method=spec).id)
    assert straight.status == "succeeded"

    job = client.fine_tuning.jobs.create(model="tiny", training_file=fid, seed=3, method=spec)
    deadline = time.time() + 120
    while True:  # kill -9 the worker once it has a checkpoint, mid-run
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        with session() as s:
            pid = s.get(FineTuningJob, job.id).worker_pid
        if ckpts and pid:
            os.kill(pid, signal.SIGKILL)
            break
        assert time.time() < deadline
        time.sleep(0.05)
    resumed = wait_job(client, job.id)
    assert resumed.status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any("requeued" in m for m in messages)

    def curve(job_id):
        events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
        return {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics"}

    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
             if e.type == "metrics"]
    assert len(steps) == len(set(steps))  # steps replayed after the resume are not logged twice
    a, b = curve(straight.id), curve(job.id)
    assert set(a) == set(b) == set(range(1, 16))  # 24 examples → 19 train → 5 steps × 3 epochs
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step


def test_mlflow_logs_params_metrics_and_the_adapter(client, tiny_model, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("GRAFT_MLFLOW_TRACKING_URI", uri)
    fid = upload(client, toy_dataset(10))
    job = wait_job(client, client.fine_tuning.jobs.create(
        model="tiny", training_file=fid, method=hyper(training_method="tfew", training_duration="3ba")).id)
    assert job.status == "succeeded", job.error
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["graftlm"], output_format="list")
    assert run.data.params["training_method"] == "tfew"
    history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id, "model")]
    assert "model/adapter_model.safetensors" in artifacts


def test_pause_and_resume_a_running_job(client, tiny_model):
    fid = upload(client, toy_dataset(24))
    spec = hyper(training_method="lora", n_epochs=4, batch_size=2, log_model_metrics_interval_in_steps=1)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=fid, method=spec)
    deadline = time.time() + 60
    while not [e for e in client.fine_tuning.jobs.list_events(job.id).data if e.type == "metrics"]:
        assert time.time() < deadline
        time.sleep(0.1)
    assert client.fine_tuning.jobs.pause(job.id).status == "pausing"
    paused = wait_job(client, job.id, statuses=("paused",))
    assert paused.fine_tuned_model is None
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_job(client, job.id)
    assert done.status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any(m.startswith("resumed from step") for m in messages)
    steps = {e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
             if e.type == "metrics"}
    assert steps == set(range(1, 41))  # 24 → 19 train examples → 10 steps × 4 epochs, none lost or skipped


@pytest.mark.parametrize("exc,code", [
    (MemoryError(), "out_of_memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    ("torch_oom", "out_of_memory"),
    (OSError(errno.ENOSPC, "quota"), "disk_full"),
    (RuntimeError("PytorchStreamWriter failed writing file: No space left on device"), "disk_full"),
    (FileNotFoundError(errno.ENOENT, "No such file", "/models/x/config.json"), "base_model_missing"),
    (ValueError("boom"), "internal_error"),
])
def test_classify_error_maps_exceptions_to_codes(exc, code):
    import torch

    from graftlm.jobs.worker import classify_error

    if exc == "torch_oom":  # a message without the words: the type alone must be recognised
        exc = torch.OutOfMemoryError("CUDA error: allocation failed")
    error = classify_error(exc)
    assert error["code"] == code
    if code == "out_of_memory":
        assert error["param"] == "training_batch_size" and "ran out of memory" in error["message"]


def test_classify_error_keeps_a_graft_errors_code_and_param():
    from graftlm.errors import GraftError
    from graftlm.jobs.worker import classify_error

    error = classify_error(GraftError("no examples", param="training_file", code="invalid_file"))
    assert error == {"code": "invalid_file", "message": "no examples", "param": "training_file"}


def test_resumed_worker_does_not_log_replayed_steps_twice(tiny_model):
    from graftlm.jobs.worker import make_event_sink, metrics_csv
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob, JobEvent

    with session() as s:
        s.add(FineTuningJob(id="ftjob-replay", model="tiny", training_file="file-t", status="running",
                            config={"training_method": "lora"}))

    class Tracker:
        def __init__(self):
            self.steps = []

        def log_metrics(self, data):
            self.steps.append(data["step"])

    def metrics(step):
        return {"type": "metrics", "data": {"step": step, "train_loss": 1.0 / step}}

    first, second = Tracker(), Tracker()
    sink = make_event_sink("ftjob-replay", first)
    for step in range(1, 6):  # killed after logging step 5; the last checkpoint is step 3
        sink(metrics(step))
    resumed = make_event_sink("ftjob-replay", second)
    for step in range(4, 8):  # the new worker replays steps 4 and 5
        resumed(metrics(step))
    with session() as s:
        logged = [e.data["step"] for e in s.query(JobEvent).filter_by(job_id="ftjob-replay", type="metrics")
                  .order_by(JobEvent.seq)]
    assert logged == [1, 2, 3, 4, 5, 6, 7]
    assert (first.steps, second.steps) == ([1, 2, 3, 4, 5], [6, 7])
    assert metrics_csv("ftjob-replay").decode().count("\n") == 1 + 7  # header and one row per step


def test_estimated_finish_follows_time_per_step_while_running(tiny_model):
    from graftlm.jobs import service
    from graftlm.jobs.worker import make_event_sink
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob

    with session() as s:
        s.add(FineTuningJob(id="ftjob-eta", model="tiny", training_file="file-t", status="running",
                            config={"training_method": "lora"}))
    clock = iter([1000.0, 1010.0, 1020.0])
    sink = make_event_sink("ftjob-eta", clock=lambda: next(clock))
    assert service.get_job("ftjob-eta")["estimated_finish"] is None  # nothing measured yet
    sink({"type": "message", "message": "training started", "data": {"total_steps": 20}})
    sink({"type": "metrics", "data": {"step": 5, "train_loss": 1.0}})  # 10 s for 5 steps: 2 s/step, 15 left
    assert service.get_job("ftjob-eta")["estimated_finish"] == 1010 + 2 * 15
    # a worker resumed at step 10 measures from there: 10 s for 2 steps, 8 left
    resumed_clock = iter([2000.0, 2010.0])
    resumed = make_event_sink("ftjob-eta", clock=lambda: next(resumed_clock))
    resumed({"type": "message", "message": "resumed from step 10", "data": {"step": 10, "total_steps": 20}})
    resumed({"type": "metrics", "data": {"step": 12, "train_loss": 1.0}})
    assert service.get_job("ftjob-eta")["estimated_finish"] == 2010 + 5 * 8
    with session() as s:
        s.get(FineTuningJob, "ftjob-eta").status = "paused"
    assert service.get_job("ftjob-eta")["estimated_finish"] is None  # only a running job has one
