"""Projects, keys with roles per project, the audit log and quotas.

The isolation and role matrices are generated from the app's OpenAPI route list: a route added later is
covered without editing this file (a new route whose path names no resource, and that reads or creates, fails
the matrix until COLLECTION_BODIES says what it should be sent)."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from tests.conftest import ADMIN_KEY

ROLES = ("metrics", "viewer", "editor", "admin")
DOCS = [{"id": "secret-plan", "text": "Team A launches the falcon model on Tuesday.", "metadata": {}}]


def bearer(key: str, project: str | None = None) -> dict:
    h = {"Authorization": f"Bearer {key}"}
    return h | ({"OpenAI-Project": project} if project else {})


@pytest.fixture
def app(graft_home):
    from graftlm.api.app import create_app

    return create_app(run_scheduler=False)


@pytest.fixture
def api(app):
    with TestClient(app) as c:
        yield c


def make_project(api, name: str, **fields) -> dict[str, str]:
    """A project and one key per role; returns role -> secret."""
    r = api.post("/v1/projects", json={"name": name, **fields}, headers=bearer(ADMIN_KEY))
    assert r.status_code == 200, r.text
    keys = {}
    for role in ROLES:
        r = api.post(f"/v1/projects/{name}/keys", json={"name": role, "role": role}, headers=bearer(ADMIN_KEY))
        assert r.status_code == 200, r.text
        keys[role] = r.json()["key"]
    return keys


@pytest.fixture
def team_a(api, tiny_model, tmp_path):
    """Project team-a holding one of every resource kind; returns {param name: id} and its keys."""
    from graftlm.clusters import clusters
    from graftlm.evals import store as eval_store
    from graftlm.store import scope
    from graftlm.store.db import session
    from graftlm.store.models import (Endpoint, FineTuningJob, JobCheckpoint, JobEvent, Model, RequestLog,
                                      UsageRecord, new_id)

    keys = make_project(api, "team-a")
    h = bearer(keys["editor"])
    f = api.post("/v1/files", files={"file": ("plan.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
                 data={"purpose": "fine-tune"}, headers=h).json()
    kb = api.post("/v1/knowledge_bases", json={"name": "team-a-kb", "chunk_size": 64, "chunk_overlap": 8},
                  headers=h).json()
    ing = api.post(f"/v1/knowledge_bases/{kb['id']}/documents?wait=true", json={"documents": DOCS}, headers=h).json()
    assert ing["status"] == "succeeded", ing
    cluster = api.post("/v1/dedicated_ai_clusters", json={"type": "HOSTING", "base_model": "tiny", "name": "a-prod"},
                       headers=h).json()
    with scope.acting_in("team-a"), session() as s:
        job = FineTuningJob(id=new_id("ftjob"), model="tiny", training_file=f["id"], status="succeeded", config={},
                            dedicated_ai_cluster_id=clusters.ensure_default_fine_tuning_cluster())
        s.add(job)
        s.flush()
        s.add(JobEvent(id=new_id("ftevent"), job_id=job.id, message="team-a secret event"))
        s.add(JobCheckpoint(id=new_id("ftckpt"), job_id=job.id, step_number=1, metrics={}, path=str(tmp_path)))
        model = f"ft:tiny:falcon:{job.id}"
        s.add(Model(id=model, kind="custom", parent="tiny", path=str(tmp_path), adapter_type="lora"))
        s.flush()
        ep = Endpoint(id=new_id("ep"), name="falcon-bot", model=model, dedicated_ai_cluster_id=cluster["id"],
                      lifecycle_state="ACTIVE", log_requests=True)
        s.add(ep)
        s.flush()
        s.add(RequestLog(id="chatcmpl-teama", endpoint_id=ep.id, endpoint_name=ep.name, model=model, kind="chat",
                         status=200, prompt_tokens=1, completion_tokens=1, latency_ms=1.0, prompt_sha256="x",
                         body={"request": {"messages": [{"role": "user", "content": "falcon launch"}]}},
                         body_bytes=10, created_at=int(time.time()), created_ns=time.time_ns()))
        s.add(UsageRecord(cluster_id=clusters.DEFAULT_FT_CLUSTER, kind="FINE_TUNING", job_id=job.id, unit_count=1,
                          minimum_unit_hours=1.0, started_at=time.time() - 60, project_id="team-a"))
        job_id, ep_id, ep_name = job.id, ep.id, ep.name
    with scope.acting_in("team-a"):
        data = tmp_path / "eval.jsonl"
        data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
        ev = eval_store.create_eval("team-a-eval", data, ["label_accuracy"])
        eval_store.save_run(ev["id"], {"id": "evalrun-teama", "model": model, "aggregates": {}, "results": []})
        eval_id = ev["id"]
    key_id = next(k["id"] for k in api.get("/v1/projects/team-a/keys", headers=bearer(ADMIN_KEY)).json()["data"]
                  if k["role"] == "viewer")
    ids = {"file_id": f["id"], "kb_id": kb["id"], "doc_id": "secret-plan", "cluster_id": cluster["id"],
           "endpoint_id": ep_id, "model_id": model, "eval_id": eval_id, "run_id": "evalrun-teama",
           "project_id": "team-a", "key_id": key_id, "action": "cancel", "completion_id": "chatcmpl-teama"}
    # /knowledge_bases/{kb_id}/ingestions/{job_id} names the ingestion; /fine_tuning/jobs/{job_id} the job
    return {"ids": ids, "job_id": job_id, "ingestion_id": ing["id"], "endpoint_name": ep_name, "keys": keys}


# a body valid enough to reach the resource lookup (an invalid one is a 400 before it, which proves nothing)
PATH_BODIES = {("POST", "/v1/knowledge_bases/{kb_id}/search"): {"query": "falcon"},
               ("POST", "/v1/evals/{eval_id}/runs"): {"model": "tiny"}}


def fill(path: str, ids: dict, a: dict) -> str:
    def one(m):
        name = m.group(1).split(":")[0]
        if name == "job_id":
            return a["ingestion_id"] if "/ingestions/" in path else a["job_id"]
        return ids[name]
    return re.sub(r"\{([^}]+)\}", one, path)


def routes(app) -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, ops in app.openapi()["paths"].items() if p.startswith("/v1/") for m in ops]


# What a route without path parameters is sent to try to reach team-a's resources; a new such route fails the
# matrix until it is listed here (None: nothing to name, only its answer is checked for team-a's ids).
def collection_bodies(a: dict) -> dict[tuple[str, str], dict | None]:
    ids = a["ids"]
    chat = {"model": a["endpoint_name"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return {
        ("POST", "/v1/files"): None, ("GET", "/v1/files"): None, ("GET", "/v1/models"): None,
        ("POST", "/v1/dedicated_ai_clusters"): None, ("GET", "/v1/dedicated_ai_clusters"): None,
        ("POST", "/v1/endpoints"): {"model": ids["model_id"], "dedicated_ai_cluster_id": ids["cluster_id"]},
        ("GET", "/v1/endpoints"): None, ("GET", "/v1/usage"): None,
        ("POST", "/v1/fine_tuning/jobs"): {"model": "tiny", "training_file": ids["file_id"]},
        ("GET", "/v1/fine_tuning/jobs"): None, ("GET", "/v1/fine_tuning/schema"): None,
        ("POST", "/v1/chat/completions"): chat,
        ("POST", "/v1/completions"): {"model": ids["model_id"], "prompt": "hi", "max_tokens": 2},
        ("GET", "/v1/knowledge_bases"): None, ("POST", "/v1/knowledge_bases"): None,
        ("POST", "/v1/embeddings"): None, ("GET", "/v1/evals"): None, ("POST", "/v1/evals"): None,
        ("GET", "/v1/console/whoami"): None, ("GET", "/v1/console/models"): None,
        ("GET", "/v1/console/finetune_form"): None,
        ("POST", "/v1/feedback"): {"completion_id": ids["completion_id"], "rating": 1},
        ("GET", "/v1/projects"): None, ("POST", "/v1/projects"): None, ("GET", "/v1/audit_events"): None,
    }


def secrets_of(a: dict) -> list[str]:
    """Strings only team-a's rows hold: none may appear in anything another project is answered."""
    ids = a["ids"]
    return [ids["file_id"], ids["kb_id"], ids["cluster_id"], ids["endpoint_id"], ids["model_id"], ids["eval_id"],
            a["job_id"], a["ingestion_id"], "falcon", "team-a-kb", "secret-plan", "chatcmpl-teama", ids["key_id"]]


