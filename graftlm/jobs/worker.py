"""One fine-tuning job in its own process: `python -m graftlm.jobs.worker JOB_ID`.

Reads the job from the DB, trains (resuming from the newest checkpoint if one exists), streams
events, metrics and checkpoints into the DB, obeys cancel/pause, and registers the custom model.
A crash or kill of this process never touches the server; the scheduler requeues the job.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from graftlm.clusters import metering
from graftlm.config import get_settings
from graftlm.errors import GraftError
from graftlm.files.service import create_file, file_path, mark_processed
from graftlm.jobs.service import add_event, checkpoint_model_id, custom_model_id
from graftlm.jobs.tracking import tracker_for
from graftlm.models.catalog import get_model
from graftlm.store.db import session
from graftlm.store.models import FineTuningJob, JobCheckpoint, Model, new_id, now
from graftlm.train.methods import get_method

HEARTBEAT_SECONDS = 5.0


def job_dir(job_id: str) -> Path:
    return get_settings().jobs_dir / job_id


def load_datasets(job: FineTuningJob, task_type: str) -> tuple[list[dict], list[dict], dict]:
    """Training and validation examples; 80:20 split from the seed when no validation file."""
    from graftlm.data.split import dataset_hash, load_examples, split_examples

    train_path = file_path(job.training_file)
    fmt, examples = load_examples(train_path)
    hashes = {"training_file": dataset_hash(train_path)}
    if task_type == "CONTINUED_PRETRAIN" and fmt != "text":
        raise GraftError(f"continued pretraining needs raw text ({{\"text\": ...}} lines); {job.training_file} "
                         f"is {fmt}", param="training_file", code="invalid_file")
    if job.validation_file:
        valid_path = file_path(job.validation_file)
        _, valid = load_examples(valid_path)
        hashes["validation_file"] = dataset_hash(valid_path)
        return examples, valid, hashes
    train, valid = split_examples(examples, seed=job.seed)
    return train, valid, hashes


def _update(job_id: str, **fields) -> None:
    with session() as s:
        job = s.get(FineTuningJob, job_id)
        for k, v in fields.items():
            setattr(job, k, v)


def last_metrics_step(job_id: str) -> int:
    """The highest step whose metrics this job has already logged (0 if none)."""
    from sqlalchemy import select

    from graftlm.store.models import JobEvent

    with session() as s:
        steps = s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics"))
        return max((d.get("step", 0) for d in steps if d), default=0)


def estimate_finish(progress: dict, step: int, at: float) -> int | None:
    """When training should end: the time per step since training (re)started × the steps left."""
    if progress.get("total_steps") is None or step <= progress["start_step"]:
        return None
    per_step = (at - progress["started"]) / (step - progress["start_step"])
    return round(at + per_step * (progress["total_steps"] - step))


def make_event_sink(job_id: str, tracker=None, clock=time.time):
    """Writes training events into the DB. A resumed worker replays the steps after its checkpoint;
    metrics of steps a previous worker already logged are not logged again. Each metrics event
    refreshes the job's ``estimated_finish``."""
    last_beat = [0.0]
    progress: dict = {}
    logged_upto = [last_metrics_step(job_id)]

    def on_event(event: dict) -> None:
        data = event.get("data") or {}
        if event["type"] == "message" and "total_steps" in data:  # training started (or resumed at data["step"])
            progress.update(total_steps=data["total_steps"], start_step=data.get("step", 0), started=clock())
        if event["type"] == "metrics":
            if data["step"] <= logged_upto[0]:
                return  # a replayed step (resume after a crash): its metrics are already in the log
            logged_upto[0] = data["step"]
            if tracker is not None:
                tracker.log_metrics(data)
        with session() as s:
            if event["type"] == "checkpoint":
                metrics = {k: v for k, v in (data.get("metrics") or {}).items() if k != "step"}
                s.add(JobCheckpoint(id=new_id("ftckpt"), job_id=job_id, step_number=data["step"],
                                    metrics=metrics, path=data["path"]))
                register_checkpoint_model(s, s.get(FineTuningJob, job_id), data["step"], Path(data["path"]), metrics)
            elif event["type"] == "metrics":
                parts = [f"{k}={v:.4f}" for k, v in data.items() if k != "step" and isinstance(v, float)]
                add_event(s, job_id, f"step {data['step']}: " + ", ".join(parts), type="metrics", data=data)
                finish = estimate_finish(progress, data["step"], clock())
                if finish is not None:
                    job = s.get(FineTuningJob, job_id)
                    job.run_info = {**(job.run_info or {}), "estimated_finish": finish}
            else:
                add_event(s, job_id, event["message"], level=event.get("level", "info"), data=data)
                if "auto_hyperparameters" in data:  # the job shows auto's picks from now on
                    job = s.get(FineTuningJob, job_id)
                    job.run_info = {**(job.run_info or {}), "auto": data["auto_hyperparameters"]}
            if time.time() - last_beat[0] > HEARTBEAT_SECONDS or event["type"] != "message":
                s.get(FineTuningJob, job_id).heartbeat_at = last_beat[0] = time.time()

    return on_event


