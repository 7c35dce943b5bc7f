"""The fm SDK: embedded (no server) and against a server URL, same calls."""

from __future__ import annotations

import pytest

from tests.test_jobs import toy_dataset


@pytest.fixture
def train_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(toy_dataset(12))
    return str(p)


def test_embedded_run_with_databricks_names(tiny_model, train_file):
    from graftlm import fm

    run = fm.create(model="tiny", train_data_path=train_file, register_to="sdk-bot", training_duration="3ba",
                    learning_rate=1e-2, training_method="tfew", context_length=256)
    assert run.hyperparameters["max_steps"] == 3 and run.hyperparameters["learning_rate"] == 1e-2
    run = fm.wait(run, timeout=300)
    assert run.status == "succeeded", run.error
    assert run.fine_tuned_model == f"ft:tiny:sdk-bot:{run.id}"
    metrics = [e for e in fm.get_events(run) if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in metrics][:3] == [1, 2, 3]
    assert run.id in [r.id for r in fm.list()]


def test_remote_run_against_a_server(live_server, tiny_model, train_file):
    from graftlm import fm
    from tests.conftest import ADMIN_KEY

    fm.connect(live_server, ADMIN_KEY)
    try:
        run = fm.create(model="tiny", train_data_path=train_file, training_duration="2ba", method="lora")
        cancelled = fm.cancel(run)
        assert cancelled.status in ("cancelled", "cancelling")  # the state it is moving to, not "running"
        assert fm.wait(run, timeout=120).status == "cancelled"
    finally:
        fm.connect(None)


def test_bad_arguments_name_the_field(tiny_model, train_file):
    from graftlm import fm
    from graftlm.errors import GraftError

    with pytest.raises(GraftError) as e:
        fm.create(model="tiny", train_data_path=train_file, training_duration="3 weeks")
    assert e.value.param == "training_duration"
    with pytest.raises(GraftError) as e:
        fm.create(model="tiny", train_data_path="/no/such/file.jsonl")
    assert e.value.param == "train_data_path"


def _eval_set(tmp_path) -> str:
    import json

    p = tmp_path / "eval.jsonl"
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                         + "\n" for q, a in [("what is my balance", "balance"), ("lock my card", "freeze")]))
    return str(p)


def _evals_round_trip(tmp_path):
    from graftlm import fm

    ev = fm.evals.create("intents", _eval_set(tmp_path), scorers=["label_accuracy", "judge:tiny"])
    assert ev["scorers"] == ["label_accuracy", "judge:tiny"] and fm.evals.get(ev["id"])["name"] == "intents"
    assert [e["id"] for e in fm.evals.list()] == [ev["id"]]
    run = fm.evals.run(ev["id"], "tiny", max_tokens=4)
    assert run["n"] == 2 and "results" not in run and 0.0 <= run["aggregates"]["judge:tiny"]["mean"] <= 1.0
    assert [r["id"] for r in fm.evals.list_runs(ev["id"])] == [run["id"]]
    assert len(fm.evals.get_run(ev["id"], run["id"])["results"]) == 2
    return ev


def test_embedded_evals(tiny_model, tmp_path):
    from graftlm import fm
    from graftlm.errors import GraftError

    ev = _evals_round_trip(tmp_path)
    with pytest.raises(GraftError) as e:
        fm.evals.create("x", _eval_set(tmp_path), scorers=["judge:nope"])
    assert e.value.param == "scorers"
    with pytest.raises(GraftError, match="unknown run option"):
        fm.evals.run(ev["id"], "tiny", temperature=1)


def test_remote_evals_against_a_server(live_server, tiny_model, tmp_path):
    from graftlm import fm
    from graftlm.errors import GraftError
    from tests.conftest import ADMIN_KEY

    fm.connect(live_server, ADMIN_KEY)
    try:
        _evals_round_trip(tmp_path)
        with pytest.raises(GraftError) as e:
            fm.evals.get("eval-missing")
        assert e.value.status_code == 404
    finally:
        fm.connect(None)