def test_isolation_matrix_project_b_never_reaches_project_a(app, api, team_a):
    from graftlm.api.auth import required_role

    b = make_project(api, "team-b")
    hb = bearer(b["admin"])  # the strongest key of team-b
    bodies = collection_bodies(team_a)
    leaks, checked = [], 0
    for method, path in routes(app):
        if "{" in path:
            url = fill(path, team_a["ids"], team_a)
            r = api.request(method, url, headers=hb, json=PATH_BODIES.get((method, path), {}) if method != "GET" else None)
            needs_instance_admin = required_role(method, path) == "instance_admin"
            if r.status_code != (403 if needs_instance_admin else 404):
                leaks.append((method, path, r.status_code, r.text[:200]))
        else:
            assert (method, path) in bodies, f"new route {method} {path}: say in collection_bodies what it is sent"
            body = bodies[(method, path)]
            if method == "GET":
                r = api.get(path, headers=hb)
            elif path == "/v1/files":
                r = api.post(path, files={"file": ("b.jsonl", b'{"prompt": "x", "completion": "y"}\n')},
                             data={"purpose": "fine-tune"}, headers=hb)
            else:
                r = api.request(method, path, headers=hb, json=body if body is not None else {})
            if body is not None and r.status_code != 404:
                leaks.append((method, path, r.status_code, r.text[:200]))
        checked += 1
        assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
        sent = str(r.request.url) + r.request.content.decode(errors="replace")  # echoed in a 404 is no leak
        found = [s for s in secrets_of(team_a) if s in r.text and not any(s in x or x in s for x in [sent])]
        if found and (method, path) not in {("GET", "/v1/audit_events")}:
            leaks.append((method, path, "leaks", found))
    assert checked >= 60 and leaks == [], "\n".join(map(str, leaks))
    # team-b's audit trail holds its own events only
    events = api.get("/v1/audit_events?limit=1000", headers=hb).json()["data"]
    assert events and {e["project"] for e in events} == {"team-b"}
    # search of A's knowledge base by name, grounded chat on it, the openai client with the key alone
    assert api.post("/v1/knowledge_bases/team-a-kb/search", json={"query": "falcon"}, headers=hb).status_code == 404
    r = api.post("/v1/chat/completions", headers=hb, json={"model": "tiny", "max_tokens": 2, "knowledge_base_id":
                 team_a["ids"]["kb_id"], "messages": [{"role": "user", "content": "falcon?"}]})
    assert r.status_code == 404 and "falcon" not in r.text.replace(team_a["ids"]["kb_id"], ""), r.text
    # /metrics (outside /v1 and the schema): another project's endpoint, model, cluster and job labels are cut
    from graftlm.observe import metrics

    metrics.record_request(team_a["endpoint_name"], team_a["ids"]["model_id"], 200)
    text_b = api.get("/metrics", headers=bearer(b["metrics"])).text
    assert "graftlm_" in text_b and not [x for x in secrets_of(team_a) + ["a-prod"] if x in text_b]
    assert "falcon-bot" in api.get("/metrics", headers=bearer(team_a["keys"]["metrics"])).text
    # the same routes reach the resources with team-a's own keys: the 404s above are not vacuous
    ha = bearer(team_a["keys"]["viewer"])
    for path in ("/v1/files/{file_id}", "/v1/models/{model_id}", "/v1/dedicated_ai_clusters/{cluster_id}",
                 "/v1/endpoints/{endpoint_id}", "/v1/knowledge_bases/{kb_id}", "/v1/evals/{eval_id}/runs/{run_id}",
                 "/v1/fine_tuning/jobs/{job_id}/events", "/v1/endpoints/{endpoint_id}/logs",
                 "/v1/knowledge_bases/{kb_id}/ingestions/{job_id}"):
        r = api.get(fill(path, team_a["ids"], team_a), headers=ha)
        assert r.status_code == 200, (path, r.text)
    usage = {u["dedicated_ai_cluster_id"]: u for u in api.get("/v1/usage", headers=ha).json()["data"]}
    assert usage["dac-local-fine-tuning"]["jobs"] == 1 and team_a["ids"]["cluster_id"] in usage
    assert "dac-local-fine-tuning" not in api.get("/v1/usage", headers=hb).text  # A's job span is A's
    assert "secret-plan" in api.post(f"/v1/knowledge_bases/{team_a['ids']['kb_id']}/search",
                                     json={"query": "falcon"}, headers=ha).text


