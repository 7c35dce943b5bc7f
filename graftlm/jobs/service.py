"""Create, list, control and inspect fine-tuning jobs (OpenAI shapes, OCI hyperparameters)."""

from __future__ import annotations

from sqlalchemy import select

from graftlm.clusters.clusters import ensure_default_fine_tuning_cluster, get_cluster_row
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.files.service import get_file_record
from graftlm.jobs.spec import JobSpec
from graftlm.models.catalog import get_model
from graftlm.store.db import session
from graftlm.store.ids import resolve_prefix
from graftlm.store.paging import check_limit, newest_first_page
from graftlm.store.models import Cluster, FineTuningJob, JobCheckpoint, JobEvent, Model, new_id, now
from graftlm.train.config import METHOD_FIELDS, check_runtime, parse_config

ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")
PENDING = {"cancel": "cancelling", "pause": "pausing"}  # requested action -> status shown meanwhile
AUTO_FIELDS = ("total_training_epochs", "training_batch_size", "learning_rate")  # auto picks at training time


def custom_model_id(base: str, suffix: str | None, job_id: str) -> str:
    """The custom model's id, known from the job's creation on (OpenAI's ``ft:base:suffix:job``)."""
    return f"ft:{base}:{suffix or 'custom'}:{job_id}"


def checkpoint_model_id(base: str, suffix: str | None, job_id: str, step: int) -> str:
    """A checkpoint's model id: the custom model's id plus ``:ckpt-step-N``, the same while the job runs and
    after it finished (it is registered as a custom model when the checkpoint is written)."""
    return f"{custom_model_id(base, suffix, job_id)}:ckpt-step-{step}"


def shown_hyperparameters(cfg: dict, run_info: dict | None) -> dict:
    """The job's hyperparameters as OpenAI shows them: ``"auto"`` until training picks a value, then the
    value; fields another method would read are left out."""
    picks = ((run_info or {}).get("auto") or {}).get("picks") or {}
    method = cfg.get("training_method", "lora")
    shown = {k: v for k, v in cfg.items() if method in METHOD_FIELDS.get(k, (method,))}
    for name in AUTO_FIELDS:
        if shown.get(name) is None:
            shown[name] = picks.get(name, {}).get("value", "auto")
    return {"n_epochs": shown["total_training_epochs"], "batch_size": shown["training_batch_size"],
            "learning_rate_multiplier": cfg.get("learning_rate_multiplier") or "auto", **shown}


def shown_method(cfg: dict, hyper: dict) -> dict:
    """OpenAI's ``method``: supervised, or dpo with ``beta`` among its hyperparameters."""
    if cfg.get("objective") == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": cfg.get("dpo_beta")}}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}


def shown_status(j: FineTuningJob) -> str:
    """A running job asked to stop is `cancelling` / `pausing` until its worker stops at the next step."""
    if j.status == "running" and j.requested_action in PENDING:
        return PENDING[j.requested_action]
    return j.status


def estimated_finish(j: FineTuningJob) -> int | None:
    """Unix time the running job should finish (its worker refreshes it at each metrics event)."""
    return (j.run_info or {}).get("estimated_finish") if j.status == "running" else None


def job_to_dict(j: FineTuningJob) -> dict:
    hyper = shown_hyperparameters(j.config, j.run_info)
    return {"object": "fine_tuning.job", "id": j.id, "model": j.model, "status": shown_status(j),
            "fine_tuned_model": j.fine_tuned_model, "trained_tokens": j.trained_tokens, "error": j.error,
            "result_files": j.result_files or [], "hyperparameters": hyper,
            "method": shown_method(j.config, hyper),
            "training_file": j.training_file, "validation_file": j.validation_file, "suffix": j.suffix,
            "seed": j.seed, "metadata": j.job_metadata, "created_at": j.created_at,
            "finished_at": j.finished_at, "estimated_finish": estimated_finish(j), "integrations": [],
            "organization_id": "graftlm", "dedicated_ai_cluster_id": j.dedicated_ai_cluster_id,
            "run_info": j.run_info}


def _check_file(file_id: str | None, param: str) -> str | None:
    if file_id is None:
        return None
    try:
        f = get_file_record(file_id)
    except NotFound as e:
        raise NotFound(f"{param} {file_id!r} does not exist; upload it with POST /v1/files", param=param) from e
    if f.purpose != "fine-tune":
        raise GraftError(f"{param} {file_id} has purpose {f.purpose!r}; upload it with purpose \"fine-tune\"",
                         param=param)
    if f.status == "error":
        raise GraftError(f"{param} {file_id} failed validation: {f.status_details}", param=param,
                         code="invalid_file")
    return f.status


def create_job(**fields) -> dict:
    """Create a job from JobSpec fields (model, training_file, hyperparameters, ...)."""
    return submit_job(JobSpec.parse(fields))


