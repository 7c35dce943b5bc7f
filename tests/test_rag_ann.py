"""Dense search through the HNSW index (usearch): recall vs exact on random data, filters, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from graftlm.rag import ann
from graftlm.rag.backend import DocumentRows, KnowledgeBase
from graftlm.rag.chunking import Chunk
from graftlm.rag.sqlite_store import SQLiteBackend

DIM = 32


def kb_():
    return KnowledgeBase(id="kbann1", name="t", chunk_size=500, chunk_overlap=0, embedding_model="x",
                         dimension=DIM, created_at=0.0)


def unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store, kb, vectors, per_doc=10):
    docs = []
    for d in range(len(vectors) // per_doc):
        chunks = [Chunk(n, 0, 1, "x", 1) for n in range(per_doc)]
        docs.append(DocumentRows(f"d{d}", {"shard": d % 10}, 1, chunks, vectors[d * per_doc:(d + 1) * per_doc]))
    store.replace_documents(kb, docs)


def exact(vectors, q, k, keep=None):
    sims = vectors @ q
    if keep is not None:
        sims = np.where(keep, sims, -np.inf)
    return set(np.argsort(-sims)[:k].tolist())


@pytest.fixture
def approx(monkeypatch):
    monkeypatch.setattr(ann, "EXACT_BELOW", 0)  # use the graph even on a small knowledge base
    monkeypatch.setattr(ann, "PREFILTER_MAX", 0)  # and post-filter with over-fetch


def test_hnsw_recall_at_10_vs_exact_on_random_data(tmp_path, approx):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 5000)
    store, kb = SQLiteBackend(tmp_path / "rag.db"), kb_()
    store.insert_kb(kb)
    fill(store, kb, vectors)
    rowid0 = store.conn.execute("SELECT min(id) FROM rag_chunks").fetchone()[0]
    recalls = []
    for q in unit(rng, 50):
        got = {r - rowid0 for r, _ in store.dense(kb, q, 10, {})}
        recalls.append(len(got & exact(vectors, q, 10)) / 10)
    assert np.mean(recalls) >= 0.98, np.mean(recalls)
    # scores are cosine similarities, best first
    hits = store.dense(kb, vectors[7], 3, {})
    assert hits[0][0] == rowid0 + 7 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


@pytest.mark.parametrize("mode", ["post-filter", "pre-filter", "exact"])
def test_filters_return_only_matching_chunks(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(ann, "EXACT_BELOW", 10 ** 9 if mode == "exact" else 0)
    monkeypatch.setattr(ann, "PREFILTER_MAX", 10 ** 9 if mode == "pre-filter" else 0)
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3000)
    store, kb = SQLiteBackend(tmp_path / "rag.db"), kb_()
    store.insert_kb(kb)
    fill(store, kb, vectors)
    rowid0 = store.conn.execute("SELECT min(id) FROM rag_chunks").fetchone()[0]
    shard = (np.arange(len(vectors)) // 10) % 10
    recalls = []
    for q in unit(rng, 20):
        hits = store.dense(kb, q, 10, {"shard": 3})
        assert len(hits) == 10
        assert all(shard[r - rowid0] == 3 for r, _ in hits)  # nothing outside the filter
        recalls.append(len({r - rowid0 for r, _ in hits} & exact(vectors, q, 10, shard == 3)) / 10)
    assert np.mean(recalls) >= 0.95
    assert store.dense(kb, vectors[0], 10, {"shard": "none"}) == []


def test_index_follows_deletes_and_reloads_from_disk(tmp_path, approx, monkeypatch):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 500)
    path = tmp_path / "rag.db"
    store, kb = SQLiteBackend(path), kb_()
    store.insert_kb(kb)
    fill(store, kb, vectors)
    rowid0 = store.conn.execute("SELECT min(id) FROM rag_chunks").fetchone()[0]
    assert store.dense(kb, vectors[15], 1, {})[0][0] == rowid0 + 15
    assert store.delete_document(kb, "d1")  # chunks 10..19
    assert all(not 10 <= r - rowid0 < 20 for r, _ in store.dense(kb, vectors[15], 20, {}))
    assert store.consistency(kb)["ann"] == 490
    store.close()
    assert any((tmp_path / "index" / kb.id).glob("dense.*/dense.usearch"))
    assert (tmp_path / "index").stat().st_mode & 0o077 == 0  # derived from the documents: as private as they are
    monkeypatch.setattr(SQLiteBackend, "_build", lambda *a, **k: pytest.fail("rebuilt instead of loading"))
    again = SQLiteBackend(path)
    assert again.dense(kb, vectors[25], 1, {})[0][0] == rowid0 + 25
    assert again.consistency(kb)["ann"] == 490
    again.close()
