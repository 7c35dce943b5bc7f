"""Request logs per endpoint (off by default), the retention sweep, feedback on a completion id."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from graftlm.clusters import endpoints
from graftlm.observe import logs
from graftlm.store import blobs
from graftlm.store.db import session
from graftlm.store.models import RequestLog


@pytest.fixture
def served(lora_hosting_cluster):
    cluster = lora_hosting_cluster
    quiet = endpoints.create_endpoint("ft:tiny:lora:1", cluster["id"], "quiet")
    assert quiet["log_requests"] is False  # off by default
    logged = endpoints.create_endpoint("tiny", cluster["id"], "logged", log_requests=True, log_retention_days=7)
    return {"quiet": quiet, "logged": logged}


def chat(http, model, content="hi there", **kw):
    r = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                "max_tokens": 4, "temperature": 0, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def count_rows() -> int:
    with session() as s:
        return s.scalar(select(func.count()).select_from(RequestLog))


def test_logs_off_stores_nothing(http, served):
    for _ in range(3):
        chat(http, "quiet")
    logs.flush()
    assert count_rows() == 0
    assert not (logs.log_blobs_dir()).exists() or not any(logs.log_blobs_dir().rglob("*"))
    assert http.get(f"/v1/endpoints/{served['quiet']['id']}/logs").json()["data"] == []


def test_each_completion_is_logged_under_its_id_and_pages(http, served):
    ids = [chat(http, "logged", content=f"question {i}")["id"] for i in range(3)]
    with http.stream("POST", "/v1/chat/completions", json={"model": "logged", "stream": True, "max_tokens": 4,
                                                          "messages": [{"role": "user", "content": "streamed"}]}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    ids.append(chunks[0]["id"])
    streamed_text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    text = http.post("/v1/completions", json={"model": "logged", "prompt": "once upon", "max_tokens": 3}).json()
    ids.append(text["id"])

    page = http.get("/v1/endpoints/logged/logs", params={"limit": 2}).json()  # by name too
    assert [r["id"] for r in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = http.get(f"/v1/endpoints/{served['logged']['id']}/logs", params={"after": page["data"][-1]["id"]}).json()
    assert [r["id"] for r in page["data"] + rest["data"]] == ids[::-1] and not rest["has_more"]
    rows = {r["id"]: r for r in page["data"] + rest["data"]}
    s = rows[ids[3]]
    assert s["request"] == {"messages": [{"role": "user", "content": "streamed"}]}
    assert s["response"]["choices"][0]["text"] == streamed_text
    assert s["usage"]["completion_tokens"] >= 1 and s["latency_ms"] > 0 and s["model"] == "tiny"
    assert rows[ids[4]]["kind"] == "text" and rows[ids[4]]["request"] == {"prompt": "once upon"}
    assert rows[ids[4]]["response"]["choices"][0]["text"] == text["choices"][0]["text"]
    first = chat(http, "logged", content="question 0")  # the same prompt again: the same prompt hash
    logs.flush()
    with session() as s:
        hashes = {r.id: r.prompt_sha256 for r in s.scalars(select(RequestLog))}
    assert hashes[first["id"]] == hashes[ids[0]] != hashes[ids[1]]
    bad = http.get("/v1/endpoints/logged/logs", params={"limit": 1000})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_large_bodies_go_to_the_blob_store(http, served, monkeypatch):
    monkeypatch.setattr(logs, "BODY_INLINE_BYTES", 300)  # the tiny model's context is short
    long = "word " * 80
    rid = chat(http, "logged", content=long)["id"]
    logs.flush()
    with session() as s:
        row = s.get(RequestLog, rid)
        assert row.body is None and row.body_sha256
        assert blobs.blob_path(logs.log_blobs_dir(), row.body_sha256).exists()
    (listed,) = http.get("/v1/endpoints/logged/logs").json()["data"]
    assert listed["request"]["messages"][0]["content"] == long


def feedback_total(http, **labels) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "graftlm_feedback_total" and sample.labels == labels:
                return sample.value
    return 0.0


def test_feedback_attaches_to_the_log_row(http, served):
    good, bad = chat(http, "logged", content="a")["id"], chat(http, "logged", content="b")["id"]
    before = feedback_total(http, endpoint="logged", scale="thumbs", rating="-1")
    r = http.post("/v1/feedback", json={"completion_id": bad, "rating": -1, "correction": "the right answer",
                                        "comment": "wrong intent"})
    assert r.status_code == 200, r.text
    assert r.json()["rating"] == -1 and r.json()["score"] == 1.0
    assert http.post("/v1/feedback", json={"completion_id": good, "rating": 5}).json()["score"] == 5.0
    assert feedback_total(http, endpoint="logged", scale="thumbs", rating="-1") == before + 1
    rows = {r["id"]: r for r in http.get("/v1/endpoints/logged/logs").json()["data"]}
    assert rows[bad]["feedback"]["correction"] == "the right answer"
    assert rows[bad]["feedback"]["comment"] == "wrong intent"
    assert rows[good]["feedback"]["rating"] == 5
    rated_low = http.get("/v1/endpoints/logged/logs", params={"max_rating": 2}).json()["data"]
    assert [r["id"] for r in rated_low] == [bad]
    unrated = chat(http, "logged", content="c")["id"]
    assert [r["id"] for r in http.get("/v1/endpoints/logged/logs",
                                      params={"has_feedback": "false"}).json()["data"]] == [unrated]
    # errors name the field
    for body, param in (({"completion_id": "chatcmpl-nope", "rating": 1}, "completion_id"),
                        ({"completion_id": good, "rating": 0}, "rating"),
                        ({"completion_id": good, "rating": 9}, "rating"),
                        ({"completion_id": good, "rating": -1, "scale": "stars"}, "rating"),
                        ({"completion_id": good, "rating": 1, "stars": 3}, "stars")):
        r = http.post("/v1/feedback", json=body)
        assert 400 <= r.status_code < 500 and r.json()["error"]["param"] == param, (body, r.text)


def test_feedback_on_a_completion_of_an_endpoint_that_does_not_log_is_404(http, served):
    rid = chat(http, "quiet")["id"]
    r = http.post("/v1/feedback", json={"completion_id": rid, "rating": 1})
    assert r.status_code == 404 and "log_requests" in r.json()["error"]["message"]


def entry(i: int, endpoint: dict, created_at: int, content: str) -> dict:
    return {"id": f"chatcmpl-{i}", "endpoint_id": endpoint["id"], "endpoint_name": endpoint["name"],
            "model": endpoint["model"], "kind": "chat", "status": 200, "prompt_tokens": 3, "completion_tokens": 2,
            "latency_ms": 5.0, "created_at": created_at, "created_ns": created_at * 10**9 + i, "request": {"messages": [{"role": "user", "content": content}]},
            "response": {"choices": [{"index": 0, "text": "ok"}]}}


def test_retention_sweep_deletes_exactly_the_expired_rows_and_blobs(served):
    from graftlm.config import get_settings

    week, month = served["logged"], served["quiet"]  # retention 7 days, and the default 30
    at = 1_900_000_000
    day = 86_400
    big = "x" * 10_000  # over the inline limit: a blob
    extra = {"_db": get_settings().db_url, "_blobs": str(logs.log_blobs_dir())}
    rows = [entry(1, week, at - 8 * day, "small, expired"),
            entry(2, week, at - 8 * day, big + "expired alone"),
            entry(3, week, at - 8 * day, big + "shared"),    # expired, but its blob is also row 4's
            entry(4, week, at - 1 * day, big + "shared"),
            entry(5, week, at - 6 * day, "kept"),
            entry(6, month, at - 8 * day, big + "kept by 30 days"),
            entry(7, month, at - 31 * day, big + "expired at 30 days")]
    logs.write_rows([r | extra for r in rows])
    with session() as s:
        sha = {r.id: r.body_sha256 for r in s.scalars(select(RequestLog))}
    assert sha["chatcmpl-3"] == sha["chatcmpl-4"] and sha["chatcmpl-1"] is None
    result = logs.sweep(at)
    with session() as s:
        left = set(s.scalars(select(RequestLog.id)))
    assert left == {"chatcmpl-4", "chatcmpl-5", "chatcmpl-6"}
    assert result == {"deleted_rows": 4, "deleted_blobs": 2}
    on_disk = {p.name for p in logs.log_blobs_dir().rglob("*") if p.is_file()}
    assert on_disk == {sha["chatcmpl-4"], sha["chatcmpl-6"]}
    assert logs.sweep(at) == {"deleted_rows": 0, "deleted_blobs": 0}


def test_endpoint_settings_and_cli(http, served, tmp_path):
    from typer.testing import CliRunner

    from graftlm.cli import app

    r = http.patch(f"/v1/endpoints/{served['quiet']['id']}", json={"log_requests": True, "log_retention_days": 3})
    assert r.status_code == 200 and r.json()["log_requests"] and r.json()["log_retention_days"] == 3
    bad = http.patch(f"/v1/endpoints/{served['quiet']['id']}", json={"log_retention_days": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "log_retention_days"
    rid = chat(http, "quiet", content="from the cli")["id"]
    logs.flush()
    out = CliRunner().invoke(app, ["endpoints", "logs", "quiet"])
    assert out.exit_code == 0, out.output
    assert rid[:20] in out.output and "from the cli" in out.output
    out = CliRunner().invoke(app, ["endpoints", "logs", "quiet", "--json", "--since", "1h"])
    assert [r["id"] for r in json.loads(out.output)["data"]] == [rid]
    out = CliRunner().invoke(app, ["endpoints", "update", "quiet", "--no-log-requests"])
    assert out.exit_code == 0 and json.loads(out.output)["log_requests"] is False
    out = CliRunner().invoke(app, ["endpoints", "logs", "quiet", "--since", "yesterday-ish"])
    assert out.exit_code == 2 and "since" in out.output
