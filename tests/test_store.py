"""Migrations, SQLite pragmas, blob atomicity, and the same schema on a real PostgreSQL server."""

from __future__ import annotations

import io
import os
import threading

import pytest
from sqlalchemy import inspect, text

from graftlm.config import get_settings
from graftlm.store import blobs
from graftlm.store.db import get_engine, session, upgrade
from graftlm.store.models import ApiKey, Base

EXPECTED_TABLES = set(Base.metadata.tables)


def test_migrations_upgrade_an_empty_database():
    url = get_settings().db_url
    upgrade(url)
    tables = set(inspect(get_engine(url)).get_table_names())
    assert EXPECTED_TABLES <= tables
    with get_engine(url).connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() is not None


def test_migration_schema_matches_models():
    """Autogenerate finds nothing to add: the migrations and the SQLAlchemy models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = get_settings().db_url
    upgrade(url)
    with get_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_database_with_referenced_rows_upgrades_from_the_first_revision(tmp_path):
    """Every later migration runs over a first-revision database holding a model, a cluster and an endpoint
    that references both: SQLite's batch rebuild of a referenced table (copy, drop, rename) must not fail on
    the foreign key (it did: FOREIGN KEY constraint failed on DROP TABLE dedicated_ai_clusters), and no row
    is lost; foreign keys are back on afterwards."""
    from alembic import command

    from graftlm.store.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with get_engine(url).begin() as conn:
        conn.execute(text("insert into models (id, kind, family, path, parameter_count, context_length, created_at)"
                          " values ('base1', 'base', 'llama', '/m', 1, 2048, 1)"))
        conn.execute(text("insert into dedicated_ai_clusters (id, name, type, unit_count, base_model,"
                          " lifecycle_state, created_at) values ('cl1', 'prod', 'HOSTING', 1, 'base1', 'ACTIVE', 1)"))
        conn.execute(text("insert into endpoints (id, name, model, dedicated_ai_cluster_id, lifecycle_state,"
                          " created_at, updated_at) values ('ep1', 'bot', 'base1', 'cl1', 'ACTIVE', 1, 1)"))
    upgrade(url)
    with get_engine(url).connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() != "0001"
        assert conn.execute(text("select name from dedicated_ai_clusters")).scalars().all() == ["prod"]
        assert conn.execute(text("select name, dedicated_ai_cluster_id from endpoints")).all() == [("bot", "cl1")]
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert not any(t.startswith("_alembic_tmp") for t in inspect(get_engine(url)).get_table_names())


def test_sqlite_runs_in_wal_mode_with_foreign_keys():
    with session() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_session_rolls_back_on_error():
    with pytest.raises(RuntimeError):
        with session() as s:
            s.add(ApiKey(id="key-1", name="x", prefix="p", key_hash="h"))
            s.flush()
            raise RuntimeError("boom")
    with session() as s:
        assert s.get(ApiKey, "key-1") is None


def test_blob_is_content_addressed_and_streamed(tmp_path):
    data = os.urandom(3 * blobs.CHUNK + 17)
    sha, size, path = blobs.put_file(tmp_path, io.BytesIO(data))
    import hashlib

    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert path == blobs.blob_path(tmp_path, sha) and path.read_bytes() == data
    assert b"".join(blobs.iter_blob(tmp_path, sha)) == data


def test_blob_write_is_atomic_when_the_stream_fails(tmp_path):
    def chunks():
        yield b"a" * 100
        raise IOError("client went away")

    with pytest.raises(IOError):
        blobs.put_stream(tmp_path, chunks())
    stored = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert stored == []  # no partial blob, no leftover temp file


def test_blob_over_the_limit_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(blobs.TooLarge):
        blobs.put_file(tmp_path, io.BytesIO(b"x" * 5000), max_bytes=4096)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_concurrent_writers_of_the_same_content_agree(tmp_path):
    data = os.urandom(blobs.CHUNK * 2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(blobs.put_file(tmp_path, io.BytesIO(data))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r[0] for r in results}) == 1
    assert blobs.blob_path(tmp_path, results[0][0]).read_bytes() == data


POSTGRES_URL = os.environ.get("GRAFT_TEST_POSTGRES_URL")


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL server: set GRAFT_TEST_POSTGRES_URL "
                    "(.ci/run installs and starts one from Debian packages)")
def test_postgres_runs_the_same_migrations_and_models():
    from sqlalchemy import create_engine

    from graftlm.store.db import dispose_all

    engine = create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    dispose_all()
    upgrade(POSTGRES_URL)
    assert EXPECTED_TABLES <= set(inspect(get_engine(POSTGRES_URL)).get_table_names())
    with session(POSTGRES_URL) as s:
        s.add(ApiKey(id="key-pg", name="pg", prefix="gk-", key_hash="abc"))
    with session(POSTGRES_URL) as s:
        assert s.get(ApiKey, "key-pg").name == "pg"
