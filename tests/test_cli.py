"""The graft CLI works on GRAFT_HOME without a server: validate, models, keys, finetune, clusters, usage."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from graftlm.cli import app

runner = CliRunner()


def test_data_validate_exit_codes_and_json(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + '{"prompt": 3}\n')
    r = runner.invoke(app, ["data", "validate", str(good), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["valid"] is True
    r = runner.invoke(app, ["data", "validate", str(bad), "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 1 and report["errors"][0]["line"] == 2
    r = runner.invoke(app, ["data", "validate", str(bad)])
    assert r.exit_code == 1 and "invalid" in r.stdout


def test_data_validate_with_model_gives_token_stats(tiny_model, tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello"}]}) + "\n")
    r = runner.invoke(app, ["data", "validate", str(f), "--model", "tiny", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["stats"]["tokens"]["total"] > 0
    r = runner.invoke(app, ["data", "validate", str(f), "--model", "tiny"])
    assert r.exit_code == 0 and "tokens: total" in r.stdout and "{" not in r.stdout  # rows, not a raw dict


def test_stat_rows_flatten_and_group_numbers():
    from graftlm.cli.data import stat_rows

    rows = dict(stat_rows({"lines": 1200, "tokens": {"mean": 74.257, "truncation": "right"}}))
    assert rows == {"lines": "1,200", "tokens: mean": "74.26", "tokens: truncation": "right"}


def test_models_keys_clusters_usage(tiny_model_dir):
    assert runner.invoke(app, ["models", "import", str(tiny_model_dir), "--name", "t"]).exit_code == 0
    r = runner.invoke(app, ["models", "list", "--json"])
    assert [m["id"] for m in json.loads(r.stdout)] == ["t"]
    r = runner.invoke(app, ["keys", "create", "--name", "ci"])
    assert r.exit_code == 0 and "gk-" in r.stdout
    r = runner.invoke(app, ["clusters", "create", "--type", "HOSTING", "--base-model", "t", "--name", "h"])
    assert r.exit_code == 0
    r = runner.invoke(app, ["usage", "--price-per-unit-hour", "2", "--json"])
    assert json.loads(r.stdout)["cost"] == 744 * 2


def test_errors_are_one_line_with_exit_code_2():
    r = runner.invoke(app, ["models", "show", "missing"])
    assert r.exit_code == 2 and "error" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["finetune", "create", "--model", "missing", "--train", "/no/such.jsonl"])
    assert r.exit_code == 2


def test_finetune_create_with_yaml_and_watch(tiny_model, tmp_path):
    from tests.test_jobs import toy_dataset

    data = tmp_path / "train.jsonl"
    data.write_bytes(toy_dataset(10))
    spec = tmp_path / "job.yaml"
    spec.write_text(f"model: tiny\ntraining_file: {data}\ntraining_method: tfew\ntraining_duration: 2ba\n"
                    "suffix: yaml\n")
    r = runner.invoke(app, ["finetune", "create", "--config", str(spec), "--watch"])
    assert r.exit_code == 0, r.output
    assert "succeeded" in r.output and "ft:tiny:yaml:" in r.output and "tok/s" in r.output


def test_watch_shows_time_left_from_estimated_finish():
    from graftlm.cli.finetune import time_left

    assert time_left({"estimated_finish": None}, 100.0) == "-:--:--"
    assert time_left({"estimated_finish": 100 + 3600 + 125}, 100.0) == "1:02:05"
    assert time_left({"estimated_finish": 90}, 100.0) == "0:00:00"  # overdue: never negative


def test_finetune_create_without_watch_hints_that_a_scheduler_must_run(tiny_model, tmp_path, monkeypatch):
    from graftlm.jobs import embedded
    from tests.test_jobs import toy_dataset

    data = tmp_path / "train.jsonl"
    data.write_bytes(toy_dataset(4))
    args = ["finetune", "create", "--model", "tiny", "--train", str(data), "--method", "tfew"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "graft serve" in r.output and "graft worker" in r.output
    class Running:
        def stop(self):
            pass

    monkeypatch.setattr(embedded, "_scheduler", Running())  # this process schedules jobs itself: no hint
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "graft worker" not in r.output