def submit_job(spec: JobSpec) -> dict:
    model, training_file, validation_file, suffix = spec.model, spec.training_file, spec.validation_file, spec.suffix
    dedicated_ai_cluster_id = spec.dedicated_ai_cluster_id
    base = get_model(model)
    hyper = spec.hyperparameter_dict()
    if "parent_model" in hyper:
        raise GraftError("parent_model is set from the job's model: name the custom model as model",
                         param="hyperparameters.parent_model")
    if suffix is not None and (not suffix or len(suffix) > 64 or ":" in suffix):
        raise GraftError("suffix must be 1-64 characters without ':'", param="suffix")
    cfg = parse_config(hyper)
    if base["kind"] != "base":  # continue training a custom model: its adapter is the start (and DPO's reference)
        cfg = continue_from(cfg, base, hyper)
        model = base["parent"]
    check_runtime(cfg)
    statuses = [_check_file(training_file, "training_file"), _check_file(validation_file, "validation_file")]
    if cfg.objective == "dpo":
        for file_id, param in ((training_file, "training_file"), (validation_file, "validation_file")):
            fmt = get_file_record(file_id).format if file_id else None
            if fmt not in (None, "preference"):
                raise GraftError(f"a dpo job trains on preference pairs (OpenAI's DPO JSONL: input, "
                                 f"preferred_output, non_preferred_output); {file_id} is {fmt}", param=param,
                                 code="invalid_file")
    if dedicated_ai_cluster_id:
        with session() as s:
            cluster = get_cluster_row(s, dedicated_ai_cluster_id)
            if cluster.type != "FINE_TUNING":
                raise GraftError(f"cluster {cluster.id} is a {cluster.type} cluster; jobs run on FINE_TUNING clusters",
                                 param="dedicated_ai_cluster_id")
    else:
        dedicated_ai_cluster_id = ensure_default_fine_tuning_cluster()
    cfg = resolve_world_size(cfg, dedicated_ai_cluster_id, named=spec.dedicated_ai_cluster_id is not None)
    status = "validating_files" if "uploaded" in statuses else "queued"
    with session() as s:
        job = FineTuningJob(id=new_id("ftjob"), model=model, training_file=training_file,
                            validation_file=validation_file, suffix=suffix, seed=cfg.seed, status=status,
                            config=cfg.model_dump(mode="json", exclude_none=True), job_metadata=spec.metadata,
                            dedicated_ai_cluster_id=dedicated_ai_cluster_id)
        s.add(job)
        s.flush()
        add_event(s, job.id, f"job created: {cfg.training_method} on {model}")
        return job_to_dict(job)


def continue_from(cfg, custom: dict, given: dict):
    """The config of a job that continues training ``custom`` (a LoRA or T-Few model): its method unless the
    job names the same one, one process, ``parent_model`` set. Vanilla and checkpoint-less models are refused."""
    from graftlm.train.methods import METHODS, get_method

    kind = custom.get("adapter_type")
    methods = [m for m in METHODS if m != "qlora" and get_method(m).ADAPTER_TYPE == kind]
    if kind not in ("lora", "ia3") or not methods:
        raise GraftError(f"{custom['id']} is a {kind or 'full-weight'} model; only LoRA and T-Few custom models can "
                         f"be trained further (fine-tune its base model {custom['parent']})", param="model")
    named = "training_method" in given or "method" in given
    if named and cfg.training_method not in methods:
        raise GraftError(f"{custom['id']} is a {kind} model: training_method must be {methods[0]} to continue it "
                         f"(or fine-tune its base model {custom['parent']})", param="training_method")
    if (cfg.distributed.world_size or 1) > 1:
        raise GraftError("continuing a custom model trains in one process; set distributed.world_size 1",
                         param="distributed.world_size")
    given = {k: v for k, v in given.items() if k != "method"}
    return parse_config({**given, "training_method": methods[0], "parent_model": custom["id"]})


def resolve_world_size(cfg, cluster_id: str, named: bool):
    """A job on a FINE_TUNING cluster of U units runs U ranks (``distributed.world_size`` may ask for fewer);
    without a named cluster, one process. Refused (400) when the ranks do not fit the cluster or this
    machine's devices (with GRAFT_RAY_ADDRESS, Ray places them), or the strategy does not fit the ranks."""
    import os

    from graftlm.device import rank_devices

    with session() as s:
        units = s.get(Cluster, cluster_id).unit_count if named else 1
    asked = cfg.distributed.world_size
    world = asked or units
    if world > units:
        where = f"cluster {cluster_id} has {units} unit{'s' if units > 1 else ''}" if named else \
            "a job without dedicated_ai_cluster_id runs one process"
        raise GraftError(f"invalid hyperparameter distributed.world_size: {world} ranks, but {where}",
                         param="distributed.world_size", code="invalid_hyperparameter")
    if world > 1 and not os.environ.get("GRAFT_RAY_ADDRESS"):
        have, kind = rank_devices()
        if world > have:
            param = "distributed.world_size" if asked else "dedicated_ai_cluster_id"
            raise GraftError(f"{world} ranks (one per unit of cluster {cluster_id}) need {world} {kind}, and this "
                             f"machine has {have}; use a cluster of at most {have} units, set "
                             f"distributed.world_size, or place the job on a Ray cluster (GRAFT_RAY_ADDRESS)",
                             param=param, code="invalid_hyperparameter")
    cfg.strategy_for(world)
    return cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"world_size": world})})