def make_stop_check(job_id: str):
    def should_stop() -> str | None:
        with session() as s:
            return s.get(FineTuningJob, job_id).requested_action
    return should_stop


def metrics_csv(job_id: str) -> bytes:
    from sqlalchemy import select

    from graftlm.store.models import JobEvent

    cols = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
            "valid_exact_match"]
    lines = [",".join(cols)]
    with session() as s:
        for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                           .order_by(JobEvent.seq)):
            lines.append(",".join("" if e.data.get(c) is None else str(e.data[c]) for c in cols))
    return ("\n".join(lines) + "\n").encode()


def adapter_type(method: str) -> str:
    """What the registry records for a model trained with ``method`` (the method's module says)."""
    return get_method(method).ADAPTER_TYPE


def register_checkpoint_model(s, job: FineTuningJob, step: int, path: Path, metrics: dict) -> str | None:
    """Register a checkpoint as a custom model (``<custom model id>:ckpt-step-N``) so it can be called and
    hosted like the job's final model; its adapter is copied out of the checkpoint, which training prunes.
    None when the checkpoint has no adapter (vanilla)."""
    from graftlm.train.checkpoint import ADAPTER_DIR

    if not (path / ADAPTER_DIR).is_dir():
        return None
    base = get_model(job.model)
    model_id = checkpoint_model_id(job.model, job.suffix, job.id, step)
    target = get_settings().models_dir / model_id.replace(":", "_")
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path / ADAPTER_DIR, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    lineage = {"base_model": job.model, "base_model_sha256": base["sha256"], "job_id": job.id,
               "training_file": job.training_file, "validation_file": job.validation_file,
               "method": job.config.get("training_method"), "task_type": job.config.get("task_type"),
               "checkpoint_step": step, "metrics": metrics, "hyperparameters": job.config}
    s.merge(Model(id=model_id, kind="custom", project_id=job.project_id, family=base["family"], parent=job.model,
                  path=str(target), parameter_count=base["parameter_count"], context_length=base["context_length"],
                  license=base["license"], source=f"checkpoint:{job.id}:step-{step}",
                  adapter_type=adapter_type(job.config.get("training_method", "lora")), lineage=lineage))
    return model_id


def register_custom_model(job: FineTuningJob, result, cfg: dict, hashes: dict) -> str:
    base = get_model(job.model)
    model_id = custom_model_id(job.model, job.suffix, job.id)
    target = get_settings().models_dir / model_id.replace(":", "_")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(result.model_dir, target)
    lineage = {"base_model": job.model, "base_model_sha256": base["sha256"], "job_id": job.id,
               "training_file": job.training_file, "validation_file": job.validation_file,
               "method": cfg["training_method"], "task_type": cfg.get("task_type"), "datasets": hashes,
               "parent_model": cfg.get("parent_model"),
               "hyperparameters": cfg, "metrics": result.metrics, "best_step": result.best_step,
               "steps": result.steps, "trained_tokens": result.trained_tokens,
               "trainable_params": result.trainable_params, "versions": result.run_info}
    with session() as s:
        s.merge(Model(id=model_id, kind="custom", project_id=job.project_id, family=base["family"],
                      parent=job.model, path=str(target), parameter_count=base["parameter_count"], context_length=base["context_length"],
                      license=base["license"], source=f"fine-tune:{job.id}",
                      adapter_type=adapter_type(cfg["training_method"]), lineage=lineage))
    return model_id


def parent_adapter(config: dict) -> Path | None:
    """The adapter directory of the custom model a job continues (``parent_model``), or None."""
    parent = config.get("parent_model")
    if not parent:
        return None
    path = Path(get_model(parent)["path"])
    if not path.is_dir():
        raise GraftError(f"custom model {parent} is registered but its adapter is gone from {path}", param="model",
                         code="model_missing")
    return path


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_types = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left on device" in str(exc).lower()


