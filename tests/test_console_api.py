"""The console's server side: static files carry no data and a strict CSP; every /v1/console route needs a key;
key roles (viewer, editor, admin) decide what a key may do, through one policy; the helper routes' data."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest
from sqlalchemy import text

from conftest import ADMIN_KEY

CONSOLE_ROUTES = ["/v1/console/whoami", "/v1/console/models", "/v1/console/finetune_form",
                  "/v1/console/files/file-x/report", "/v1/console/models/tiny", "/v1/console/models/tiny/archive"]


def origin(live_server: str) -> str:
    return live_server.removesuffix("/v1")


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_static_console_is_served_with_csp_and_holds_no_data(live_server, tiny_model):
    base = origin(live_server)
    r = httpx.get(base + "/console", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"] == "/console/"
    page = httpx.get(base + "/console/")
    assert page.status_code == 200 and "graftlm console" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "tiny" not in page.text  # the shell has no data: that comes from /v1 behind the key
    for asset in ("app.js", "api.js", "pages/job.js", "vendor/uPlot.iife.min.js", "vendor/uPlot.LICENSE"):
        assert httpx.get(f"{base}/console/{asset}").status_code == 200, asset
    assert httpx.get(base + "/console/../graft.db").status_code == 404


@pytest.mark.parametrize("path", CONSOLE_ROUTES)
def test_every_console_data_route_needs_a_key(live_server, path):
    base = origin(live_server)
    assert httpx.get(base + path).status_code == 401
    assert httpx.get(base + path, headers=auth("gk-nope")).status_code == 401


def test_whoami_names_the_keys_role(live_server):
    from graftlm.keys.service import create_key

    base = origin(live_server)
    me = httpx.get(base + "/v1/console/whoami", headers=auth(ADMIN_KEY)).json()
    assert me["role"] == "admin" and me["can_write"] is True
    for role, can_write in (("viewer", False), ("editor", True)):
        secret, _ = create_key(role, role=role)
        me = httpx.get(base + "/v1/console/whoami", headers=auth(secret)).json()
        assert me["role"] == role and me["can_write"] is can_write and me["key"]["name"] == role
        assert secret not in json.dumps(me)


def test_a_viewer_reads_but_every_mutating_route_is_403_naming_the_role(live_server, tiny_model):
    from graftlm.api.app import create_app
    from graftlm.api.auth import required_role
    from graftlm.keys.service import create_key

    base = origin(live_server)
    viewer, _ = create_key("viewer", role="viewer")
    editor, _ = create_key("editor", role="editor")
    assert httpx.get(base + "/v1/models", headers=auth(viewer)).status_code == 200
    assert httpx.get(base + "/v1/console/models", headers=auth(viewer)).status_code == 200
    # every non-GET route of the API, whatever its path parameters, refuses the viewer before doing anything
    paths = create_app(run_scheduler=False).openapi()["paths"]
    routes = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/") for m in ops if m != "get"
              and required_role(m, p) != "viewer"]  # a search reads: the policy lets a viewer search
    assert len(routes) >= 15
    for method, path in routes:
        url = base + path.replace("{", "").replace("}", "").replace(":path", "")
        r = httpx.request(method, url, headers=auth(viewer), json={})
        assert r.status_code == 403, (method, path, r.status_code)
        err = r.json()["error"]
        needed = required_role(method, path)
        assert err["code"] == "permission_denied"
        assert (f"{needed} role" if needed != "instance_admin" else "instance admin key") in err["message"]
    r = httpx.post(base + "/v1/dedicated_ai_clusters", headers=auth(editor),
                   json={"type": "HOSTING", "base_model": "tiny"})
    assert r.status_code == 200  # an editor may


def test_key_roles_are_checked_and_shown(graft_home):
    from graftlm.errors import GraftError
    from graftlm.keys.service import create_key, key_identity, list_keys

    secret, record = create_key("a", role="viewer")
    assert record["role"] == "viewer" and not record["is_admin"]
    assert key_identity(secret)["role"] == "viewer"
    assert create_key("b", is_admin=True)[1]["role"] == "admin"
    assert create_key("c")[1]["role"] == "editor"
    with pytest.raises(GraftError) as e:
        create_key("d", role="owner")
    assert e.value.param == "role"
    assert {k["name"]: k["role"] for k in list_keys()} == {"a": "viewer", "b": "admin", "c": "editor"}


def test_migration_gives_existing_keys_a_role(graft_home):
    from alembic import command

    from graftlm.config import get_settings
    from graftlm.store.db import alembic_config, get_engine

    url = get_settings().db_url
    command.upgrade(alembic_config(url), "0001")
    with get_engine(url).begin() as conn:
        for key_id, admin in (("key-a", True), ("key-b", False)):
            conn.execute(text("insert into api_keys (id, name, prefix, key_hash, is_admin, created_at) "
                              "values (:id, :id, 'gk-', :id, :admin, 0)"), {"id": key_id, "admin": admin})
    command.upgrade(alembic_config(url), "head")
    with get_engine(url).connect() as conn:
        roles = dict(conn.execute(text("select id, role from api_keys")).all())
    assert roles == {"key-a": "admin", "key-b": "editor"}


def test_cli_creates_a_viewer_key(graft_home):
    from typer.testing import CliRunner

    from graftlm.cli import app
    from graftlm.keys.service import key_identity

    out = CliRunner().invoke(app, ["keys", "create", "--name", "ro", "--role", "viewer"]).output
    secret = next(w for w in out.split() if w.startswith("gk-"))
    assert key_identity(secret)["role"] == "viewer"
    assert "viewer" in CliRunner().invoke(app, ["keys", "list"]).output
    assert CliRunner().invoke(app, ["keys", "create", "--role", "boss"]).exit_code != 0


def test_file_report_lists_line_errors_and_token_stats(http, tiny_model):
    bad = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n'
    fid = http.post("/v1/files", files={"file": ("bad.jsonl", bad)}, data={"purpose": "fine-tune"}).json()["id"]
    for _ in range(100):
        data = http.get(f"/v1/console/files/{fid}/report").json()
        if data["file"]["status"] != "uploaded":
            break
    assert data["file"]["status"] == "error"
    assert [(e["line"], "JSON" in e["message"]) for e in data["report"]["errors"]] == [(2, True)]
    assert data["report"]["stats"]["tokens"] is None
    with_tokens = http.get(f"/v1/console/files/{fid}/report", params={"model": "tiny"}).json()
    tokens = with_tokens["report"]["stats"]["tokens"]
    assert tokens["examples"] == 1 and tokens["total"] > 0 and tokens["trainable_total"] > 0
    r = http.get(f"/v1/console/files/{fid}/report", params={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert http.get("/v1/console/files/file-missing/report").status_code == 404


def test_models_hide_server_paths_and_custom_models_export_as_a_zip(http, tiny_model, tiny_model_dir, tmp_path):
    from graftlm.store.db import session
    from graftlm.store.models import Model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with session() as s:
        s.add(Model(id="ft:tiny:x:ftjob-1", kind="custom", family="llama", parent="tiny", path=str(adapter),
                    parameter_count=1, context_length=128, adapter_type="ia3",
                    lineage={"job_id": "ftjob-1", "datasets": {"training_file": "abc"}, "versions": {"torch": "2"}}))
    listed = http.get("/v1/console/models").json()["data"]
    assert {m["id"] for m in listed} == {"tiny", "ft:tiny:x:ftjob-1"} and all("path" not in m for m in listed)
    detail = http.get("/v1/console/models/ft:tiny:x:ftjob-1").json()
    assert detail["lineage"]["datasets"]["training_file"] == "abc" and "path" not in detail
    r = http.get("/v1/console/models/ft:tiny:x:ftjob-1/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert sorted(names) == ["ft_tiny_x_ftjob-1/README.md", "ft_tiny_x_ftjob-1/adapter_config.json",
                             "ft_tiny_x_ftjob-1/adapter_model.safetensors"]  # README.md: the model card
    r = http.get("/v1/console/models/tiny/archive")
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_finetune_form_is_the_one_schema_with_method_defaults(http):
    from graftlm.train.config import FineTuneConfig

    form = http.get("/v1/console/finetune_form").json()
    assert form["schema"] == json.loads(json.dumps(FineTuneConfig.model_json_schema()))
    assert form["oci_defaults"]["tfew"]["learning_rate"] == 0.01
    assert form["oci_defaults"]["lora"]["early_stopping_patience"] == 15
    assert form["oci_defaults"]["lora"]["training_batch_size"] == 8
    assert "tfew" not in form["method_fields"]["lora_r"] and "n_epochs" in form["aliases"]


def test_ci_runs_the_browser_tests():
    """In CI (.ci/run installs chromium, `make` installs playwright) the browser tests must run, not skip."""
    import os

    from graftlm.console.testing import missing_reason

    if os.environ.get("CI") != "true":
        pytest.skip("only CI must have a browser")
    assert missing_reason() is None
