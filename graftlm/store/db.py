"""Engine, sessions and schema upgrades. SQLite runs in WAL mode with foreign keys on."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from graftlm.config import get_settings, private_file
from graftlm.store import scope  # noqa: F401 - confines every ORM query of a request to its project

_engines: dict[str, Engine] = {}
_upgraded: set[str] = set()
_lock = threading.Lock()
_upgrade_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _private_sqlite_file(url: str) -> None:
    """The database holds key hashes and job data: 0600, as the blobs are (SQLite's -wal/-shm follow it)."""
    path = make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        private_file(Path(path))


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().db_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                _private_sqlite_file(url)
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _engines[url] = engine
    return engine


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None) -> None:
    """Bring the schema to the newest migration (idempotent, once per process per URL)."""
    from alembic import command

    url = url or get_settings().db_url
    if url in _upgraded:
        return
    with _upgrade_lock:  # two threads of one process must not both create the schema
        if url in _upgraded:
            return
        engine = get_engine(url)
        cfg = alembic_config(url)
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # a batch migration rebuilds a table (copy, drop, rename): a drop of a table that
                # other rows reference fails with foreign keys on, so they are off while migrating (SQLite's
                # own 12-step ALTER procedure) and checked before the commit
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()  # end SQLAlchemy's autobegun transaction (a PRAGMA inside one is a no-op)
            try:
                with conn.begin():
                    if sqlite:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    else:  # serialize concurrent processes upgrading one PostgreSQL server
                        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242)")
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if sqlite and (broken := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                        raise RuntimeError(f"schema upgrade left rows whose references are missing: {broken[:5]}")
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
        _upgraded.add(url)


def dispose_all() -> None:
    """Close every pooled connection (tests switch GRAFT_HOME between cases)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _upgraded.clear()


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on error. Upgrades the schema on first use."""
    upgrade(url)
    maker = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    s = maker()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()