def test_openai_client_with_project_header_or_the_key_alone(live_server, tiny_model):
    from openai import NotFoundError, OpenAI, PermissionDeniedError

    from graftlm.keys.projects import create_project
    from graftlm.keys.service import create_key

    create_project("team-a")
    create_project("team-b")
    a_key, _ = create_key("a", role="editor", project="team-a")
    a = OpenAI(base_url=live_server, api_key=a_key, max_retries=0)
    f = a.files.create(file=("x.jsonl", b'{"prompt": "p", "completion": "c"}\n'), purpose="fine-tune")
    admin_in_a = OpenAI(base_url=live_server, api_key=ADMIN_KEY, project="team-a", max_retries=0)
    admin_in_b = OpenAI(base_url=live_server, api_key=ADMIN_KEY, project="team-b", max_retries=0)
    assert [x.id for x in admin_in_a.files.list()] == [f.id]
    assert list(admin_in_b.files.list()) == []
    with pytest.raises(NotFoundError):
        admin_in_b.files.retrieve(f.id)
    with pytest.raises(PermissionDeniedError):  # a project key naming another project
        OpenAI(base_url=live_server, api_key=a_key, project="team-b", max_retries=0).files.list()
    assert [x.id for x in OpenAI(base_url=live_server, api_key=a_key, project="team-a",
                                 max_retries=0).files.list()] == [f.id]


