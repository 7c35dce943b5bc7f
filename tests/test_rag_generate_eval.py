"""RAGAS-style metrics against hand-computed values with a stub judge, and the `graft kb` / `graft rag eval` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from graftlm.rag import ragas


def stub_judge(yes_if):
    """Replies "Yes." when the statement/passage line of the prompt contains one of the words, else "No"."""
    def judge(prompts):
        replies = []
        for p in prompts:
            last = [line for line in p.splitlines() if line.startswith(("Statement:", "Sentence:", "Passage:"))]
            if not last:  # the question-writing prompt: no question (answer relevancy falls back)
                replies.append("")
                continue
            replies.append("Yes." if any(w in last[0] for w in yes_if) else "No, it is not.")
        return replies
    return judge


def test_sentences_and_yes_parsing():
    assert ragas.sentences("Paris is in France [1]. The tower is blue [2, 3]!\nIt is tall.") == [
        "Paris is in France.", "The tower is blue!", "It is tall."]
    assert ragas.sentences("  ") == []
    assert [ragas.is_yes(r) for r in ("Yes, it is", "yes.", "**Yes**", "No", "", "I think yes")] == [
        True, True, True, False, False, False]


def test_faithfulness_is_the_share_of_supported_claims():
    answer = "Paris is in France [1]. The tower is blue. It is tall."
    assert ragas.faithfulness(answer, ["Paris is the capital of France."], stub_judge(["Paris", "tall"])) == 2 / 3
    assert ragas.faithfulness("", ["x"], stub_judge([])) is None


def test_answer_relevancy_is_the_cosine_with_generated_questions():
    vectors = {"Where is Paris?": [1.0, 0.0], "Which country is Paris in?": [0.6, 0.8], "In France.": [0.0, 1.0]}
    embed = lambda texts: np.array([vectors[t] for t in texts])
    asked = ragas.answer_relevancy("Where is Paris?", "In France.", lambda ps: ["Which country is Paris in?"] * len(ps),
                                   embed)
    assert math.isclose(asked, 0.6)
    # no question comes back: the question-answer cosine
    assert math.isclose(ragas.answer_relevancy("Where is Paris?", "In France.", lambda ps: [""] * len(ps), embed), 0.0)
    # n generated questions: their mean cosine
    two = iter(["Which country is Paris in?", "Where is Paris?"])
    assert math.isclose(ragas.answer_relevancy("Where is Paris?", "In France.", lambda ps: [next(two) for _ in ps],
                                               embed, n=2), (0.6 + 1.0) / 2)


def test_context_precision_is_rank_weighted():
    contexts = ["Paris is in France.", "Cats sleep.", "The Eiffel Tower is in Paris."]
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert math.isclose(ragas.context_precision("Where?", contexts, stub_judge(["Paris"])), (1 + 2 / 3) / 2)
    # relevant only at rank 2: (1/2) / 1
    assert math.isclose(ragas.context_precision("Where?", contexts, stub_judge(["Cats"])), 0.5)
    assert ragas.context_precision("Where?", contexts, stub_judge(["nothing"])) == 0.0
    assert ragas.context_precision("Where?", [], stub_judge([])) is None


def test_context_recall_is_the_share_of_attributable_reference_sentences():
    reference = "Paris is the capital. It has 2 million people. It has a tower."
    assert math.isclose(ragas.context_recall(reference, ["Paris ..."], stub_judge(["capital", "tower"])), 2 / 3)
    assert ragas.context_recall("", ["x"], stub_judge([])) is None


def test_evaluate_averages_what_is_defined():
    judge = stub_judge(["Paris"])
    embed = lambda texts: np.array([[1.0, 0.0]] * len(texts))
    rows = [{"question": "q1", "answer": "Paris.", "contexts": ["Paris"], "reference": "Paris."},
            {"question": "q2", "answer": "No idea.", "contexts": ["Cats"], "reference": None}]
    out = ragas.evaluate(rows, judge, embed)
    assert out["per_question"][0] == {"faithfulness": 1.0, "answer_relevancy": 1.0, "context_precision": 1.0,
                                      "context_recall": 1.0}
    assert out["per_question"][1]["context_recall"] is None
    assert out["mean"] == {"faithfulness": 0.5, "answer_relevancy": 1.0, "context_precision": 0.5,
                           "context_recall": 1.0}


@pytest.fixture
def tiny_served(varied_model_dir, monkeypatch):
    from graftlm.models.catalog import import_model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    import_model(varied_model_dir, "tiny")
    yield
    from graftlm.clusters.hosting import shutdown_runtime
    from graftlm.rag import close_stores

    shutdown_runtime()
    close_stores()


def test_kb_cli_and_rag_eval(tmp_path, tiny_served):
    from graftlm.cli import app

    runner = CliRunner()
    (tmp_path / "cats.txt").write_text("Cats sleep sixteen hours a day.")
    (tmp_path / "paris.md").write_text("# Paris\n\nParis is the capital of France.")
    (tmp_path / "bad.xyz").write_text("?")
    r = runner.invoke(app, ["kb", "create", "facts", "--chunk-size", "64", "--chunk-overlap", "8"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["kb", "ingest", "facts", str(tmp_path / "cats.txt"), str(tmp_path / "paris.md"),
                            str(tmp_path / "bad.xyz")])
    assert r.exit_code == 0 and "unsupported file type" in r.output, r.output
    listed = json.loads(runner.invoke(app, ["kb", "list", "--json"]).output)
    assert listed[0]["name"] == "facts" and listed[0]["documents"] == 2
    hits = json.loads(runner.invoke(app, ["kb", "search", "facts", "capital of France", "--json"]).output)
    assert hits[0]["document_id"] == "paris.md"
    r = runner.invoke(app, ["kb", "search", "facts", "x", "--mode", "fuzzy"])
    assert r.exit_code == 2 and "mode must be one of" in r.output

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "1", "question": "What is the capital of France?",
                                     "answer": "Paris is the capital of France.", "relevant": ["paris.md"]}) + "\n"
                         + json.dumps({"id": "2", "question": "How long do cats sleep?",
                                       "relevant": ["cats.txt"]}) + "\n")
    out = tmp_path / "report"
    r = runner.invoke(app, ["rag", "eval", "--kb", "facts", "--questions", str(questions), "--modes",
                            "keyword,hybrid+rerank,dense+llm:tiny", "--model", "tiny", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["modes"]) == {"keyword", "hybrid+rerank", "dense+llm:tiny"}
    keyword = report["modes"]["keyword"]
    assert keyword["retrieval"]["ndcg@10"] == 1.0 and keyword["retrieval"]["mrr"] == 1.0
    for name in ragas.METRICS:
        value = keyword["generation"][name]
        assert value is None or -1 <= value <= 1
    assert keyword["generation"]["context_precision"] is not None and len(keyword["answers"]) == 2
    md = (out / "report.md").read_text()
    assert "| keyword |" in md and "ndcg@10" in md and "faithfulness" in md
    assert "RAG eval" in r.output

    r = runner.invoke(app, ["rag", "eval", "--kb", "facts", "--questions", str(questions), "--modes", "sparse"])
    assert r.exit_code == 2 and "must be one of" in r.output
    assert runner.invoke(app, ["kb", "delete", "facts"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["kb", "list", "--json"]).output) == []
