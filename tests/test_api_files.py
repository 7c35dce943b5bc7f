"""Files and models through the official openai SDK; auth; errors are OpenAI-shaped 4xx."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.conftest import ADMIN_KEY

GOOD = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                        {"role": "assistant", "content": f"a{i}"}]}) + "\n" for i in range(5))
BAD = GOOD + '{"messages": [{"role": "user", "content": "x"}]}\n' + "{not json\n"


def wait_processed(client, file_id, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        f = client.files.retrieve(file_id)
        if f.status != "uploaded":
            return f
        time.sleep(0.1)
    raise AssertionError("file was never validated")


def test_upload_valid_file_is_processed(client):
    f = client.files.create(file=("train.jsonl", io.BytesIO(GOOD.encode())), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(GOOD) and f.filename == "train.jsonl"
    f = wait_processed(client, f.id)
    assert f.status == "processed" and not f.status_details
    assert client.files.content(f.id).read() == GOOD.encode()


def test_upload_invalid_file_reports_lines(client):
    f = client.files.create(file=("bad.jsonl", io.BytesIO(BAD.encode())), purpose="fine-tune")
    f = wait_processed(client, f.id)
    assert f.status == "error"
    assert "line 6" in f.status_details and "line 7" in f.status_details


def test_list_pages_and_delete(client):
    ids = [client.files.create(file=(f"f{i}.jsonl", io.BytesIO(GOOD.encode())), purpose="fine-tune").id
           for i in range(3)]
    page = client.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    seen = [f.id for f in client.files.list(limit=1)]  # the SDK's auto-paging walks `after`
    assert sorted(seen) == sorted(ids)
    assert client.files.delete(ids[0]).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])
    # the other files with the same content still have their bytes
    assert client.files.content(ids[1]).read() == GOOD.encode()


def test_unknown_ids_are_404_in_openai_shape(http):
    for path in ("/v1/files/file-nope", "/v1/files/file-nope/content", "/v1/models/nope"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_auth_is_required_except_healthz(live_server):
    import httpx

    root = live_server.removesuffix("/v1")
    assert httpx.get(root + "/healthz").status_code == 200
    r = httpx.get(live_server + "/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.get(live_server + "/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(live_server + "/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_created_and_revoked_keys(live_server):
    import httpx

    from graftlm.keys.service import create_key, revoke_key

    secret, record = create_key("ci")
    hdr = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(live_server + "/models", headers=hdr).status_code == 200
    revoke_key(record["id"])
    assert httpx.get(live_server + "/models", headers=hdr).status_code == 401


def test_upload_bad_requests_are_4xx(http, monkeypatch):
    r = http.post("/v1/files", data={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = http.post("/v1/files", files={"file": ("x.jsonl", b"{}")}, data={"purpose": "nonsense"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = http.get("/v1/files", params={"limit": 0})
    assert r.status_code == 400


def test_upload_over_the_size_limit_is_413(http, monkeypatch):
    from graftlm.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    r = http.post("/v1/files", files={"file": ("big.jsonl", b"x" * 5000)}, data={"purpose": "fine-tune"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"


def test_models_list_in_openai_shape(client, tiny_model):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    m = client.models.retrieve("tiny")
    assert m.object == "model" and m.owned_by == "graftlm"


def test_admin_key_generated_once_with_mode_600(monkeypatch, graft_home):
    from graftlm.config import reset_settings
    from graftlm.keys.service import check_key, ensure_admin_key

    monkeypatch.delenv("GRAFT_ADMIN_KEY")
    reset_settings()
    secret = ensure_admin_key()
    path = graft_home / "admin.key"
    assert secret and path.read_text().strip() == secret
    assert (path.stat().st_mode & 0o777) == 0o600
    assert ensure_admin_key() is None  # printed once only
    assert check_key(secret)
