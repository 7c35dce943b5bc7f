"""Settings read from the environment (GRAFT_*), with embedded, offline defaults."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAFT_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".graft")
    database_url: str | None = None
    rag_database_url: str | None = None  # postgresql://… for knowledge bases (default: SQLite at home/rag.db)
    admin_key: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    max_upload_bytes: int = 2 * 1024**3
    max_request_bytes: int = Field(4 * 1024**2, gt=0)  # any non-multipart body (JSON); over it: 413
    job_concurrency: int = 1
    max_queued_requests: int = 64
    kv_cache_bytes: int | None = Field(None, gt=0)  # per engine; unset: batch × context, ≤ ½ free GPU memory
    deactivate_grace_s: float = Field(30.0, ge=0)  # time a deactivated endpoint's requests get to finish
    warm_endpoints: bool = True  # load an endpoint's engine and adapter in the background when it is activated
    log_sweep_interval_s: float = Field(3600.0, gt=0)  # how often expired request logs are deleted
    direct_model_calls: bool = True  # custom model ids callable directly; off: only through endpoints
    prefix_cache: bool = True  # automatic prefix caching in the paged KV cache (GRAFT_PREFIX_CACHE=false: off)
    paged_kernel: bool = True  # CPU decode attention reads the paged KV cache in place (C++ kernel, built once)
    threads_per_unit: int | None = Field(None, ge=1)  # CPU threads a hosting unit buys; unset: every core
    # hosting clusters: "process" runs one engine replica process per unit (serve.remote); "inproc" runs one
    # engine thread in the API process (the baseline, and what tests that reach into the engine use)
    replicas: Literal["process", "inproc"] = "process"
    replica_hang_s: float = Field(30.0, gt=0)  # a replica with no heartbeat or step for this long is replaced
    endpoint_poll_s: float = Field(2.0, gt=0)  # how often the store is read for endpoints another process changed

    @field_validator("rag_database_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://", "postgresql+")):
            raise ValueError("GRAFT_RAG_DATABASE_URL must be a PostgreSQL URL (postgresql://user:pass@host/db); "
                             "leave it unset for SQLite at GRAFT_HOME/rag.db")
        return url or None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'graft.db'}"

    @property
    def rag_db(self) -> str | Path:
        """Where knowledge bases live: GRAFT_RAG_DATABASE_URL if set, else GRAFT_HOME/rag.db."""
        return self.rag_database_url or self.home / "rag.db"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def ensure_dirs(self) -> None:
        """Create the home and its folders private to this user (keys, data and models live there)."""
        for d in (self.home, self.blobs_dir, self.models_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        private(self.home)


def private(path: Path) -> None:
    """Make a folder 0700 (a file 0600) when it is ours and others could read it."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            path.chmod(0o700 if path.is_dir() else 0o600)
    except OSError:  # not ours to change (a shared mount): leave it
        pass


def private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if missing (before SQLite creates it with the umask), else make it 0600."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        return
    private(path)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    settings.ensure_dirs()
    return settings


def reset_settings() -> None:
    """Forget cached settings (tests change GRAFT_HOME between cases)."""
    get_settings.cache_clear()
