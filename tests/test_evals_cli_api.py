"""The eval Typer sub-app and FastAPI router, mounted on throwaway apps."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.test_evals_ladder import LABELS, QUESTIONS, write_set


def test_cli_and_router(tmp_path, varied_model_dir):
    from graftlm.api.errors import install_error_handlers
    from graftlm.api.routes.evals import router
    from graftlm.cli.evals import app
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    data = write_set(tmp_path / "test.jsonl", [(QUESTIONS[label][0], label) for label in LABELS])
    runner = CliRunner()
    out = runner.invoke(app, ["run", "-m", "tiny", "-d", data, "-s", "label_accuracy", "-s", "rouge_l",
                              "--max-tokens", "4", "--failures"])
    assert out.exit_code == 0, out.output
    assert "label_accuracy" in out.output and "95% CI" in out.output
    run_id = out.output.split()[0]
    from graftlm.evals.store import get_run

    stored = get_run(run_id)["failure_clusters"]  # --failures keeps the clusters with the run
    assert sum(c["size"] for c in stored) == sum(r["scores"]["label_accuracy"] < 1 for r in get_run(run_id)["results"])
    shown = runner.invoke(app, ["show", run_id])
    assert shown.exit_code == 0 and run_id in shown.output
    assert shown.output.count("failure cluster") == len(stored) > 0
    assert runner.invoke(app, ["compare", run_id, run_id]).output.count("diff +0.000") == 1

    api = FastAPI()
    install_error_handlers(api)
    api.include_router(router, prefix="/v1")
    http = TestClient(api)
    assert http.post("/v1/evals", json={"name": "x", "data_path": data, "scorers": ["nope"]}).status_code == 400
    ev = http.post("/v1/evals", json={"name": "intents", "data_path": data}).json()
    run = http.post(f"/v1/evals/{ev['id']}/runs", json={"model": "tiny", "max_tokens": 4}).json()
    assert run["n"] == 3 and "results" not in run and "failure_clusters" not in run
    clustered = http.post(f"/v1/evals/{ev['id']}/runs", json={"model": "tiny", "max_tokens": 4, "failures": True})
    assert clustered.status_code == 200 and clustered.json()["failure_clusters"], clustered.text
    assert get_run(clustered.json()["id"])["failure_clusters"] == clustered.json()["failure_clusters"]
    assert [r["id"] for r in http.get(f"/v1/evals/{ev['id']}/runs").json()["data"]] == [run["id"],
                                                                                          clustered.json()["id"]]
    assert len(http.get(f"/v1/evals/{ev['id']}/runs/{run['id']}").json()["results"]) == 3
    assert http.get("/v1/evals/eval-missing").status_code == 404


def test_judge_scorer_in_runs_cli_and_api(tmp_path, varied_model_dir, monkeypatch):
    from graftlm.api.errors import install_error_handlers
    from graftlm.errors import GraftError
    from graftlm.evals import run as run_module
    from graftlm.api.routes.evals import router
    from graftlm.cli.evals import app
    from graftlm.evals.run import run_eval
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    data = write_set(tmp_path / "test.jsonl", [(QUESTIONS[label][0], label) for label in LABELS])
    run = run_eval("tiny", data, scorers=["label_accuracy", "judge:tiny"], max_tokens=4, save=False)
    assert run["scorers"] == ["label_accuracy", "judge:tiny"] and "judge:tiny" in run["aggregates"]
    assert all(0.0 <= r["scores"]["judge:tiny"] <= 1.0 for r in run["results"])

    out = CliRunner().invoke(app, ["run", "-m", "tiny", "-d", data, "-s", "judge:tiny", "--max-tokens", "4"])
    assert out.exit_code == 0, out.output
    assert "judge:tiny" in out.output

    monkeypatch.setattr(run_module, "generate", lambda *a, **k: pytest.fail("generated before checking scorers"))
    with pytest.raises(GraftError, match="unknown judge model 'nope'"):
        run_eval("tiny", data, scorers=["judge:nope"], save=False)

    api = FastAPI()
    install_error_handlers(api)
    api.include_router(router, prefix="/v1")
    http = TestClient(api)
    bad = http.post("/v1/evals", json={"name": "x", "data_path": data, "scorers": ["judge:nope"]})
    assert bad.status_code == 400 and "unknown judge model 'nope'" in bad.json()["error"]["message"]
    ok = http.post("/v1/evals", json={"name": "x", "data_path": data, "scorers": ["judge:tiny"]})
    assert ok.status_code == 200 and ok.json()["scorers"] == ["judge:tiny"]


def test_unknown_fields_are_400_naming_the_field(tmp_path):
    from graftlm.api.errors import install_error_handlers
    from graftlm.api.routes.evals import router

    data = write_set(tmp_path / "test.jsonl", [(QUESTIONS[label][0], label) for label in LABELS])
    api = FastAPI()
    install_error_handlers(api)
    api.include_router(router, prefix="/v1")
    http = TestClient(api)
    ev = http.post("/v1/evals", json={"name": "intents", "data_path": data}).json()
    r = http.post(f"/v1/evals/{ev['id']}/runs", json={"model": "tiny", "max_token": 4})  # typo of max_tokens
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_token", r.text
    assert "max_token" in r.json()["error"]["message"] and "not permitted" in r.json()["error"]["message"]
    r = http.post("/v1/evals", json={"name": "x", "data_path": data, "scorer": ["rouge_l"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scorer", r.text
