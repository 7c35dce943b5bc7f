"""JobSpec is the one job request: the API body, YAML job specs, CLI flags and the SDK build it, and
GET /v1/fine_tuning/schema serves its schema."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from graftlm.errors import GraftError
from graftlm.jobs.spec import JobSpec
from graftlm.train.config import FineTuneConfig
from tests.test_jobs import toy_dataset


@pytest.fixture
def train_path(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(toy_dataset(8))
    return p


def test_schema_is_the_whole_request_with_the_hyperparameters_inside(http):
    schema = http.get("/v1/fine_tuning/schema").json()
    assert schema == JobSpec.json_schema()
    assert {"model", "training_file", "hyperparameters", "metadata", "suffix"} <= set(schema["properties"])
    assert schema["required"] == ["model", "training_file"] and schema["additionalProperties"] is False
    hyper = schema["$defs"]["FineTuneConfig"]
    assert set(hyper["properties"]) == set(FineTuneConfig.model_json_schema()["properties"])
    assert schema["properties"]["hyperparameters"]["anyOf"][0] == {"$ref": "#/$defs/FineTuneConfig"}


def test_yaml_flat_or_nested_is_the_same_spec(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("model: tiny\ntraining_file: train.jsonl\nmethod: tfew\nlearning_rate: 0.01\nseed: 3\n")
    nested.write_text("model: tiny\ntraining_file: train.jsonl\nseed: 3\n"
                      "hyperparameters:\n  training_method: tfew\n  learning_rate: 0.01\n")
    a, b = JobSpec.from_yaml(flat), JobSpec.from_yaml(nested)
    assert a == b and a.hyperparameter_dict() == {"training_method": "tfew", "learning_rate": 0.01, "seed": 3}
    assert JobSpec.from_yaml(flat, model="other", suffix=None).model == "other"  # flags override, None does not
    openai = JobSpec.parse({"model": "m", "training_file": "f", "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": "auto", "batch_size": 4}}}})
    assert openai.hyperparameter_dict() == {"batch_size": 4}
    with pytest.raises(GraftError, match="method.type"):
        JobSpec.parse({"model": "m", "training_file": "f", "method": {"type": "reinforcement"}}).hyperparameter_dict()
    dpo = JobSpec.parse({"model": "m", "training_file": "f", "method": {"type": "dpo", "dpo": {
        "hyperparameters": {"beta": 0.3, "n_epochs": "auto"}}}})
    assert dpo.hyperparameter_dict() == {"objective": "dpo", "dpo_beta": 0.3}  # OpenAI's beta is dpo_beta
    (tmp_path / "list.yaml").write_text("- model\n")
    for bad, param in ((tmp_path / "list.yaml", "config"), (tmp_path / "missing.yaml", "config")):
        with pytest.raises(GraftError) as e:
            JobSpec.from_yaml(bad)
        assert e.value.param == param


def test_unknown_job_field_is_a_400_naming_it(http, tiny_model):
    r = http.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-x", "epochs": 3})
    assert r.status_code == 400 and "epochs" in r.text
    with pytest.raises(GraftError) as e:
        JobSpec.parse({"model": "tiny", "training_file": "f", "epochs": 3})
    assert e.value.param == "epochs"


def test_cli_yaml_flags_and_sdk_make_the_same_job(tiny_model, train_path, tmp_path, monkeypatch):
    from graftlm import fm
    from graftlm.cli import app
    from graftlm.jobs import embedded, service

    monkeypatch.setattr(embedded, "ensure_scheduler", lambda: None)  # create only; nothing trains
    spec = tmp_path / "job.yaml"
    spec.write_text(f"model: tiny\ntraining_file: {train_path}\nsuffix: yaml\nmetadata: {{team: nlp}}\n"
                    "hyperparameters: {training_method: tfew, training_duration: 2ba}\n")
    out = CliRunner().invoke(app, ["finetune", "create", "--config", str(spec), "--set", "learning_rate=0.02"])
    assert out.exit_code == 0, out.output
    by_cli = service.list_jobs(limit=1)["data"][0]
    by_sdk = fm.create(model="tiny", train_data_path=str(train_path), register_to="yaml", method="tfew",
                       training_duration="2ba", learning_rate=0.02)
    assert by_cli["hyperparameters"] == by_sdk.hyperparameters
    assert by_cli["metadata"] == {"team": "nlp"} == service.get_job(by_cli["id"])["metadata"]  # stored, returned
    default = fm.create(model="tiny", train_data_path=str(train_path), training_duration="2ba")
    assert default.hyperparameters["training_method"] == FineTuneConfig.model_fields["training_method"].default


def test_cli_cluster_flag_and_sdk_cluster_put_the_job_on_a_fine_tuning_clusters_ranks(tiny_model, train_path,
                                                                                         monkeypatch):
    """`graft finetune create --cluster NAME` and `fm.create(cluster=...)` name the cluster (by name, id prefix
    or id): the job holds its units as ranks; an unknown one is refused naming the field."""
    from graftlm import fm
    from graftlm.cli import app
    from graftlm.clusters.clusters import create_cluster
    from graftlm.jobs import embedded, service

    monkeypatch.setattr(embedded, "ensure_scheduler", lambda: None)  # create only; nothing trains
    two = create_cluster("FINE_TUNING", unit_count=2, name="two")
    out = CliRunner().invoke(app, ["finetune", "create", "--model", "tiny", "--train", str(train_path),
                                   "--cluster", "two", "--set", "training_duration=2ba"])
    assert out.exit_code == 0, out.output
    assert "2 ranks on" in out.output
    by_cli = service.list_jobs(limit=1)["data"][0]
    assert by_cli["dedicated_ai_cluster_id"] == two["id"]
    assert by_cli["hyperparameters"]["distributed"]["world_size"] == 2
    by_sdk = fm.create(model="tiny", train_data_path=str(train_path), training_duration="2ba", cluster=two["id"][:12])
    assert by_sdk.hyperparameters == by_cli["hyperparameters"]
    assert service.get_job(by_sdk.id)["dedicated_ai_cluster_id"] == two["id"]
    out = CliRunner().invoke(app, ["finetune", "create", "--model", "tiny", "--train", str(train_path),
                                   "--cluster", "nosuch"])
    assert out.exit_code != 0 and "dedicated_ai_cluster_id" in out.output
