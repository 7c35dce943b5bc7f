"""Disk full is a 507 naming GRAFT_HOME and its free space, with no partial blob or row left; the home is
private (0700, database 0600); prices and unit counts are bounded; the OpenAPI schema says 400, as sent."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import time

import pytest

LINE = json.dumps({"prompt": "what is 2 + 2", "completion": "4"}).encode() + b"\n"


def upload(http, data: bytes = LINE * 100):
    return http.post("/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"})


def assert_disk_full(r, home):
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_storage" and "GRAFT_HOME" in err["message"] and str(home) in err["message"]
    assert "bytes free" in err["message"]


def test_disk_full_on_upload_is_507_and_leaves_nothing(http, graft_home, monkeypatch):
    from graftlm.store import blobs

    real = blobs.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs.os, "fsync", full)
    assert_disk_full(upload(http), graft_home)
    monkeypatch.setattr(blobs.os, "fsync", real)
    assert http.get("/v1/files").json()["data"] == []  # no row
    assert [p for p in (graft_home / "blobs").rglob("*") if p.is_file()] == []  # no partial blob
    assert upload(http).status_code == 200  # and the next upload, with room, works


def test_database_full_on_cluster_creation_is_507(http, graft_home, monkeypatch):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from graftlm.clusters import clusters

    def full(*a, **kw):
        raise OperationalError("INSERT INTO clusters", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(clusters, "create_cluster", full)
    assert_disk_full(http.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING"}), graft_home)


@pytest.fixture
def small_tmpfs_home(graft_home):
    """GRAFT_HOME on an 8 MiB tmpfs (needs mount rights: root in a container, else skipped)."""
    from graftlm.clusters.hosting import shutdown_runtime
    from graftlm.config import reset_settings
    from graftlm.store.db import dispose_all

    graft_home.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the disk-full drill runs where it can)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(graft_home)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    reset_settings()
    yield graft_home
    shutdown_runtime()
    dispose_all()
    subprocess.run(["umount", "-l", str(graft_home)], check=False)


def fill(directory) -> object:
    """Write a file until the disk says ENOSPC; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_disk_full_drill_on_a_small_tmpfs(small_tmpfs_home, http):
    first = upload(http).json()  # the server works on the small disk
    while http.get(f"/v1/files/{first['id']}").json()["status"] == "uploaded":
        time.sleep(0.05)  # its validation is recorded before the disk fills
    filler = fill(small_tmpfs_home)
    try:
        assert_disk_full(upload(http, LINE * 2000), small_tmpfs_home)
        files = http.get("/v1/files").json()["data"]
        assert len(files) == 1  # the one from before: no row for the failed upload
        assert [p for p in (small_tmpfs_home / "blobs" / "tmp").iterdir()] == []  # and no partial blob
        r = http.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING", "name": "x" * 200_000})
        assert r.status_code == 507, r.text  # a 200 KB row cannot fit: SQLite says the database is full
        assert http.get("/healthz").status_code == 200
    finally:
        filler.unlink()
    assert upload(http).status_code == 200  # space again: served again
    assert http.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING"}).status_code == 200


def test_home_is_0700_and_the_databases_0600(http, graft_home):
    old = os.umask(0o022)
    try:
        assert upload(http).status_code == 200
        r = http.post("/v1/knowledge_bases", json={"name": "kb"})
        assert r.status_code == 200, r.text
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(graft_home) == 0o700
    for sub in ("blobs", "models", "jobs"):
        assert mode(graft_home / sub) & 0o077 == 0, sub
    for db in graft_home.glob("*.db*"):  # graft.db, rag.db and their -wal / -shm
        assert mode(db) == 0o600, db


def test_prices_and_unit_counts_are_bounded(http):
    for price in ("nan", "inf", "-inf", "1e309", "-1", "1e300"):  # 1e300: finite, but the cost would not be
        r = http.get("/v1/usage", params={"price_per_unit_hour": price})
        assert r.status_code == 400, (price, r.text)
        assert r.json()["error"]["param"] == "price_per_unit_hour"
    assert http.get("/v1/usage", params={"price_per_unit_hour": "2.5"}).json()["price_per_unit_hour"] == 2.5
    for units in (10**12, 0, -1, 1025):
        r = http.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING", "unit_count": units})
        assert r.status_code == 400 and r.json()["error"]["param"] == "unit_count", (units, r.text)
    from graftlm.clusters import metering
    from graftlm.errors import GraftError

    with pytest.raises(GraftError):  # the service refuses them too (CLI, SDK)
        metering.usage_report(float("nan"))


def test_openapi_says_400_in_the_error_shape_as_the_server_sends(http):
    import jsonschema

    schema = http.get("/openapi.json").json()
    assert "422" not in json.dumps(schema["paths"])
    ops = [op for path in schema["paths"].values() for op in path.values()]
    assert ops and all("400" in op["responses"] for op in ops)
    r = http.post("/v1/chat/completions", json={"model": "x", "messages": [], "temperature": 9})
    assert r.status_code == 400
    jsonschema.validate(r.json(), schema["components"]["schemas"]["Error"])