def test_each_role_gets_exactly_its_verbs(app, api, graft_home):
    """For every route and every role, on ids that exist nowhere: 403 naming the role exactly when the role is
    below the route's (the check comes before any lookup, so a 403 says nothing about existence)."""
    from graftlm.api.auth import INSTANCE_ADMIN, has_role, required_role

    keys = make_project(api, "team-a")
    keys["instance admin"] = ADMIN_KEY
    wrong = []
    for method, path in routes(app):
        url = re.sub(r"\{[^}]+\}", "nope", path)
        if path.startswith("/v1/projects/{project_id}"):
            url = url.replace("/projects/nope", "/projects/team-a", 1)  # its own project (another's is a 404)
        needed = required_role(method, path)
        for role, key in keys.items():
            identity = {"role": "admin" if role == "instance admin" else role,
                        "instance_admin": role == "instance admin"}
            allowed = has_role(identity, needed)
            if method in ("DELETE", "PATCH") and path == "/v1/projects/{project_id}" and allowed:
                continue  # would really delete or change team-a: the instance admin's verbs are tested below
            r = api.request(method, url, headers=bearer(key), json={} if method != "GET" else None)
            if allowed == (r.status_code == 403):
                wrong.append((role, method, path, needed, r.status_code))
            if r.status_code == 403 and r.json()["error"]["code"] == "permission_denied":
                assert (f"{needed} role" if needed != INSTANCE_ADMIN else "instance admin key") in \
                    r.json()["error"]["message"]
    assert wrong == []
    r = api.get("/metrics", headers=bearer(keys["metrics"]))
    assert r.status_code == 200
    assert api.get("/v1/files", headers=bearer(keys["metrics"])).status_code == 403


