"""The eval runner on the tiny model: prompts, stored runs, comparison, forgetting, failure clusters."""

from __future__ import annotations

import json

import pytest

from tests.test_evals_ladder import LABELS, QUESTIONS, write_set


@pytest.fixture
def sets(tmp_path, varied_model_dir):
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    pairs = [(q, label) for label in LABELS for q in QUESTIONS[label]]
    return write_set(tmp_path / "train.jsonl", pairs), write_set(tmp_path / "test.jsonl", pairs[:5])


def test_run_eval_stores_results_and_aggregates(sets, graft_home):
    from graftlm.evals import store
    from graftlm.evals.run import compare_runs, run_eval

    train, test = sets
    zero = run_eval("tiny", test, scorers=["label_accuracy", "token_f1"], max_tokens=4)
    few = run_eval("tiny", test, scorers=["label_accuracy"], strategy="few-shot", k=2, train_path=train,
                   max_tokens=4, eval_id=zero["eval_id"])
    rag = run_eval("tiny", test, strategy="rag", k=2, train_path=train, max_tokens=4, save=False)
    assert zero["n"] == 5 and len(zero["results"]) == 5 and set(zero["aggregates"]) == {"label_accuracy", "token_f1"}
    assert few["tokens"]["prompt"] > zero["tokens"]["prompt"] and rag["tokens"]["prompt"] > zero["tokens"]["prompt"]
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] >= 1 for r in zero["results"])
    assert zero["latency_ms"] > 0
    saved = store.get_run(zero["id"], zero["eval_id"])
    assert saved["results"][0]["reference"] == "balance"
    assert [r["id"] for r in store.list_runs(zero["eval_id"])] == [zero["id"], few["id"]]
    cmp = compare_runs(zero, few)
    assert cmp["n"] == 5 and cmp["ci_low"] <= cmp["diff"] <= cmp["ci_high"]


def test_prompt_completion_format_and_context_trimming(tmp_path, sets):
    from graftlm.evals.prompts import load_examples
    from graftlm.evals.run import build_prompts, model_context, token_counter

    p = tmp_path / "pc.jsonl"
    p.write_text(json.dumps({"prompt": "say hi", "completion": "hi"}) + "\n")
    ex = load_examples(p)
    assert ex[0]["messages"] == [{"role": "user", "content": "say hi"}] and ex[0]["reference"] == "hi"
    from graftlm.evals.prompts import ExampleIndex

    long_train = [{"id": i, "messages": [{"role": "user", "content": "word " * 30}], "reference": "x"} for i in range(50)]
    prompts = build_prompts("tiny", ex, "few-shot", k=50, index=ExampleIndex(long_train), max_tokens=8)
    tokenizer, context = model_context("tiny")
    assert token_counter(tokenizer)(prompts[0]) <= context - 8
    assert len(prompts[0]) > 1  # some shots still fit

    from graftlm.rag.generate import SYSTEM_PROMPT

    rag = build_prompts("tiny", ex, "rag", k=50, index=ExampleIndex(long_train), max_tokens=8)
    system = rag[0][0]["content"]  # the product's RAG prompt (rag.generate), fitted to the context
    assert rag[0][0]["role"] == "system" and SYSTEM_PROMPT in system and "[1] Request:" in system
    assert 1 <= system.count("Request:") < 50 and token_counter(tokenizer)(rag[0]) <= context - 8


def test_forgetting_check_same_model_is_no_change(sets):
    from graftlm.evals.forgetting import forgetting_check

    out = forgetting_check("tiny", base_model="tiny", max_tokens=4)
    assert out["n"] == 32 and out["change"] == 0 and not out["forgot"]


def test_general_knowledge_set_ships_inside_the_package():
    import fnmatch
    import tomllib
    from pathlib import Path

    import graftlm
    from graftlm.evals.forgetting import GENERAL_KNOWLEDGE

    package = Path(graftlm.__file__).resolve().parent
    assert GENERAL_KNOWLEDGE.is_file() and GENERAL_KNOWLEDGE.is_relative_to(package / "resources")
    assert (GENERAL_KNOWLEDGE.parent / "README.md").is_file()  # provenance and license note travel with it
    assert len(GENERAL_KNOWLEDGE.read_text().splitlines()) == 32
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["graftlm"]
    assert any(fnmatch.fnmatch(GENERAL_KNOWLEDGE.relative_to(package).as_posix(), p) for p in patterns)


def test_failure_clusters_group_similar_failures():
    from graftlm.evals.failures import cluster_failures, failed_results

    run = {"scorers": ["label_accuracy"], "results": [
        *[{"question": f"freeze my card number {i}", "reference": "freeze", "prediction": "transfer",
           "scores": {"label_accuracy": 0.0}} for i in range(4)],
        *[{"question": f"what is the weather in city {i}", "reference": "oos", "prediction": "balance",
           "scores": {"label_accuracy": 0.0}} for i in range(3)],
        {"question": "ok", "reference": "balance", "prediction": "balance", "scores": {"label_accuracy": 1.0}}]}
    failed = failed_results(run)
    assert len(failed) == 7
    clusters = cluster_failures(failed, k=2)
    assert [c["size"] for c in clusters] == [4, 3]
    assert clusters[0]["common_references"] == [("freeze", 4)] and len(clusters[0]["samples"]) == 3
