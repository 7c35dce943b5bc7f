"""The customization ladder end to end on the tiny model: every rung, ladder.json, report.html."""

from __future__ import annotations

import json

import pytest

LABELS = ["balance", "transfer", "freeze"]
QUESTIONS = {"balance": ["what is my balance", "how much money do i have", "show my account balance"],
             "transfer": ["send money to mom", "move cash to savings", "transfer 20 dollars"],
             "freeze": ["lock my card", "freeze my account now", "block my stolen card"]}
SYSTEM = "Classify the request. Labels: balance, transfer, freeze."


def write_set(path, pairs):
    with open(path, "w") as fh:
        for q, label in pairs:
            fh.write(json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                                              {"role": "assistant", "content": label}]}) + "\n")
    return str(path)


def test_ladder_end_to_end(tmp_path, varied_model_dir):
    from graftlm.models.catalog import import_model

    from graftlm.evals.ladder import run_ladder

    import_model(varied_model_dir, "tiny")
    pairs = [(q, label) for label in LABELS for q in QUESTIONS[label]]
    train = write_set(tmp_path / "train.jsonl", pairs * 2)
    test = write_set(tmp_path / "test.jsonl", [(q + " please", label) for q, label in pairs])
    lines = []
    result = run_ladder(train, test, "tiny", methods=("tfew", "lora"), out_dir=tmp_path / "out", few_shot_k=2,
                        rag_k=2, training_duration="2ba", context_length=256, max_tokens=4, echo=lines.append)
    names = [r["name"] for r in result["rungs"]]
    assert names == ["zero-shot", "few-shot", "zero-shot+schema", "few-shot+schema", "rag", "tfew", "tfew+rag",
                     "lora", "lora+rag"]
    saved = json.loads((tmp_path / "out" / "ladder.json").read_text())
    assert saved["labels"] == sorted(LABELS)
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    for name in ("zero-shot+schema", "few-shot+schema"):  # a random tiny model, yet every answer is a label
        assert runs[name]["valid_label_share"] == 1.0
        for r in runs[name]["results"]:
            assert json.loads(r["output"]) == {"label": r["prediction"]} and r["prediction"] in LABELS
    for r in saved["rungs"]:
        assert set(r) >= {"name", "score", "ci_low", "ci_high", "tokens", "latency_ms", "unit_hours"}
        assert 0 <= r["ci_low"] <= r["score"] <= r["ci_high"] <= 1
        assert r["tokens"] > 0 and r["latency_ms"] > 0
    by = {r["name"]: r for r in saved["rungs"]}
    assert by["zero-shot"]["unit_hours"] == 0 and by["tfew"]["unit_hours"] == 1.0  # billed minimum
    assert by["few-shot"]["tokens"] > by["zero-shot"]["tokens"] and by["rag"]["tokens"] > by["zero-shot"]["tokens"]
    assert saved["verdict"]["best"] in names
    assert saved["loss_curves"]["tfew"] and saved["loss_curves"]["lora"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in report and "polyline" in report and "http" not in report.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert any("zero-shot" in line and "[" in line for line in lines)


def test_ladder_reuses_custom_models_instead_of_retraining(tmp_path, varied_model_dir):
    """Issue 16 item 9: --reuse names models the user already trained; nothing is trained or registered."""
    from typer.testing import CliRunner

    from graftlm.cli.main import app
    from graftlm.jobs.service import list_jobs
    from graftlm.models.catalog import import_model, list_models
    from graftlm.store.db import session
    from graftlm.store.models import Model
    from graftlm.testing.adapters import make_peft_adapter

    tiny = import_model(varied_model_dir, "tiny")
    path = make_peft_adapter(tiny["path"], tmp_path / "mine", kind="lora", r=4)
    with session() as s:
        s.add(Model(id="ft:tiny:mine:ftjob-gone", kind="custom", parent="tiny", path=str(path), adapter_type="lora",
                    lineage={"job_id": "ftjob-gone"}))
    pairs = [(q, label) for label in LABELS for q in QUESTIONS[label]]
    train = write_set(tmp_path / "train.jsonl", pairs)
    test = write_set(tmp_path / "test.jsonl", [(q + " please", label) for q, label in pairs[:4]])
    models_before = {m["id"] for m in list_models()}
    r = CliRunner().invoke(app, ["ladder", "--data", train, "--eval", test, "--model", "tiny",
                                 "--reuse", "ft:tiny:mine:ftjob-gone", "--out", str(tmp_path / "out"),
                                 "--few-shot-k", "2"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "out" / "ladder.json").read_text())
    names = [x["name"] for x in saved["rungs"]]
    assert names == ["zero-shot", "few-shot", "zero-shot+schema", "few-shot+schema", "rag", "mine", "mine+rag"]
    by = {x["name"]: x for x in saved["rungs"]}
    assert by["mine"]["model"] == "ft:tiny:mine:ftjob-gone" and by["mine"]["reused"]
    assert list_jobs()["data"] == [] and {m["id"] for m in list_models()} == models_before

    r = CliRunner().invoke(app, ["ladder", "--data", train, "--eval", test, "--model", "tiny", "--reuse", "tiny",
                                 "--out", str(tmp_path / "out2")])
    assert r.exit_code == 2 and "custom models" in r.output


def test_constrained_rungs_need_a_classification_set(tmp_path, varied_model_dir):
    from graftlm.errors import GraftError
    from graftlm.evals.ladder import label_set, run_ladder
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    pairs = [(q, f"the answer to {q} is a sentence\nof two lines") for qs in QUESTIONS.values() for q in qs]
    train = write_set(tmp_path / "train.jsonl", pairs)
    with pytest.raises(GraftError) as e:
        run_ladder(train, train, "tiny", methods=(), out_dir=tmp_path / "out", constrained=True, echo=lambda _: None)
    assert e.value.param == "constrained"
    assert label_set([{"reference": "a"}, {"reference": "b"}], "label_accuracy") == ["a", "b"]
    assert label_set([{"reference": "a"}, {"reference": "b"}], "token_f1") is None
    assert label_set([{"reference": "a"}] * 3, "label_accuracy") is None


def test_run_eval_with_an_enum_schema_scores_the_field(tmp_path, varied_model_dir):
    """Every constrained answer of a random model parses and is a label; unconstrained answers mostly are not."""
    from graftlm.evals.ladder import schema_max_tokens
    from graftlm.evals.run import label_schema, run_eval
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    pairs = [(q, label) for label in LABELS for q in QUESTIONS[label]]
    test = write_set(tmp_path / "test.jsonl", pairs)
    free = run_eval("tiny", test, max_tokens=6, save=False, labels=LABELS)
    fixed = run_eval("tiny", test, max_tokens=schema_max_tokens(LABELS), save=False, labels=LABELS, json_schema=label_schema(LABELS),
                     answer_field="label")
    assert fixed["valid_label_share"] == 1.0 and free["valid_label_share"] < 1.0
    assert all(json.loads(r["output"])["label"] == r["prediction"] for r in fixed["results"])
    assert fixed["score"] == sum(r["prediction"] == r["reference"] for r in fixed["results"]) / len(pairs)
