"""RRF, MMR, rankers and retrieval metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graftlm.errors import NotFound
from graftlm.rag import metrics, rank
from graftlm.rag.fusion import rrf


def test_rrf_hand_arithmetic():
    fused = dict(rrf({"keyword": ["a", "b", "c"], "dense": ["b", "d"]}, k=60))
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63)
    assert fused["d"] == pytest.approx(1 / 62)
    order = [x for x, _ in rrf({"keyword": ["a", "b", "c"], "dense": ["b", "d"]}, k=60)]
    assert order == ["b", "a", "d", "c"]  # a (1/61) beats d (1/62); d beats c (1/63)


def test_rrf_weights_and_k():
    fused = dict(rrf({"keyword": ["a", "b"], "dense": ["b", "a"]}, k=0, weights={"keyword": 3.0, "dense": 1.0}))
    assert fused["a"] == pytest.approx(3 / 1 + 1 / 2)
    assert fused["b"] == pytest.approx(3 / 2 + 1 / 1)
    assert rrf({"keyword": ["a"], "dense": []}, weights={"keyword": 0.0}) == [("a", 0.0)]


def test_metrics_hand_values():
    rel = {"d1": 1.0, "d2": 1.0, "d3": 1.0}
    ranked = ["d9", "d1", "d8", "d2"]
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/log2(4)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    assert metrics.ndcg_at_k(ranked, rel, 10) == pytest.approx(expected)
    assert metrics.recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(ranked, rel, 100) == pytest.approx(2 / 3)
    assert metrics.precision_at_k(ranked, rel, 4) == pytest.approx(0.5)
    assert metrics.reciprocal_rank(ranked, rel) == pytest.approx(0.5)
    assert metrics.reciprocal_rank(["x"], rel) == 0.0
    graded = {"a": 2.0, "b": 1.0}  # DCG of [b, a] = 1 + 3/log2(3); ideal = 3 + 1/log2(3)
    assert metrics.ndcg_at_k(["b", "a"], graded, 10) == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))


def test_evaluate_averages_judged_queries_and_dedupes_chunks():
    qrels = {"1": {"a": 1.0}, "2": {"b": 1.0}, "3": {}}
    run = {"1": ["a", "a", "c"], "2": ["c", "c", "b"]}  # q2: b is the 2nd distinct doc
    out = metrics.evaluate(run, qrels, k=10, recall_k=100)
    assert out["mrr"] == pytest.approx((1 + 0.5) / 2)
    assert out["recall@100"] == pytest.approx(1.0)
    assert out["precision@10"] == pytest.approx((0.1 + 0.1) / 2)


def test_load_qrels_trec_and_cisi(tmp_path):
    trec = tmp_path / "qrels.trec"
    trec.write_text("1 0 d1 2\n1 0 d2 0\n2 0 d3 1\n")
    assert metrics.load_qrels(trec) == {"1": {"d1": 2.0}, "2": {"d3": 1.0}}
    cisi = tmp_path / "CISI.REL"
    cisi.write_text("     1     28 0 0.000000\n     1     35\t0\t0.000000\n     2     12 0 0.000000\n")
    assert metrics.load_qrels(cisi) == {"1": {"28": 1.0, "35": 1.0}, "2": {"12": 1.0}}


def test_mmr_trades_relevance_for_diversity():
    q = np.array([1.0, 0.0], dtype=np.float32)
    a = np.array([0.9, 0.436], dtype=np.float32)
    vectors = np.stack([a, a, np.array([0.8, -0.6], dtype=np.float32)])
    assert rank.mmr(q, vectors, top_k=3, lambda_=1.0)[:2] == [0, 1]
    # with diversity the duplicate of the first pick drops below the different one
    assert rank.mmr(q, vectors, top_k=3, lambda_=0.5) == [0, 2, 1]


def test_rerank_with_a_score_function_and_unknown_ranker():
    cands = [{"text": "short"}, {"text": "a much longer passage"}, {"text": "mid size"}]
    by_length = lambda query, texts: [len(t) for t in texts]  # noqa: E731
    out, name = rank.rerank("q", cands, ranker=by_length, top_k=2)
    assert name == "<lambda>" and [c["text"] for c in out] == ["a much longer passage", "mid size"]
    assert all(c["ranker"] == "<lambda>" for c in out)
    llm = rank.llm_yes_no_scorer(lambda prompt: 0.9 if "longer" in prompt else 0.1)
    out, name = rank.rerank("which one?", cands[:2], ranker=llm, top_k=2)
    assert name == "llm-yes-no" and out[0]["text"] == "a much longer passage" and out[0]["score"] == 0.9
    with pytest.raises(NotFound, match="ranker 'nope'"):
        rank.rerank("q", cands, ranker="nope")
