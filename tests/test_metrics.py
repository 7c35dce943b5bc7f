"""GET /metrics: Prometheus text that prometheus_client's own parser reads, behind a key (a metrics-role key
reads nothing else), and counters that move by exactly the requests sent."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from graftlm.clusters import endpoints
from graftlm.keys.service import create_key
from graftlm.store.db import session


@pytest.fixture
def served(lora_hosting_cluster):
    cluster = lora_hosting_cluster
    endpoints.create_endpoint("ft:tiny:lora:1", cluster["id"], "bot")
    return cluster


def scrape(http) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(http, model, **kw):
    return http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 4, "temperature": 0, **kw})


def test_counters_move_by_exactly_the_requests_sent(http, served):
    before = scrape(http)
    ep = {"endpoint": "bot", "model": "ft:tiny:lora:1"}
    prompt = completion = 0
    for _ in range(3):
        r = chat(http, "bot")
        assert r.status_code == 200
        prompt += r.json()["usage"]["prompt_tokens"]
        completion += r.json()["usage"]["completion_tokens"]
    with http.stream("POST", "/v1/chat/completions", json={"model": "bot", "stream": True, "max_tokens": 4,
                                                          "messages": [{"role": "user", "content": "hi"}],
                                                          "stream_options": {"include_usage": True}}) as r:
        lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    completion += lines[-1]["usage"]["completion_tokens"]
    prompt += lines[-1]["usage"]["prompt_tokens"]
    assert chat(http, "tiny").status_code == 200  # a base model named directly: endpoint ""
    assert chat(http, "bot", max_tokens=100000).status_code == 400  # refused after the name was resolved
    assert chat(http, "no-such-model").status_code == 404  # refused before: no endpoint, no model
    after = scrape(http)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("graftlm_requests_total", **ep, status="200") == 4
    assert moved("graftlm_requests_total", **ep, status="400") == 1
    assert moved("graftlm_requests_total", endpoint="", model="tiny", status="200") == 1
    assert moved("graftlm_requests_total", endpoint="", model="", status="404") == 1
    assert moved("graftlm_prompt_tokens_total", **ep) == prompt
    assert moved("graftlm_completion_tokens_total", **ep) == completion
    assert moved("graftlm_e2e_request_latency_seconds_count", **ep) == 4
    assert moved("graftlm_time_to_first_token_seconds_count", **ep) == 4
    assert moved("graftlm_inter_token_latency_seconds_count", **ep) == completion - 4  # gaps between tokens
    # the engine and the store, read at scrape time
    engine = f"cluster:{served['id']}"
    assert value(after, "graftlm_kv_cache_blocks", engine=engine) > 0
    assert value(after, "graftlm_kv_cache_blocks_used", engine=engine) == 0  # nothing runs between requests
    assert ("graftlm_prefix_cache_query_tokens_total", frozenset({("engine", engine)})) in after
    assert value(after, "graftlm_engine_queue_depth", engine=engine) == 0
    assert value(after, "graftlm_adapter_loads_total", engine=engine) == 1
    assert value(after, "graftlm_cluster_units", cluster="prod", type="HOSTING") == 1
    assert value(after, "graftlm_endpoints", state="ACTIVE") == 1


def test_metrics_needs_a_key_and_a_metrics_key_reads_nothing_else(live_server, tiny_model):
    base = live_server.removesuffix("/v1")
    assert httpx.get(f"{base}/metrics").status_code == 401
    secret, _ = create_key("prometheus", role="metrics")
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{base}/metrics", headers=headers).status_code == 200
    r = httpx.get(f"{base}/v1/models", headers=headers)
    assert r.status_code == 403 and "viewer" in r.json()["error"]["message"]
    viewer, _ = create_key("grafana", role="viewer")
    assert httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200


def test_jobs_by_state(http, tiny_model):
    from graftlm.store.models import FineTuningJob

    with session() as s:
        for i, status in enumerate(("succeeded", "succeeded", "failed")):  # states the scheduler leaves alone
            s.add(FineTuningJob(id=f"ftjob-{i}", model="tiny", training_file="file-x", status=status, config={}))
    samples = scrape(http)
    assert value(samples, "graftlm_fine_tuning_jobs", status="succeeded") == 2
    assert value(samples, "graftlm_fine_tuning_jobs", status="failed") == 1


def test_the_grafana_dashboard_queries_metrics_that_exist(tiny_model):
    import re

    from graftlm.observe import metrics

    dashboard = json.loads((Path(__file__).parent.parent / "examples/grafana/graftlm.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"graftlm_[a-z0-9_]+", " ".join(exprs)))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exposed = {family.name + suffix for family in text_string_to_metric_families(metrics.render().decode())
               for suffix in suffixes[family.type]}  # every family is exposed, with or without samples
    assert len(used) >= 15 and used <= exposed, used - exposed
