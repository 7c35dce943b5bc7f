"""A table of hostile inputs, each answered with a 4xx in the OpenAI error shape while /healthz keeps
answering: huge, deep and invalid JSON, non-UTF-8 bytes, wrong content types, huge stop lists, n, logprobs,
100k-character messages, unknown models, path-like ids and file names."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY

JSON = {"content-type": "application/json"}


def chat(**kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, **kw}


def raw(body: bytes, headers=JSON) -> dict:
    return {"content": body, "headers": headers}


HOSTILE = [  # (name, method, path, request kwargs, expected status)
    ("5 MiB body", "POST", "/v1/chat/completions", raw(json.dumps(chat(stop="x" * (5 << 20))).encode()), 413),
    ("deep JSON", "POST", "/v1/chat/completions", raw(b'{"model": "tiny", "messages": ' + b"[" * 100_000
                                                      + b"]" * 100_000 + b"}"), 400),
    ("invalid JSON", "POST", "/v1/chat/completions", raw(b'{"model": "tiny", "messages": [}'), 400),
    ("NaN literal", "POST", "/v1/chat/completions", raw(b'{"model": "tiny", "messages": [], "top_p": NaN}'), 400),
    ("non-UTF-8", "POST", "/v1/chat/completions", raw(b'{"model": "\xff\xfe\xfa", "messages": []}'), 400),
    ("a JSON array", "POST", "/v1/chat/completions", raw(b"[1, 2, 3]"), 400),
    ("text/plain", "POST", "/v1/chat/completions", raw(json.dumps(chat()).encode(), {"content-type": "text/plain"}),
     400),
    ("form-encoded", "POST", "/v1/chat/completions", {"data": {"model": "tiny"}}, 400),
    ("no body", "POST", "/v1/chat/completions", {}, 400),
    ("huge stop list", "POST", "/v1/chat/completions", {"json": chat(stop=["a"] * 100_000)}, 400),
    ("n = 17", "POST", "/v1/chat/completions", {"json": chat(n=17)}, 400),
    ("top_logprobs 21", "POST", "/v1/chat/completions", {"json": chat(logprobs=True, top_logprobs=21)}, 400),
    ("logprobs 6", "POST", "/v1/completions", {"json": {"model": "tiny", "prompt": "x", "logprobs": 6}}, 400),
    ("max_tokens 10**100", "POST", "/v1/chat/completions", {"json": chat(max_tokens=10**100)}, 400),
    ("100k-character message", "POST", "/v1/chat/completions",
     {"json": chat(messages=[{"role": "user", "content": "x" * 100_000}])}, 400),
    ("100k-character prompt", "POST", "/v1/completions", {"json": {"model": "tiny", "prompt": "y" * 100_000}}, 400),
    ("100k messages", "POST", "/v1/chat/completions",
     {"json": chat(messages=[{"role": "user", "content": "hi"}] * 100_000)}, 400),
    ("unknown model", "POST", "/v1/chat/completions", {"json": chat(model="no-such-model")}, 404),
    ("path-like model", "POST", "/v1/chat/completions", {"json": chat(model="../../../etc/passwd")}, 404),
    ("path-like model id", "GET", "/v1/models/..%2F..%2F..%2Fetc%2Fpasswd", {}, 404),
    ("path-like file id", "GET", "/v1/files/..%2F..%2Fgraft.db/content", {}, 404),
    ("file id with NUL", "GET", "/v1/files/file-%00abc", {}, 404),
    ("negative limit", "GET", "/v1/files", {"params": {"limit": -1}}, 400),
    ("huge limit", "GET", "/v1/fine_tuning/jobs", {"params": {"limit": 10**30}}, 400),
    ("upload without a file", "POST", "/v1/files", {"data": {"purpose": "fine-tune"}}, 400),
    ("upload of a bad purpose", "POST", "/v1/files", {"files": {"file": ("a.jsonl", b"{}\n")},
                                                      "data": {"purpose": "../../x"}}, 400),
    ("unknown route", "GET", "/v1/../../etc/passwd", {}, 404),
]


@pytest.fixture
def health_probe(live_server):
    """Polls /healthz on its own connection while the test runs; yields the list of (when, status, seconds)."""
    base = live_server.removesuffix("/v1")
    seen, stop = [], threading.Event()

    def poll():
        with httpx.Client(base_url=base, timeout=10) as c:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    status = c.get("/healthz").status_code
                except httpx.HTTPError as e:
                    status = repr(e)
                seen.append((start, status, time.perf_counter() - start))
                time.sleep(0.02)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    yield seen
    stop.set()
    t.join(timeout=15)


def test_hostile_inputs_are_4xx_and_health_keeps_answering(live_server, tiny_model, health_probe):
    base = live_server.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wrong = []
    with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
        assert c.post("/v1/chat/completions", json=chat()).status_code == 200  # the engine is up
        begin = time.perf_counter()
        for name, method, path, kwargs, expected in HOSTILE:
            r = c.request(method, path, **kwargs)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != expected or "error" not in body or not body["error"].get("message"):
                wrong.append(f"{name}: {r.status_code} {r.text[:200]}")
        end = time.perf_counter()
        assert c.post("/v1/chat/completions", json=chat()).status_code == 200  # and still serves
    assert not wrong, "\n".join(wrong)
    time.sleep(0.1)
    during = [(status, seconds) for when, status, seconds in health_probe if begin <= when <= end]
    assert during and all(status == 200 for status, _ in during), during
    print(f"/healthz while hostile inputs ran: {len(during)} polls, slowest {max(s for _, s in during) * 1000:.1f} ms")


def test_path_like_file_names_stay_metadata(http, graft_home):
    r = http.post("/v1/files", files={"file": ("../../../../tmp/evil.jsonl", b'{"text": "x"}\n')},
                  data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    stored = [p for p in (graft_home / "blobs").rglob("*") if p.is_file() and not p.name.startswith(".")]  # not the lock
    assert len(stored) == 1 and stored[0].name != "evil.jsonl"  # content-addressed inside the home
    assert not (graft_home.parent / "tmp" / "evil.jsonl").exists()