def classify_error(exc: BaseException) -> dict:
    """The job's error object ({code, message, param}) for an exception raised while training."""
    if isinstance(exc, GraftError):
        return {"code": exc.code or "invalid_request", "message": exc.message, "param": exc.param}
    if is_out_of_memory(exc):
        return {"code": "out_of_memory", "message": f"training ran out of memory: {exc}; lower "
                "training_batch_size or max_tokens_per_micro_batch, or enable gradient_checkpointing",
                "param": "training_batch_size"}
    if is_disk_full(exc):
        return {"code": "disk_full", "message": f"the disk under GRAFT_HOME is full: {exc}", "param": None}
    if isinstance(exc, (FileNotFoundError, OSError)) and "config.json" in str(exc):
        return {"code": "base_model_missing", "message": f"the base model's files are missing: {exc}",
                "param": "model"}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None}


def rank_env() -> tuple[int, int]:
    """(rank, world size) of this process: torchrun and Ray Train set RANK and WORLD_SIZE."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def deterministic(exc: BaseException) -> bool:
    """An error every restart would repeat (bad input, out of memory): the job fails instead of retrying."""
    return isinstance(exc, GraftError) or is_out_of_memory(exc)


def rank_failed(job_id: str, rank: int, world: int, exc: BaseException) -> str:
    """A rank of a multi-rank job failed. Bad input or OOM: the job fails, naming the rank (and for OOM the
    knobs). Anything else (a peer died, a collective timed out): say so and exit non-zero, so the group ends
    and the scheduler restarts it from the last checkpoint."""
    traceback.print_exc()
    where = f"rank {rank} of {world}"
    if deterministic(exc):
        error = classify_error(exc)
        if is_out_of_memory(exc):
            error["message"] = (f"{where} ran out of memory: {exc}; turn on distributed.cpu_offload, use "
                                "distributed.strategy fsdp with sharding full, or lower training_batch_size or "
                                "max_tokens_per_micro_batch")
        else:
            error["message"] = f"{where}: {error['message']}"
        with session() as s:  # the first failing rank records it (ranks failing alike would repeat it)
            job = s.get(FineTuningJob, job_id)
            if job.status != "failed":
                job.status, job.error, job.finished_at, job.requested_action = "failed", error, now(), None
                add_event(s, job_id, f"job failed: {error['message']}", level="error", data=error)
        return "failed"
    timed_out = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
    why = ("a collective timed out (distributed.timeout_seconds): a rank hung or died" if timed_out
           else "the rank group broke (a rank died?)")
    with session() as s:
        if s.get(FineTuningJob, job_id).status == "failed":
            return "failed"  # a peer failed the job first (its OOM or bad input); this rank was its casualty
        add_event(s, job_id, f"{where} stopped: {why}: {type(exc).__name__}: {str(exc)[:300]}", level="warn",
                  data={"rank": rank, "world_size": world})
    return "restart"


FAULT_OOM = "GRAFT_FAULT_OOM"  # "R:S": rank R runs out of memory in step S (a drill; tests set it)


def install_fault_drill(rank: int) -> None:
    """With ``GRAFT_FAULT_OOM=R:S`` set, rank R raises ``torch.OutOfMemoryError`` as it starts step S, as a
    device that cannot hold the step would, so the OOM path (the job's error names the rank and the knobs) can
    be tested without exhausting memory. Unset (always, outside tests) it does nothing."""
    drill = os.environ.get(FAULT_OOM)
    if not drill:
        return
    oom_rank, _, oom_step = drill.partition(":")
    if int(oom_rank) != rank:
        return
    import torch

    import graftlm.train.loop as loop
    step_once = loop.train_step

    def step_out_of_memory(run, state):
        if state.step + 1 == int(oom_step or 1):
            raise torch.OutOfMemoryError(f"fault drill {FAULT_OOM}={drill}: out of memory in step {state.step + 1}")
        return step_once(run, state)
    loop.train_step = step_out_of_memory


def record_rank(job_id: str, rank: int) -> None:
    """``jobs/<id>/ranks/rank-R.pid``: which process runs each rank (Ray Train's workers carry RANK only in their
    runtime environment), for operators and for the tests that kill one rank or check none is left."""
    d = job_dir(job_id) / "ranks"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank-{rank}.pid").write_text(str(os.getpid()))


def rank_pids(job_id: str) -> dict[int, int]:
    """{rank: pid} of the job's latest group (as each rank recorded it)."""
    d = job_dir(job_id) / "ranks"
    return {int(p.stem.removeprefix("rank-")): int(p.read_text()) for p in d.glob("rank-*.pid")} if d.is_dir() else {}


def run_rank(job_id: str, rank: int, world: int) -> str:
    """Ranks other than 0 train the same job silently: rank 0 writes the job's state and events."""
    from graftlm.train.checkpoint import latest_checkpoint
    from graftlm.train.loop import train

    with session() as s:
        job = s.get(FineTuningJob, job_id)
    out = job_dir(job_id)
    try:
        base = get_model(job.model)
        train_set, valid_set, _ = load_datasets(job, job.config.get("task_type", "CHAT_COMPLETION"))
        result = train(job.config, base["path"], train_set, valid_set, out, resume_from=latest_checkpoint(out),
                       init_adapter=parent_adapter(job.config))
        return result.status
    except BaseException as exc:
        return rank_failed(job_id, rank, world, exc)


def run_job(job_id: str) -> str:
    from graftlm.train.checkpoint import latest_checkpoint
    from graftlm.train.loop import train

    rank, world = rank_env()
    install_fault_drill(rank)
    if world > 1:
        record_rank(job_id, rank)
    if rank != 0:
        return run_rank(job_id, rank, world)
    with session() as s:
        job = s.get(FineTuningJob, job_id)
        resumed = job.started_at is not None
        job.status, job.worker_pid, job.heartbeat_at = "running", os.getpid(), time.time()
        job.started_at = job.started_at or now()
        add_event(s, job_id, "worker started" + (" (resuming)" if resumed else ""))
    metering.end_job(job_id)  # close a span left open by a crashed worker
    metering.start_job(job.dedicated_ai_cluster_id, job_id)
    out = job_dir(job_id)
    try:
        base = get_model(job.model)
        if not Path(base["path"], "config.json").exists():
            raise GraftError(f"base model {job.model} is registered but its files are gone from {base['path']}; "
                             f"pull or import it again", param="model", code="base_model_missing")
        train_set, valid_set, hashes = load_datasets(job, job.config.get("task_type", "CHAT_COMPLETION"))
        tracker = tracker_for(job_id, job.config, job.model)
        result = train(job.config, base["path"], train_set, valid_set, out, on_event=make_event_sink(job_id, tracker),
                       should_stop=make_stop_check(job_id), resume_from=latest_checkpoint(out),
                       init_adapter=parent_adapter(job.config))
        fields = {"trained_tokens": result.trained_tokens, "requested_action": None,
                  "run_info": {**result.run_info, "dataset_hashes": hashes, "metrics": result.metrics,
                               "trainable_params": result.trainable_params, "total_params": result.total_params}}
        if result.status == "succeeded":
            fields["fine_tuned_model"] = register_custom_model(job, result, job.config, hashes)
            results = create_file(io.BytesIO(metrics_csv(job_id)), f"{job_id}-metrics.csv", "fine-tune-results")
            mark_processed(results["id"])  # a result, not data to validate
            fields |= {"result_files": [results["id"]], "finished_at": now()}
        elif result.status == "cancelled":
            fields["finished_at"] = now()
        _update(job_id, status=result.status, **fields)
        tracker.finish(result.status, result.model_dir)
        with session() as s:
            add_event(s, job_id, f"job {result.status}" + (f": {fields.get('fine_tuned_model')}"
                                                            if result.status == "succeeded" else ""))
        return result.status
    except BaseException as exc:  # the job fails with a reason; the process exits cleanly
        if world > 1:
            return rank_failed(job_id, rank, world, exc)
        error = classify_error(exc)
        traceback.print_exc()
        _update(job_id, status="failed", error=error, finished_at=now(), requested_action=None)
        with session() as s:
            add_event(s, job_id, f"job failed: {error['message']}", level="error", data=error)
        return "failed"
    finally:
        metering.end_job(job_id)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    status = run_job(sys.argv[1])
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and status != "restart":
        dist.destroy_process_group()
    sys.exit(0 if status in ("succeeded", "paused", "cancelled") else 1 if status == "restart" else 3)


if __name__ == "__main__":
    main()
