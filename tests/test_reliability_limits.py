"""One large request cannot freeze the server: bodies are bounded (413), prompts too long for the context
are refused before tokenizing, tokenization runs off the event loop, and an unexpected 500 leaves the
client's keep-alive connection usable."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from graftlm.config import reset_settings
from tests.conftest import ADMIN_KEY


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setenv("GRAFT_MAX_REQUEST_BYTES", "2000")
    reset_settings()


def chat_body(content: str) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}


def test_bodies_over_the_limit_get_413_before_being_read(http, tiny_model, small_limit):
    r = http.post("/v1/chat/completions", json=chat_body("x" * 3000))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "GRAFT_MAX_REQUEST_BYTES" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: counted while read
        data = json.dumps(chat_body("y" * 5000)).encode()
        for i in range(0, len(data), 500):
            yield data[i:i + 500]

    r = http.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert http.post("/v1/chat/completions", json=chat_body("hello")).status_code == 200
    # a file upload is bounded by GRAFT_MAX_UPLOAD_BYTES, not by the JSON body limit
    line = json.dumps({"prompt": "p" * 100, "completion": "c" * 100}).encode() + b"\n"
    r = http.post("/v1/files", files={"file": ("d.jsonl", line * 30)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text


def test_multipart_bodies_are_bounded_by_the_upload_limit_on_every_route(http, monkeypatch):
    monkeypatch.setenv("GRAFT_MAX_UPLOAD_BYTES", "1000")
    reset_settings()
    kb = http.post("/v1/knowledge_bases", json={"name": "kb"}).json()
    big = {"files": ("a.txt", b"x" * 200_000)}
    for path in ("/v1/files", f"/v1/knowledge_bases/{kb['id']}/documents"):
        r = http.post(path, files=big, data={"purpose": "fine-tune"})
        assert r.status_code == 413, (path, r.text)
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("file_too_large", "file")


def test_an_over_long_prompt_is_refused_without_tokenizing_it(http, tiny_model, monkeypatch):
    import graftlm.api.routes.inference as inference

    def never(*a, **kw):
        raise AssertionError("tokenized a prompt that could never fit")

    monkeypatch.setattr(inference, "render_prompt", never)
    for path, body, param in (("/v1/chat/completions", chat_body("hello " * 100_000), "messages"),
                              ("/v1/completions", {"model": "tiny", "prompt": "hello " * 100_000}, "prompt")):
        r = http.post(path, json=body)
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, "context_length_exceeded")


def test_healthz_is_answered_while_a_prompt_is_being_tokenized(live_server, tiny_model, monkeypatch):
    """Tokenizing waits until /healthz has been answered: on the event loop, /healthz would never be."""
    import graftlm.api.routes.inference as inference

    real, started, answered = inference.render_prompt, threading.Event(), threading.Event()

    def slow_render(tokenizer, messages):
        started.set()
        answered.wait(timeout=30)
        return real(tokenizer, messages)

    monkeypatch.setattr(inference, "render_prompt", slow_render)
    base, headers = live_server.removesuffix("/v1"), {"Authorization": f"Bearer {ADMIN_KEY}"}
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
        base + "/v1/chat/completions", json=chat_body("hello"), headers=headers, timeout=60)))
    t.start()
    assert started.wait(timeout=30)
    try:
        health = httpx.get(base + "/healthz", timeout=10)  # raises ReadTimeout if the loop is blocked
    finally:
        answered.set()
    t.join(timeout=60)
    assert health.status_code == 200 and result["r"].status_code == 200


def test_a_500_keeps_the_keep_alive_connection_usable(live_server, monkeypatch):
    from graftlm.models import catalog

    monkeypatch.setattr(catalog, "list_models", lambda: 1 / 0)
    host, port = live_server.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        f = s.makefile("rb")

        def get(path: str) -> tuple[int, dict]:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n".encode())
            status = int(f.readline().split()[1])
            headers = {}
            while (line := f.readline().strip()):
                k, _, v = line.decode().partition(":")
                headers[k.lower()] = v.strip()
            f.read(int(headers["content-length"]))
            return status, headers

        status, headers = get("/v1/models")
        assert status == 500 and headers.get("connection") != "close"
        assert get("/healthz")[0] == 200  # the same connection serves the next request
