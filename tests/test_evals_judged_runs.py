"""Stored runs scored by an LLM judge: `graft eval calibrate` against human labels, and `graft eval
export-sft` / `export-preferences` turning judge-graded answers into training data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

SYSTEM = {"role": "system", "content": "Answer briefly."}
QUESTIONS = ["What is 2+2?", "Capital of France?", "Colour of the sky?", "Largest planet?"]
REFERENCES = ["4", "Paris", "blue", "Jupiter"]


def write_eval_set(path) -> str:
    path.write_text("".join(json.dumps({"id": f"q{i}", "messages": [SYSTEM, {"role": "user", "content": q},
                                                                    {"role": "assistant", "content": a}]}) + "\n"
                            for i, (q, a) in enumerate(zip(QUESTIONS, REFERENCES))))
    return str(path)


def stored_run(data: str, answers: list[str], grades: list[int], *, scorer: str = "judge:grader",
               eval_id: str = "eval-judged") -> str:
    """A run as run_eval stores it, with judge grades 1–5 kept as (grade − 1) / 4."""
    from graftlm.errors import NotFound
    from graftlm.evals import store

    try:
        store.get_eval(eval_id)
    except NotFound:
        store.create_eval("judged", data, [scorer], eval_id=eval_id)
    run = {"id": store.new_id("evalrun"), "object": "eval.run", "eval_id": eval_id, "model": "m",
           "strategy": "zero-shot", "data": data, "scorers": [scorer], "created_at": 0, "n": len(answers),
           "results": [{"id": f"q{i}", "question": QUESTIONS[i], "reference": REFERENCES[i], "prediction": a,
                        "scores": {scorer: (g - 1) / 4}} for i, (a, g) in enumerate(zip(answers, grades))]}
    return store.save_run(eval_id, run)["id"]


def graft(*args):
    from graftlm.cli import app

    return CliRunner().invoke(app, [*args])


def write_labels(path, scores: list[int]):
    path.write_text("".join(json.dumps({"id": f"q{i}", "score": s}) + "\n" for i, s in enumerate(scores)))
    return str(path)


def test_calibrate_reports_kappa_accuracy_and_the_fitted_mapping(tmp_path):
    data = write_eval_set(tmp_path / "eval.jsonl")
    run_id = stored_run(data, ["4", "Paris", "green", "Mars"], [5, 4, 2, 1])
    agree = graft("eval", "calibrate", "--labels", write_labels(tmp_path / "same.jsonl", [5, 4, 2, 1]),
                  "--run", run_id, "--json")
    assert agree.exit_code == 0, agree.output
    report = json.loads(agree.stdout)
    assert report["n"] == 4 and report["kappa"] == 1.0 and report["accuracy"] == 1.0 and report["warning"] is None
    assert report["scorer"] == "judge:grader" and report["linear"]["slope"] == pytest.approx(1.0)
    assert "warning" not in agree.stderr

    lenient = graft("eval", "calibrate", "--labels", write_labels(tmp_path / "low.jsonl", [4, 3, 1, 1]),
                    "--run", run_id)
    assert lenient.exit_code == 0, lenient.output
    assert "Cohen's kappa" in lenient.stdout and "accuracy 0.250" in lenient.stdout
    assert "isotonic: 1->1.00" in lenient.stdout and "linear: human =" in lenient.stdout
    assert "warning: judge/human agreement is low" in lenient.stderr


@pytest.mark.parametrize("labels,says", [
    ('{"id": "q0", "score": 9}\n', "line 1: \"score\" must be a number from 1 to 5"),
    ("not json\n", "line 1: invalid JSON"),
    ('{"id": "elsewhere", "score": 3}\n{"id": "q1", "score": 3}\n', "only 1 labelled example id(s) are in run"),
])
def test_calibrate_bad_labels_are_clear_errors(tmp_path, labels, says):
    run_id = stored_run(write_eval_set(tmp_path / "eval.jsonl"), ["4", "Paris", "green", "Mars"], [5, 4, 2, 1])
    (tmp_path / "labels.jsonl").write_text(labels)
    out = graft("eval", "calibrate", "--labels", str(tmp_path / "labels.jsonl"), "--run", run_id)
    assert out.exit_code == 2 and says in out.stderr, out.output


def test_calibrate_needs_a_judge_scored_run(tmp_path):
    run_id = stored_run(write_eval_set(tmp_path / "eval.jsonl"), ["4"] * 4, [5] * 4, scorer="label_accuracy")
    out = graft("eval", "calibrate", "--labels", write_labels(tmp_path / "l.jsonl", [5, 5, 5, 5]), "--run", run_id)
    assert out.exit_code == 2 and "was not scored by an LLM judge" in out.stderr, out.output


def test_export_sft_keeps_the_best_judged_answer_and_passes_validate(tmp_path):
    data = write_eval_set(tmp_path / "eval.jsonl")
    a = stored_run(data, ["4", "Lyon", "blue", "Mars"], [5, 2, 4, 1])
    b = stored_run(data, ["four", "Paris", "grey", "Saturn"], [4, 5, 2, 2])
    out = graft("eval", "export-sft", a, b, "--out", str(tmp_path / "sft.jsonl"))
    assert out.exit_code == 0, out.output
    assert "wrote 3 SFT example(s)" in out.stdout and "1 of 4 examples skipped" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == ["4", "Paris", "blue"]
    assert rows[1]["messages"][:2] == [SYSTEM, {"role": "user", "content": QUESTIONS[1]}]  # the eval's prompt
    assert rows[1]["source"] == {"example_id": "q1", "judge_score": 5}
    validated = graft("data", "validate", str(tmp_path / "sft.jsonl"))
    assert validated.exit_code == 0, validated.output

    strict = graft("eval", "export-sft", a, "--min-score", "5", "--out", str(tmp_path / "strict.jsonl"))
    assert strict.exit_code == 0 and len((tmp_path / "strict.jsonl").read_text().splitlines()) == 1


def test_export_preferences_pairs_best_and_worst_across_runs(tmp_path):
    data = write_eval_set(tmp_path / "eval.jsonl")
    a = stored_run(data, ["4", "Lyon", "blue", "Mars"], [5, 2, 4, 1])
    b = stored_run(data, ["four", "Paris", "blue", "Saturn"], [4, 5, 4, 1])
    out = graft("eval", "export-preferences", a, b, "-o", str(tmp_path / "pref.jsonl"))
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in (tmp_path / "pref.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"], r["scores"]) for r in rows] == [
        ("4", "four", [5, 4]), ("Paris", "Lyon", [5, 2])]  # same answer (blue) and equal grades (Mars/Saturn) skipped
    assert rows[0]["prompt"] == [SYSTEM, {"role": "user", "content": QUESTIONS[0]}]

    one = graft("eval", "export-preferences", a, "-o", str(tmp_path / "one.jsonl"))
    assert one.exit_code == 2 and "at least two different runs" in one.stderr
    plain = stored_run(data, ["4"] * 4, [5] * 4, scorer="label_accuracy", eval_id="eval-plain")
    mixed = graft("eval", "export-preferences", a, plain, "-o", str(tmp_path / "mixed.jsonl"))
    assert mixed.exit_code == 2 and "has no scorer 'judge:grader'" in mixed.stderr, mixed.output
