"""Audit fixes: docs behind the key, file-level status details, restart revalidation, early 413."""

from __future__ import annotations

import asyncio
import io
import json

import httpx

from tests.conftest import ADMIN_KEY

GOOD = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                        {"role": "assistant", "content": f"a{i}"}]}) + "\n" for i in range(3))
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_schema_needs_the_key_and_docs_pages_are_gone(live_server):
    root = live_server.removesuffix("/v1")
    r = httpx.get(root + "/openapi.json")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(root + "/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(root + "/openapi.json", headers=AUTH)
    assert r.status_code == 200 and "/v1/files" in r.json()["paths"]
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(root + page).status_code == 404, page
        assert httpx.get(root + page, headers=AUTH).status_code == 404, page


def test_file_level_errors_have_no_line_number():
    from graftlm.files.service import _format_details

    report = {"errors": [{"line": None, "field": None, "message": "the file is empty"},
                         {"line": 0, "field": None, "message": "validator failed: boom"},
                         {"line": 3, "field": "messages[1].role", "message": "is missing"},
                         {"line": 4, "field": None, "message": "invalid JSON"}], "error_count": 4}
    assert _format_details(report) == ("file: the file is empty; file: validator failed: boom; "
                                       "line 3: messages[1].role: is missing; line 4: invalid JSON")


def test_empty_upload_status_details_name_the_file_not_a_line():
    from graftlm.files.service import create_file, get_file, validate_stored_file

    record = create_file(io.BytesIO(b""), "empty.jsonl", "fine-tune")
    validate_stored_file(record["id"])
    f = get_file(record["id"])
    assert f["status"] == "error" and f["status_details"] == "file: the file is empty"


def _stuck_files():
    from graftlm.files.service import create_file

    good = create_file(io.BytesIO(GOOD.encode()), "good.jsonl", "fine-tune")["id"]
    bad = create_file(io.BytesIO(b"{bad\n"), "bad.jsonl", "fine-tune")["id"]
    other = create_file(io.BytesIO(b"anything"), "notes.txt", "assistants")["id"]
    return good, bad, other


def test_files_left_uploaded_are_finished():
    from graftlm.files.service import (create_file, finish_unfinished_files, get_file, unfinished_file_ids,
                               validate_stored_file)

    good, bad, other = _stuck_files()
    done = create_file(io.BytesIO(GOOD.encode()), "done.jsonl", "fine-tune")["id"]
    validate_stored_file(done)
    assert sorted(unfinished_file_ids()) == sorted([good, bad, other])
    assert sorted(finish_unfinished_files()) == sorted([good, bad, other])
    assert get_file(good)["status"] == "processed"
    assert get_file(bad)["status"] == "error" and get_file(bad)["status_details"].startswith("line 1: ")
    assert get_file(other)["status"] == "processed"
    assert get_file(done)["status"] == "processed"
    assert unfinished_file_ids() == []


def test_deleted_file_is_skipped():
    from graftlm.files.service import delete_file, finish_unfinished_files

    good, bad, other = _stuck_files()
    delete_file(bad)
    assert finish_unfinished_files([good, bad, other]) == [good, other]


def test_server_start_revalidates_stuck_files():
    from fastapi.testclient import TestClient

    from graftlm.api.app import create_app
    from graftlm.files.service import get_file

    good, bad, other = _stuck_files()
    with TestClient(create_app(run_scheduler=False)):
        pass  # the lifespan joins the revalidation thread on shutdown
    assert [get_file(i)["status"] for i in (good, bad, other)] == ["processed", "error", "processed"]


def _asgi_upload(app, content_length: int) -> tuple[int, dict]:
    """POST /v1/files with only headers: any attempt to read the body fails the test."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/files", "raw_path": b"/v1/files", "query_string": b"",
             "root_path": "", "server": ("test", 80), "client": ("test", 1234),
             "headers": [(b"host", b"test"), (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
                         (b"content-type", b"multipart/form-data; boundary=x"),
                         (b"content-length", str(content_length).encode())]}
    sent = []

    async def receive():
        raise AssertionError("the body was read before the size check")

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_declared_size_over_the_limit_is_413_before_reading(monkeypatch):
    from graftlm.api.app import create_app
    from graftlm.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    status, body = _asgi_upload(create_app(run_scheduler=False), 10**12)
    assert status == 413
    error = body["error"]
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert "limit of 1000 bytes" in error["message"] and "GRAFT_MAX_UPLOAD_BYTES" in error["message"]


def test_declared_size_over_the_limit_is_413_over_http(http, monkeypatch):
    from graftlm.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    r = http.post("/v1/files", files={"file": ("big.jsonl", b"x" * 100_000)}, data={"purpose": "fine-tune"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert "request body of" in r.json()["error"]["message"]  # the early check, not the streaming one
    assert http.get("/v1/files").json()["data"] == []


def test_small_envelope_over_the_limit_still_uploads(http, monkeypatch):
    from graftlm.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", len(GOOD))
    r = http.post("/v1/files", files={"file": ("exact.jsonl", GOOD.encode())}, data={"purpose": "fine-tune"})
    assert r.status_code == 200 and r.json()["bytes"] == len(GOOD)