def add_event(s, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    s.add(JobEvent(id=new_id("ftevent"), job_id=job_id, level=level, type=type, message=message, data=data))


def _get(s, job_id: str) -> FineTuningJob:
    job = s.get(FineTuningJob, job_id)
    if job is None:
        raise NotFound(f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return job


def resolve_job_id(id_or_prefix: str) -> str:
    """A job id from its full id or a unique prefix of it (the CLI's tables truncate ids)."""
    return resolve_prefix(FineTuningJob, id_or_prefix, what="fine-tuning job", param="fine_tuning_job_id")


def get_job(job_id: str) -> dict:
    with session() as s:
        return job_to_dict(_get(s, job_id))


def _page(s, query, model, after: str | None, limit: int):
    check_limit(limit, 1000)
    if after:
        anchor = s.scalar(select(model).where(model.id == after))
        if anchor is None:
            raise NotFound(f"no item with id {after!r} to page after", param="after")
        query = query.where(model.seq < anchor.seq) if hasattr(model, "seq") else query
    rows = list(s.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_jobs(*, after: str | None = None, limit: int = 20, metadata: dict | None = None) -> dict:
    check_limit(limit, 1000)
    with session() as s:
        rows, more = newest_first_page(s, FineTuningJob, select(FineTuningJob), _get(s, after) if after else None,
                                       limit)
        return {"object": "list", "data": [job_to_dict(j) for j in rows], "has_more": more}


def list_events(job_id: str, *, after: str | None = None, limit: int = 20) -> dict:
    with session() as s:
        _get(s, job_id)
        q = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())
        rows, more = _page(s, q, JobEvent, after, limit)
        return {"object": "list", "has_more": more, "data": [
            {"object": "fine_tuning.job.event", "id": e.id, "created_at": e.created_at, "level": e.level,
             "message": e.message, "type": e.type, "data": e.data or {}} for e in rows]}


def list_checkpoints(job_id: str, *, after: str | None = None, limit: int = 10) -> dict:
    with session() as s:
        job = _get(s, job_id)
        q = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id).order_by(JobCheckpoint.seq.desc())
        rows, more = _page(s, q, JobCheckpoint, after, limit)
        ids = {checkpoint_model_id(job.model, job.suffix, job.id, c.step_number): c.step_number for c in rows}
        registered = set(s.scalars(select(Model.id).where(Model.id.in_(list(ids))))) if ids else set()
        servable = {step: True for m, step in ids.items() if m in registered}
        return {"object": "list", "has_more": more, "data": [
            {"object": "fine_tuning.job.checkpoint", "id": c.id, "created_at": c.created_at,
             "fine_tuning_job_id": job_id, "step_number": c.step_number, "metrics": c.metrics,
             "fine_tuned_model_checkpoint": checkpoint_model_id(job.model, job.suffix, job.id, c.step_number),
             "servable": servable.get(c.step_number, False)}
            for c in rows]}


def request_action(job_id: str, action: str) -> dict:
    """cancel / pause / resume. A running worker notices cancel and pause at its next step."""
    with session() as s:
        job = _get(s, job_id)
        if action == "cancel":
            if job.status in FINISHED:
                raise Conflict(f"job {job_id} is already {job.status}", param="fine_tuning_job_id")
            if job.status == "running":
                job.requested_action = "cancel"
            else:
                job.status, job.finished_at = "cancelled", now()
                add_event(s, job.id, "job cancelled")
        elif action == "pause":
            if job.status not in ("queued", "running", "validating_files"):
                raise Conflict(f"job {job_id} is {job.status}; only queued or running jobs can be paused",
                               param="fine_tuning_job_id")
            if job.status == "running":
                job.requested_action = "pause"
            else:
                job.status = "paused"
                add_event(s, job.id, "job paused")
        elif action == "resume":
            if job.status != "paused":
                raise Conflict(f"job {job_id} is {job.status}; only paused jobs can be resumed",
                               param="fine_tuning_job_id")
            job.status, job.requested_action = "queued", None
            add_event(s, job.id, "job resumed: queued")
        return job_to_dict(job)
