"""Issue 16 item 9: `eval show` prints whole prompts, `eval list` names each eval's own scorers, the
ladder says when nothing works, and the json_fields scorer."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from graftlm.cli.evals import app
from graftlm.evals import store
from graftlm.evals.ladder import verdict
from graftlm.evals.scorers import json_fields, score


def _run(eval_id: str, scorers: dict[str, float], results: list[dict]) -> dict:
    return store.save_run(eval_id, {
        "id": store.new_id("evalrun"), "eval_id": eval_id, "model": "m", "strategy": "zero-shot", "n": len(results),
        "scorers": list(scorers), "score": next(iter(scorers.values())), "ci_low": 0.0, "ci_high": 1.0,
        "aggregates": {s: {"mean": v, "ci_low": 0.0, "ci_high": 1.0, "n": len(results)} for s, v in scorers.items()},
        "tokens": {"prompt": 1.0, "completion": 1.0}, "latency_ms": 1.0, "results": results})


def test_show_prints_prompts_and_answers_whole():
    ev = store.create_eval("e", "x.jsonl", ["exact_match"])
    prefix = "Classify the following customer message into sentiment and topic and answer in JSON: "
    rows = [{"id": str(i), "question": prefix + tail, "prediction": '{"sentiment": "negative", "topic": "' + tail + '"}',
             "reference": "ref-" + tail, "scores": {"exact_match": 0.0}}
            for i, tail in enumerate(["my card was charged twice", "the app crashes at login"])]
    run = _run(ev["id"], {"exact_match": 0.0}, rows)
    out = CliRunner().invoke(app, ["show", run["id"]])
    assert out.exit_code == 0, out.output
    flat = " ".join(out.output.split())
    for r in rows:
        assert " ".join(r["question"].split()) in flat and r["prediction"] in flat and r["reference"] in flat
    assert max(map(len, out.output.splitlines())) <= 100


def test_list_labels_each_eval_with_its_own_scorers():
    ev = store.create_eval("e", "x.jsonl", ["json_fields", "exact_match"])
    _run(ev["id"], {"rouge_l": 0.5}, [])
    _run(ev["id"], {"json_fields": 0.75, "exact_match": 0.25}, [])
    out = CliRunner().invoke(app, ["list"]).output.splitlines()
    assert "scorers json_fields, exact_match" in out[0]
    assert "rouge_l 0.500" in out[1] and "json_fields 0.750  exact_match 0.250" in out[2]


def _rungs(scores: dict[str, float]):
    rungs, runs = [], {}
    for i, (name, s) in enumerate(scores.items()):
        results = [{"id": str(j), "scores": {"exact_match": float(j < s * 20)}} for j in range(20)]
        runs[name] = {"id": name, "scorers": ["exact_match"], "results": results}
        rungs.append({"name": name, "score": s, "ci_low": max(0, s - 0.1), "ci_high": s + 0.1, "unit_hours": i,
                      "tokens": 10.0})
    return rungs, runs


def test_ladder_says_nothing_works_when_every_rung_is_near_zero():
    v = verdict(*_rungs({"zero-shot": 0.0, "few-shot": 0.05, "lora": 0.05}))
    assert v["nothing_works"] and v["recommended"] is None and "Nothing works yet" in v["text"]
    v = verdict(*_rungs({"zero-shot": 0.0, "few-shot": 0.05, "lora": 0.8}))
    assert not v["nothing_works"] and v["recommended"] == "lora"


def test_json_fields_scores_the_share_of_equal_reference_fields():
    ref = '{"sentiment": "negative", "topic": "billing", "meta": {"lang": "en", "urgent": true}}'
    assert json_fields('{"topic": "billing", "sentiment": "negative", "meta": {"urgent": true, "lang": "en"}}', ref) == 1
    assert json_fields('```json\n{"sentiment": "negative", "topic": "login", "meta": {"lang": "en"}}\n```', ref) == 0.5
    assert json_fields('{"sentiment": "negative", "topic": "billing"', ref) == 0.0  # not JSON
    assert json_fields('[1, 2]', ref) == 0.0
    assert score("json_fields", ['{"a": 1, "b": 2}', "nope"], [{"a": 1, "b": 3}, {"a": 1}]) == [0.5, 0.0]
    from graftlm.errors import GraftError

    with pytest.raises(GraftError) as e:
        json_fields("{}", "not json")
    assert e.value.param == "scorers"
