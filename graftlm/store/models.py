"""The control-plane tables. Times are unix seconds; flexible payloads are JSON columns."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Base(DeclarativeBase):
    pass


DEFAULT_PROJECT = "default"  # every row that existed before projects, and what a CLI run without one uses
DATA_POLICIES = ("warn", "redact", "reject")


class Project(Base):
    """An isolation boundary (OCI's compartment): every resource belongs to exactly one; the id is its name.
    Quotas are optional (None: no limit)."""
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_policy: Mapped[str] = mapped_column(String(10), default="warn", server_default="warn")
    max_clusters: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_units: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_file_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # rows of what it held stay


def project_column(nullable: bool = False) -> Mapped:
    return mapped_column(ForeignKey("projects.id"), index=True, nullable=nullable)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    role: Mapped[str] = mapped_column(String(16), default="editor", server_default="editor")
    project_id: Mapped[str] = project_column()  # the instance admin key (is_admin) acts in any project
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = project_column()
    filename: Mapped[str] = mapped_column(String(500))
    purpose: Mapped[str] = mapped_column(String(50))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), default="uploaded")
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    format: Mapped[str | None] = mapped_column(String(30), nullable=True)
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    data_policy: Mapped[str | None] = mapped_column(String(10), nullable=True)  # warn | redact | reject
    redactions: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # kind -> placeholders written
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)


class Model(Base):
    """A base model (pulled or imported) or a custom model (base + adapter or full weights)."""
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    project_id: Mapped[str | None] = project_column(nullable=True)  # None: a base model, shared read-only
    kind: Mapped[str] = mapped_column(String(20))  # base | custom
    family: Mapped[str] = mapped_column(String(50), default="llama")
    parent: Mapped[str | None] = mapped_column(ForeignKey("models.id"), nullable=True, index=True)
    path: Mapped[str] = mapped_column(Text)
    parameter_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    context_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    license: Mapped[str | None] = mapped_column(String(100), nullable=True)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_type: Mapped[str | None] = mapped_column(String(20), nullable=True)  # lora | ia3 | full
    lineage: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = project_column()  # its events and checkpoints belong through it
    model: Mapped[str] = mapped_column(ForeignKey("models.id"))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(100), nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=42)
    status: Mapped[str] = mapped_column(String(30), default="validating_files", index=True)
    config: Mapped[dict] = mapped_column(JSON)
    job_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list | None] = mapped_column(JSON, nullable=True)
    run_info: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    dedicated_ai_cluster_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    requested_action: Mapped[str | None] = mapped_column(String(20), nullable=True)  # cancel | pause
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(10), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class Cluster(Base):
    __tablename__ = "dedicated_ai_clusters"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str | None] = project_column(nullable=True)  # None: the shared local fine-tuning one
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(20))  # HOSTING | FINE_TUNING
    unit_count: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    lifecycle_state: Mapped[str] = mapped_column(String(30), default="CREATING")
    deterministic: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # fp32 serving
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Endpoint(Base):
    __tablename__ = "endpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = project_column()  # its request logs and feedback belong through it
    name: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(ForeignKey("models.id"))
    dedicated_ai_cluster_id: Mapped[str] = mapped_column(ForeignKey("dedicated_ai_clusters.id"), index=True)
    lifecycle_state: Mapped[str] = mapped_column(String(30), default="CREATING")
    log_requests: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    log_retention_days: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now)


class RequestLog(Base):
    """One logged completion of an endpoint with ``log_requests`` on; ``id`` is the completion id the client got.
    The request and response are ``body`` (small) or the blob ``body_sha256`` (GRAFT_HOME/blobs/request-logs);
    feedback on the completion is on its row (the latest one wins)."""
    __tablename__ = "request_logs"
    __table_args__ = (Index("ix_request_logs_endpoint_created", "endpoint_id", "created_ns"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(64))
    endpoint_name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(300))
    adapter: Mapped[str | None] = mapped_column(String(300), nullable=True)
    kind: Mapped[str] = mapped_column(String(10))  # chat | text
    status: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(20), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_sha256: Mapped[str] = mapped_column(String(64), index=True)  # the same prompt, for pairing answers
    body: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    body_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    body_bytes: Mapped[int] = mapped_column(Integer)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # as sent: -1/1, or 1-5
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # the rating on 1-5 (thumbs: 1 or 5)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    created_ns: Mapped[int] = mapped_column(BigInteger)  # orders the rows of one second (pages, sweeps)


class UsageRecord(Base):
    """One metered span of a cluster: unit_count units from started_at to ended_at (open while running)."""
    __tablename__ = "usage_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = project_column()  # the job's project for a job span, else the cluster's
    cluster_id: Mapped[str] = mapped_column(ForeignKey("dedicated_ai_clusters.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # HOSTING | FINE_TUNING
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    unit_count: Mapped[int] = mapped_column(Integer)
    minimum_unit_hours: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Eval(Base):
    """An eval definition: a JSONL eval set and the scorers its runs use."""
    __tablename__ = "evals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = project_column()  # its runs belong through it
    name: Mapped[str] = mapped_column(String(500))
    data_path: Mapped[str] = mapped_column(Text)
    scorers: Mapped[list] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now, index=True)


class EvalRun(Base):
    """One run of an eval on a model; ``body`` is the whole run (config, aggregates, per-example results)."""
    __tablename__ = "eval_runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    model: Mapped[str | None] = mapped_column(String(300), nullable=True)
    body: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    saved_ns: Mapped[int] = mapped_column(BigInteger)  # orders runs saved within the same second


class RagIngestion(Base):
    """A knowledge-base ingestion job; ``body`` is what GET .../ingestions/{id} returns. ``owner`` is the
    host:pid of the process whose thread runs it, so another process can tell a live job from a dead one."""
    __tablename__ = "rag_ingestions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(30))
    body: Mapped[dict] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    updated_at: Mapped[float] = mapped_column(Float)


class KnowledgeBaseOwner(Base):
    """Which project a knowledge base belongs to (the KB itself lives in the RAG store, maybe another database);
    a KB with no row here is one made before projects and belongs to ``default``. Its documents and
    ingestions belong through it."""
    __tablename__ = "knowledge_base_projects"
    knowledge_base_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = project_column()
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class AuditEvent(Base):
    """One mutating or denied request, append-only (the database refuses UPDATE and DELETE on it). No secrets
    and no bodies: the key's id, never the key; the route, never its payload."""
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_project_seq", "project_id", "seq"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    action: Mapped[str] = mapped_column(String(200), index=True)  # "POST /v1/files/{file_id}": method + route
    resource_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(10))  # allowed | denied | failed
    client: Mapped[str | None] = mapped_column(String(100), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
