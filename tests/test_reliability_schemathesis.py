"""Schemathesis against the app's own OpenAPI schema, over HTTP with a real key: every operation, with
generated values and again with the ids of real resources (file, clusters, endpoint, job, knowledge base)
and the tiny model, so that more than 404s are exercised. No input may get a 5xx.

Bounded: a fixed number of examples per operation, no shrinking, no example database; about a minute."""

from __future__ import annotations

import collections
import io
import json

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from tests.conftest import ADMIN_KEY  # noqa: E402

EXAMPLES = 12
CHAT_EXAMPLES = 30  # the routes that run the engine get more
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def resources(http, tiny_model):
    """Real ids to put in generated requests."""
    from graftlm.clusters import clusters, endpoints
    from graftlm.files import service as files
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob

    line = json.dumps({"prompt": "what is 2 + 2", "completion": "4"}).encode() + b"\n"
    file = files.create_file(io.BytesIO(line * 20), "train.jsonl", "fine-tune")
    files.validate_stored_file(file["id"])
    hosting = clusters.create_cluster("HOSTING", base_model="tiny", name="h")
    tuning = clusters.create_cluster("FINE_TUNING", name="f")
    endpoint = endpoints.create_endpoint("tiny", hosting["id"], "ep")
    with session() as s:  # a finished job: actions on it are answered without starting a worker
        s.add(FineTuningJob(id="ftjob-fuzz", model="tiny", training_file=file["id"], status="succeeded",
                            config={"training_method": "lora"}))
    kb = http.post("/v1/knowledge_bases", json={"name": "kb"}).json()
    return {"file_id": file["id"], "cluster_id": hosting["id"], "endpoint_id": endpoint["id"],
            "job_id": "ftjob-fuzz", "kb_id": kb["id"], "model_id": "tiny", "doc_id": "d1",
            "_tuning": tuning["id"]}


def with_real_ids(case, ids: dict) -> bool:
    """Put real ids into the case's path and, for the engine routes, the tiny model with few tokens."""
    changed = False
    for name in list(case.path_parameters or {}):
        if name in ids:
            case.path_parameters[name] = ids[name]
            changed = True
    body = case.body
    if isinstance(body, dict) and case.path in ("/v1/chat/completions", "/v1/completions"):
        body["model"] = "tiny"
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and body[key] > 8:
                body[key] = 8
        body.setdefault("max_tokens", 4)
        changed = True
    return changed


def test_no_generated_request_gets_a_5xx(live_server, resources):
    base = live_server.removesuffix("/v1")
    schema = schemathesis.openapi.from_url(base + "/openapi.json", headers=AUTH)
    operations = [r.ok() for r in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: the real ids live until then
    assert len(operations) >= 40
    failures, calls, statuses, per_route = [], 0, set(), {}

    def check(case, response):
        nonlocal calls
        calls += 1
        statuses.add(response.status_code)
        per_route.setdefault(case.path, []).append(response.status_code)
        if response.status_code >= 500 or '"server_error"' in response.text:  # a stream's error event too
            failures.append(f"{case.method} {case.formatted_path} query={case.query!r:.200} body={case.body!r:.300} -> "
                            f"{response.status_code} {response.text[:300]}")

    for op in operations:
        engine = op.path in ("/v1/chat/completions", "/v1/completions")
        settings = hypothesis.settings(max_examples=CHAT_EXAMPLES if engine else EXAMPLES, deadline=None,
                                       database=None, derandomize=True,
                                       phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                                       suppress_health_check=list(hypothesis.HealthCheck))

        @settings
        @hypothesis.given(case=op.as_strategy())
        def run(case):
            check(case, case.call(base_url=base, headers=AUTH, timeout=60))
            if with_real_ids(case, resources):
                check(case, case.call(base_url=base, headers=AUTH, timeout=60))

        run()
    for path, codes in per_route.items():  # shown with -s: what each route answered
        print(path, dict(collections.Counter(codes)))
    assert not failures, "\n".join(failures[:20])
    assert calls > 500 and 200 in statuses and 400 in statuses and 404 in statuses
    assert 200 in per_route["/v1/chat/completions"] and 200 in per_route["/v1/completions"]  # the engine ran
    assert http_ok(base)


def http_ok(base: str) -> bool:
    import httpx

    return httpx.get(base + "/healthz", timeout=10).status_code == 200