def test_audit_completeness_one_event_per_mutating_request(app, api, graft_home):
    """Every mutating route (the policy says which), called once, adds exactly one event with its action, the
    key, the project, the outcome of its status; a denied call of any route adds one too. No secrets, no
    bodies. The table refuses UPDATE and DELETE."""
    from graftlm.api.auth import policy
    from graftlm.store.db import get_engine

    keys = make_project(api, "team-a")
    key_ids = {k["role"]: k["id"] for k in api.get("/v1/projects/team-a/keys", headers=bearer(ADMIN_KEY)).json()["data"]}

    def events() -> list[dict]:
        return api.get("/v1/audit_events?limit=1000", headers=bearer(ADMIN_KEY)).json()["data"]

    checked = 0
    for method, path in routes(app):
        rule = policy(method, path)
        url = re.sub(r"\{[^}]+\}", "nope", path).replace("/projects/nope", "/projects/team-a", 1)
        if method in ("DELETE", "PATCH") and path == "/v1/projects/{project_id}":
            url = url.replace("team-a", "nope")
        for role in ("admin", "viewer"):
            before = events()
            r = api.request(method, url, headers=bearer(keys[role]), json={"name": "x"} if method != "GET" else None)
            new = [e for e in events() if e["id"] not in {b["id"] for b in before}]
            expect = rule.mutating or r.status_code in (401, 403)
            if not expect:
                assert new == [], (method, path, role, new)
                continue
            assert len(new) == 1, (method, path, role, r.status_code, new)
            e = new[0]
            outcome = "denied" if r.status_code in (401, 403) else "allowed" if r.status_code < 400 else "failed"
            assert (e["action"], e["status"], e["outcome"], e["key_id"], e["project"], e["role"]) == \
                (f"{method} {path}", r.status_code, outcome, key_ids[role], "team-a", role), (e, r.text)
            assert e["client"] and e["created_at"] > 0
            checked += 1
    assert checked >= 25
    # a created key's secret, and the bodies sent, are never in the log
    secret = api.post("/v1/projects/team-a/keys", json={"name": "ci-bot", "role": "viewer"},
                      headers=bearer(keys["admin"])).json()["key"]
    dump = api.get("/v1/audit_events?limit=1000", headers=bearer(ADMIN_KEY)).text
    assert secret not in dump and keys["admin"] not in dump and "ci-bot" not in dump
    assert events()[0]["action"] == "POST /v1/projects/{project_id}/keys" and events()[0]["resource_id"]
    # filters and paging
    page = api.get("/v1/audit_events", params={"limit": 2, "project": "team-a", "outcome": "denied"},
                   headers=bearer(ADMIN_KEY)).json()
    assert len(page["data"]) == 2 and page["has_more"] and all(e["outcome"] == "denied" for e in page["data"])
    nxt = api.get("/v1/audit_events", params={"limit": 2, "after": page["data"][-1]["id"], "project": "team-a",
                                              "outcome": "denied"}, headers=bearer(ADMIN_KEY)).json()
    assert nxt["data"][0]["created_at"] <= page["data"][-1]["created_at"]
    assert not {e["id"] for e in nxt["data"]} & {e["id"] for e in page["data"]}
    mine = api.get("/v1/audit_events", params={"key_id": key_ids["viewer"]}, headers=bearer(keys["admin"])).json()
    assert mine["data"] and {e["key_id"] for e in mine["data"]} == {key_ids["viewer"]}
    assert api.get("/v1/audit_events", params={"project": "default"}, headers=bearer(keys["admin"])).status_code == 404
    with get_engine().begin() as conn:
        for sql in ("UPDATE audit_events SET outcome = 'allowed'", "DELETE FROM audit_events"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(text(sql))


def test_expired_and_revoked_keys_are_refused(api, graft_home):
    from graftlm.keys.service import create_key
    from graftlm.store.db import session
    from graftlm.store.models import ApiKey

    keys = make_project(api, "team-a")
    secret, record = create_key("soon", role="viewer", project="team-a", expires_at=int(time.time()) + 3600)
    assert api.get("/v1/files", headers=bearer(secret)).status_code == 200
    with session() as s:  # an hour later
        s.get(ApiKey, record["id"]).expires_at = int(time.time()) - 1
    r = api.get("/v1/files", headers=bearer(secret))
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
    r = api.post("/v1/projects/team-a/keys", json={"role": "viewer", "expires_at": 5}, headers=bearer(keys["admin"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires_at"
    kid = next(k["id"] for k in api.get("/v1/projects/team-a/keys", headers=bearer(keys["admin"])).json()["data"]
               if k["role"] == "editor")
    assert api.delete(f"/v1/projects/team-a/keys/{kid}", headers=bearer(keys["admin"])).status_code == 200
    assert api.get("/v1/files", headers=bearer(keys["editor"])).status_code == 401


def test_projects_lifecycle_and_quotas(api, tiny_model, graft_home):
    keys = make_project(api, "team-a", max_clusters=1, max_units=2, max_file_bytes=100)
    h = bearer(keys["editor"])
    r = api.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING", "unit_count": 3}, headers=h)
    assert r.status_code == 403 and r.json()["error"]["param"] == "max_units", r.text
    c = api.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING", "unit_count": 2}, headers=h)
    assert c.status_code == 200
    r = api.post("/v1/dedicated_ai_clusters", json={"type": "FINE_TUNING", "unit_count": 1}, headers=h)
    assert r.status_code == 403 and r.json()["error"]["param"] == "max_clusters"
    assert "max_clusters" in r.json()["error"]["message"]
    up = lambda n: api.post("/v1/files", files={"file": ("f.jsonl", b"x" * n)}, data={"purpose": "rag"}, headers=h)
    assert up(60).status_code == 200
    r = up(60)
    assert r.status_code == 403 and r.json()["error"]["param"] == "max_file_bytes"
    assert len(api.get("/v1/files", headers=h).json()["data"]) == 1  # the refused upload left no file
    # the shared local fine-tuning cluster and base models are visible read-only
    assert api.get("/v1/models/tiny", headers=h).status_code == 200
    # the instance admin raises a quota; deleting a project that holds things is refused, then allowed
    r = api.patch("/v1/projects/team-a", json={"max_clusters": None, "data_policy": "redact"}, headers=bearer(ADMIN_KEY))
    assert r.json()["quotas"]["max_clusters"] is None and r.json()["data_policy"] == "redact"
    r = api.patch("/v1/projects/team-a", json={"data_policy": "shred"}, headers=bearer(ADMIN_KEY))
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_policy"
    r = api.delete("/v1/projects/team-a", headers=bearer(ADMIN_KEY))
    assert r.status_code == 409 and "clusters" in r.json()["error"]["message"]
    api.delete(f"/v1/dedicated_ai_clusters/{c.json()['id']}", headers=h)
    for f in api.get("/v1/files", headers=h).json()["data"]:
        api.delete(f"/v1/files/{f['id']}", headers=h)
    assert api.delete("/v1/projects/team-a", headers=bearer(ADMIN_KEY)).status_code == 200
    assert api.get("/v1/files", headers=h).status_code == 401  # its keys are revoked
    assert api.post("/v1/projects", json={"name": "team-a"}, headers=bearer(ADMIN_KEY)).status_code == 409
    assert api.delete("/v1/projects/default", headers=bearer(ADMIN_KEY)).status_code == 409
    r = api.post("/v1/projects", json={"name": "Bad Name"}, headers=bearer(ADMIN_KEY))
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
    r = api.get("/v1/files", headers=bearer(ADMIN_KEY, "no-such-project"))
    assert r.status_code == 404 and r.json()["error"]["param"] == "OpenAI-Project"


def test_cli_projects_keys_and_audit(graft_home, api):
    from typer.testing import CliRunner

    from graftlm.cli import app as cli

    run = lambda *args: CliRunner().invoke(cli, list(args), env={"COLUMNS": "300"})
    assert run("projects", "create", "team-a", "--max-clusters", "2").exit_code == 0
    assert "team-a" in run("projects", "list").output
    out = run("keys", "create", "--project", "team-a", "--role", "editor", "--name", "ci", "--expires-in-days", "7")
    assert out.exit_code == 0, out.output
    secret = next(w for w in out.output.split() if w.startswith("gk-"))
    assert api.get("/v1/files", headers=bearer(secret)).status_code == 200
    assert api.delete("/v1/files/file-nope", headers=bearer(secret)).status_code == 404
    assert run("keys", "create", "--project", "nope").exit_code == 2
    listed = run("keys", "list", "--project", "team-a").output
    assert "editor" in listed and "team-a" in listed
    out = run("audit", "--project", "team-a")
    assert out.exit_code == 0 and "DELETE /v1/files/{file_id}" in out.output and "failed" in out.output
    assert run("projects", "delete", "team-a").exit_code == 0
    assert api.get("/v1/files", headers=bearer(secret)).status_code == 401


@pytest.mark.slow  # a live server, a hosting engine of the tiny model and one chat: ~30 s on 2 shared cores
def test_the_readme_two_team_walkthrough_runs_as_written(live_server, tiny_model_dir, graft_home):
    """The README's two-team block: its bash commands through the CLI, its Python against a live server (the
    README's model name on the tiny model), then the audit trail it describes."""
    from typer.testing import CliRunner

    from graftlm.cli import app as cli
    from graftlm.models.catalog import import_model
    from tests.test_readme_examples import blocks, commands

    import_model(tiny_model_dir, "smollm2-135m-instruct")
    block = next(b for b in blocks("bash") if "graft projects create" in b)
    keys = {}
    for argv in commands(block):
        out = CliRunner().invoke(cli, argv[1:], env={"COLUMNS": "300"})
        assert out.exit_code == 0, (argv, out.output)
        if "--name" in argv and argv[1:3] == ["keys", "create"]:
            keys[argv[argv.index("--name") + 1]] = next(w for w in out.output.split() if w.startswith("gk-"))
    code = next(b for b in blocks("python") if "<alice's key>" in b)
    code = (code.replace("http://127.0.0.1:8000/v1", live_server).replace("<alice's key>", keys["alice"])
            .replace("<bob's key>", keys["bob"]))
    exec(compile(code, "README two-team block", "exec"), {})
    out = CliRunner().invoke(cli, ["audit", "--project", "team-b", "--outcome", "failed"], env={"COLUMNS": "300"})
    assert "DELETE /v1/dedicated_ai_clusters/{cluster_id}" in out.output and "404" in out.output


def test_a_job_trained_in_a_project_registers_its_models_and_usage_there(live_server, tiny_model):
    """The worker acts for the instance (no project), so it must give the custom model, its checkpoint models and
    the job's usage span the job's project, not `default`. Trains one tiny LoRA epoch (~15 s on a quiet core, as
    test_checkpoint_models does)."""
    from openai import NotFoundError, OpenAI

    from graftlm.keys.projects import create_project
    from graftlm.keys.service import create_key
    from graftlm.store.db import session
    from graftlm.store.models import Model, UsageRecord
    from tests.test_jobs import hyper, toy_dataset, upload, wait_job

    create_project("team-a")
    create_project("team-b")
    a = OpenAI(base_url=live_server, api_key=create_key("a", project="team-a")[0], max_retries=0, timeout=60)
    b = OpenAI(base_url=live_server, api_key=create_key("b", project="team-b")[0], max_retries=0, timeout=60)
    job = a.fine_tuning.jobs.create(model="tiny", training_file=upload(a, toy_dataset()), suffix="toy",
                                    method=hyper(training_method="lora", n_epochs=1, batch_size=4))
    job = wait_job(a, job.id)
    assert job.status == "succeeded", job.error
    with session() as s:
        custom = {m.id: m.project_id for m in s.query(Model).filter(Model.kind == "custom")}
        spans = {u.project_id for u in s.query(UsageRecord).filter(UsageRecord.job_id == job.id)}
    assert custom and set(custom.values()) == {"team-a"} and job.fine_tuned_model in custom
    assert spans == {"team-a"}
    assert job.fine_tuned_model in {m.id for m in a.models.list().data}
    assert not set(custom) & {m.id for m in b.models.list().data}
    with pytest.raises(NotFoundError):
        b.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(NotFoundError):
        b.fine_tuning.jobs.retrieve(job.id)
