"""The HTTP API over replica processes (GRAFT_REPLICAS=process, the product default): a 2-unit hosting cluster
serves chat streamed and not, n > 1, JSON mode, tools, logprobs and cached prompt tokens; kill -9 of a replica
under 16 concurrent streams answers each with 200 or 503 (never a hang or a 500) and serves again within 10 s;
PATCH unit_count drains a replica without dropping a request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from graftlm.clusters import endpoints


@pytest.fixture
def process_mode(monkeypatch):
    from graftlm.config import reset_settings

    monkeypatch.setenv("GRAFT_REPLICAS", "process")
    reset_settings()


@pytest.fixture
def served(process_mode, lora_hosting_cluster, http):
    from graftlm.clusters import clusters

    cluster = clusters.update_cluster(lora_hosting_cluster["id"], unit_count=2)
    endpoints.create_endpoint("ft:tiny:lora:1", cluster["id"], "bot")
    return cluster


def chat(http, **kw):
    body = {"model": "bot", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8,
            "temperature": 0} | kw
    return http.post("/v1/chat/completions", json=body)


def stream_outcome(base_url, headers, max_tokens) -> int | str:
    """200 when the stream ended with [DONE], 503 for an engine_unavailable status or error event."""
    body = {"model": "bot", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "tell me a story"}]}
    try:
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as c:
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    return r.status_code if r.json()["error"]["code"] == "engine_unavailable" else r.text
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        return 200
                    if line.startswith("data: ") and '"error"' in line:
                        error = json.loads(line[6:])["error"]
                        return 503 if error["code"] == "engine_unavailable" else repr(error)
                return "no [DONE]"
    except httpx.TimeoutException:
        return "hang"


def replica_set(cluster):
    from graftlm.clusters.hosting import get_runtime

    return get_runtime().engines[f"cluster:{cluster['id']}"]


def test_the_api_over_two_replicas(http, served):
    http.timeout = httpx.Timeout(600)  # the first request waits for both replica processes to load
    r = chat(http, logprobs=True, top_logprobs=2)
    assert r.status_code == 200, r.text
    rs = replica_set(served)
    assert type(rs).__name__ == "ReplicaSet" and len(rs.replicas) == 2
    whole = r.json()["choices"][0]
    assert whole["logprobs"]["content"][0]["top_logprobs"]
    with http.stream("POST", "/v1/chat/completions", json={
            "model": "bot", "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "hello there"}],
            "stream_options": {"include_usage": True}}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole["message"]["content"]
    assert events[-1]["usage"]["completion_tokens"] == r.json()["usage"]["completion_tokens"]
    two = chat(http, n=2, temperature=1.0, seed=3)
    assert two.status_code == 200 and len(two.json()["choices"]) == 2
    if pytest.importorskip("xgrammar"):
        schema = {"type": "object", "properties": {"n": {"type": "boolean"}}, "required": ["n"]}
        js = chat(http, max_tokens=60, response_format={"type": "json_schema", "json_schema": {
            "name": "n", "schema": schema, "strict": True}})
        assert js.status_code == 200, js.text
        assert isinstance(json.loads(js.json()["choices"][0]["message"]["content"])["n"], bool)
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]}}, "required": ["city"],
            "additionalProperties": False}}}
        called = chat(http, max_tokens=200, tools=[tool], tool_choice="required")
        assert called.status_code == 200, called.text
        assert called.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    bad = chat(http, logit_bias={"999999": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logit_bias"
    assert http.get("/metrics").status_code in (200, 401)

    # kill -9 of one replica under 16 concurrent streams
    base_url, headers = str(http.base_url), dict(http.headers)
    results: list = [None] * 16

    def one(i):
        results[i] = stream_outcome(base_url, headers, 120)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while not all(x.load for x in rs.replicas) and time.time() < deadline:
        time.sleep(0.05)
    victim = rs.replicas[0]
    os.kill(victim.proc.pid, signal.SIGKILL)
    killed = time.time()
    for t in threads:
        t.join(timeout=200)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert set(results) <= {200, 503}, results
    while chat(http, max_tokens=2).status_code != 200:
        assert time.time() - killed < 10, "not serving 10 s after the kill"
        time.sleep(0.2)
    assert time.time() - killed < 10
    deadline = time.time() + 300
    while sum(x.state == "ready" for x in rs.replicas) < 2:
        assert time.time() < deadline, "the replica count did not recover"
        time.sleep(0.2)

    # PATCH unit_count 2 -> 1 with streams in flight: none dropped, one replica left
    results = [None] * 4
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while sum(x.load for x in rs.replicas) < 4 and time.time() < deadline:
        time.sleep(0.05)
    p = http.patch(f"/v1/dedicated_ai_clusters/{served['id']}", json={"unit_count": 1})
    assert p.status_code == 200 and p.json()["unit_count"] == 1
    for t in threads:
        t.join(timeout=200)
    assert results == [200] * 4
    deadline = time.time() + 30
    while len(rs.replicas) != 1:
        assert time.time() < deadline
        time.sleep(0.1)
    assert chat(http).status_code == 200
    bad = http.patch(f"/v1/dedicated_ai_clusters/{served['id']}", json={"unit_count": 0})
    assert bad.status_code in (400, 422) and "unit_count" in bad.text
