"""Knowledge bases on PostgreSQL (tsvector BM25 + pgvector) behave like the SQLite backend.

Needs GRAFT_TEST_POSTGRES_URL (``.ci/postgres.sh`` starts a server with pgvector); each test gets a fresh database.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from graftlm import rag
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.rag.postgres_store import _tsquery_text, connect_url

POSTGRES_URL = os.environ.get("GRAFT_TEST_POSTGRES_URL")

DOCS = [
    {"id": "cats", "text": "# Cats\n\nCats are small furry animals. A cat purrs when it is happy.",
     "metadata": {"topic": "pets", "year": 2021}},
    {"id": "dogs", "text": "Dogs bark at the mailman. A loyal dog guards the house.",
     "metadata": {"topic": "pets", "year": 2022}},
    {"id": "stocks", "text": "The stock market fell sharply as investors sold shares.",
     "metadata": {"topic": "finance", "year": 2022, "draft": None}},
    {"id": "rockets", "text": "Rockets carry satellites into orbit around the earth.",
     "metadata": {"topic": "space", "year": 2020}},
    {"id": "bread", "text": "Bake the bread in a hot oven until the crust is golden brown.",
     "metadata": {"topic": "cooking", "year": 2021}},
    {"id": "pasta", "text": "Boil the pasta in salted water, then toss it with tomato sauce.",
     "metadata": {"topic": "cooking", "year": 2023}},
]
QUERIES = ["Why do cats purr?", "loyal dog barking", "stock market investors", "satellites in orbit",
           "how to bake bread", "tomato sauce pasta", "animals that are happy"]


def test_urls_and_tsquery_quoting():
    assert connect_url("postgresql+psycopg://u@h:1/db") == "postgresql://u@h:1/db"
    assert connect_url("postgres://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(GraftError, match="not a PostgreSQL URL"):
        connect_url("mysql://u@h/db")
    assert _tsquery_text(["cat", "o'neil", "a\\b"]) == "'cat' | 'o''neil' | 'a\\\\b'"


def _admin():
    import psycopg

    return psycopg.connect(connect_url(POSTGRES_URL), autocommit=True)


@pytest.fixture
def pg():
    """A fresh database on the test server (``postgresql+psycopg://`` form), dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set GRAFT_TEST_POSTGRES_URL (.ci/postgres.sh starts one with pgvector)")
    try:
        with _admin() as conn:
            if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
                pytest.skip("the PostgreSQL server has no pgvector extension (postgresql-<ver>-pgvector)")
            name = "graft_rag_" + uuid.uuid4().hex[:12]
            conn.execute(f"CREATE DATABASE {name}")
    except ImportError:
        pytest.skip("psycopg is not installed")
    url = POSTGRES_URL.rpartition("/")[0] + "/" + name
    yield url
    rag.close_stores()
    with _admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def kb(pg):
    kb = rag.create_kb("corpus", chunk_size=64, chunk_overlap=8, db=pg)
    rag.ingest_documents(kb, DOCS, db=pg)
    return kb


@pytest.mark.postgres
def test_kb_lifecycle_and_routing(pg):
    from graftlm.rag.postgres_store import PostgresBackend

    assert isinstance(rag.open_store(pg), PostgresBackend)
    assert isinstance(rag.open_store(pg.replace("postgresql+psycopg://", "postgresql://")), PostgresBackend)
    kb = rag.create_kb("docs", db=pg)
    assert kb.dimension == 384 and rag.get_kb("docs", db=pg) == kb == rag.get_kb(kb.id, db=pg)
    assert [k.name for k in rag.list_kbs(db=pg)] == ["docs"]
    with pytest.raises(Conflict, match="already exists"):
        rag.create_kb("docs", db=pg)
    with pytest.raises(GraftError, match="'docs' is empty"):
        rag.search(kb, "anything", db=pg)
    rag.ingest_documents(kb, DOCS[:2], db=pg)
    assert rag.describe_kb("docs", db=pg)["documents"] == 2
    rag.delete_kb("docs", db=pg)
    assert rag.list_kbs(db=pg) == []
    with pytest.raises(NotFound, match="knowledge base 'docs' not found"):
        rag.search("docs", "cats", db=pg)
    with rag.open_store(pg).conn.cursor() as cur:  # nothing left behind, index included
        assert cur.execute("SELECT count(*) FROM rag_chunks").fetchone()[0] == 0
        assert cur.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'rag_hnsw_%'").fetchone()[0] == 0


@pytest.mark.postgres
def test_search_modes_and_result_shape(kb, pg):
    for mode in rag.MODES:
        results = rag.search(kb, "Why do cats purr?", mode=mode, top_k=2, db=pg)
        assert results[0]["document_id"] == "cats", mode
        r = results[0]
        assert set(r) == {"document_id", "chunk_id", "text", "score", "metadata", "start", "end", "mode", "ranker"}
        assert r["chunk_id"] == "cats#0" and r["mode"] == mode and r["ranker"] is None
        assert r["text"] == DOCS[0]["text"][r["start"]:r["end"]]
        assert r["metadata"] == {"topic": "pets", "year": 2021}
        assert r["score"] > 0


@pytest.mark.postgres
def test_same_top_results_as_sqlite(kb, pg, tmp_path):
    lite = tmp_path / "rag.db"
    lkb = rag.create_kb("corpus", chunk_size=64, chunk_overlap=8, db=lite)
    rag.ingest_documents(lkb, DOCS, db=lite)
    for q in QUERIES:
        for mode in rag.MODES:
            got = rag.search(kb, q, mode=mode, top_k=3, db=pg)
            want = rag.search(lkb, q, mode=mode, top_k=3, db=lite)
            assert got[0]["chunk_id"] == want[0]["chunk_id"], (q, mode)
            if mode == "dense":  # same vectors, same cosine
                assert [h["chunk_id"] for h in got] == [h["chunk_id"] for h in want], q
                assert np.allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-4)
            if mode == "keyword":  # BM25 on both sides (tokenizers differ a little)
                assert {h["chunk_id"] for h in got} == {h["chunk_id"] for h in want}, q
                assert got[0]["score"] == pytest.approx(want[0]["score"], rel=0.35), q


@pytest.mark.postgres
def test_keyword_ors_terms_stems_and_drops_stop_words(kb, pg):
    # plainto_tsquery would AND: no document has both "satellites" and "shares"
    hits = rag.search(kb, "what are the satellites and shares?", mode="keyword", db=pg)
    assert {h["document_id"] for h in hits} == {"rockets", "stocks"}
    # stemming: "barking" finds "bark"; tsquery syntax in user input is harmless
    for q in ['barking" OR NEAR(* -', "barking & !:* | <->", "barking')::tsquery; DROP TABLE rag_chunks; --"]:
        assert [h["document_id"] for h in rag.search(kb, q, mode="keyword", db=pg)] == ["dogs"], q
    # only stop words: no keyword hits, dense still answers in hybrid
    assert rag.search(kb, "what is it", mode="keyword", db=pg) == []
    assert len(rag.search(kb, "what is it", mode="hybrid", top_k=3, db=pg)) == 3
    # a document matching more query terms ranks first; rarer terms weigh more
    hits = rag.search(kb, "bread oven pasta", mode="keyword", db=pg)
    assert [h["document_id"] for h in hits] == ["bread", "pasta"] and hits[0]["score"] > hits[1]["score"]


@pytest.mark.postgres
def test_filters_apply_before_top_k(kb, pg):
    for mode in rag.MODES:
        hits = rag.search(kb, "cats purr dog", mode=mode, top_k=2, filters={"topic": "pets", "year": 2022}, db=pg)
        assert [h["document_id"] for h in hits] == ["dogs"], mode
    assert rag.search(kb, "orbit", mode="dense", top_k=1, filters={"topic": "space"}, db=pg)[0]["document_id"] \
        == "rockets"
    assert rag.search(kb, "orbit", mode="hybrid", filters={"topic": "nothing"}, db=pg) == []
    # a null filter matches a JSON null or a missing key, as in SQLite
    hits = rag.search(kb, "market shares", mode="keyword", filters={"draft": None, "year": 2022}, db=pg)
    assert [h["document_id"] for h in hits] == ["stocks"]
    hits = rag.search(kb, "pets", mode="dense", top_k=10, filters={"draft": None}, db=pg)
    assert len(hits) == len(DOCS)
    with pytest.raises(GraftError, match="filter key"):
        rag.search(kb, "x", filters={"a'b": 1}, db=pg)


@pytest.mark.postgres
def test_replace_and_delete_keep_everything_consistent(kb, pg):
    store = rag.open_store(pg)
    n = len(DOCS)
    assert store.consistency(kb) == dict.fromkeys(("documents_chunks", "chunks", "fts", "vectors", "stats"), n)
    long_text = "\n\n".join(f"Paragraph {i} about zebras and their stripes in the savanna." for i in range(20))
    rag.ingest_documents(kb, [{"id": "cats", "text": long_text, "metadata": {"topic": "zoo"}}], db=pg)
    counts = store.consistency(kb)
    assert counts["chunks"] > n and len(set(counts.values())) == 1
    # the old text is gone from every index
    assert rag.search(kb, "purr", mode="keyword", db=pg) == []
    assert all(h["document_id"] != "cats" or "zebras" in h["text"]
               for h in rag.search(kb, "cats purr", mode="dense", top_k=50, db=pg))
    assert rag.search(kb, "zebras", mode="keyword", top_k=1, db=pg)[0]["metadata"] == {"topic": "zoo"}
    rag.delete_document(kb, "cats", db=pg)
    assert store.consistency(kb) == dict.fromkeys(("documents_chunks", "chunks", "fts", "vectors", "stats"), n - 1)
    assert all(h["document_id"] != "cats" for h in rag.search(kb, "zebras cats", mode="hybrid", top_k=10, db=pg))
    with pytest.raises(NotFound, match="document 'cats' not found"):
        rag.delete_document(kb, "cats", db=pg)


@pytest.mark.postgres
def test_rerank_reads_vectors_back(kb, pg):
    hits = rag.search(kb, "loyal dog", rerank=True, top_k=2, db=pg)
    assert hits[0]["document_id"] == "dogs" and all(h["ranker"] == "cosine" for h in hits)
    hits = rag.search(kb, "pets", rerank=True, ranker="mmr", top_k=3, db=pg)
    assert len({h["document_id"] for h in hits}) == 3 and hits[0]["ranker"] == "mmr"
    store = rag.open_store(pg)
    ids = [h[0] for h in store.dense(kb, rag.embed(["loyal dog"])[0], 2, {})]
    v = store.vectors(kb, ids)
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


@pytest.mark.postgres
def test_injected_vectors_and_hnsw_index_is_usable(pg):
    """Vectors stored as given (no model), and the dense query is the shape the per-KB HNSW index serves."""
    from graftlm.rag.backend import DocumentRows, KnowledgeBase
    from graftlm.rag.chunking import Chunk

    store = rag.open_store(pg)
    kb = KnowledgeBase(id=uuid.uuid4().hex, name="tiny", chunk_size=8, chunk_overlap=0,
                       embedding_model="none", dimension=3, created_at=0.0)
    store.insert_kb(kb)
    axes = np.eye(3, dtype=np.float32)
    store.replace_documents(kb, [DocumentRows(f"d{i}", {"i": i}, 5, [Chunk(0, 0, 5, f"word{i}", 1)], axes[i:i + 1])
                                 for i in range(3)])
    q = np.array([0.1, 0.9, 0.2], dtype=np.float32)
    hits = store.dense(kb, q / np.linalg.norm(q), 3, {})
    assert [store.fetch(kb, [h[0]])[h[0]]["document_id"] for h in hits] == ["d1", "d2", "d0"]
    assert hits[0][1] == pytest.approx(0.9 / np.linalg.norm(q), abs=1e-5)
    with store.conn.transaction():
        store.conn.execute("SET LOCAL enable_seqscan = off")
        store.conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(r[0] for r in store.conn.execute(
            f"EXPLAIN SELECT c.id FROM rag_chunks c WHERE c.kb_id = '{kb.id}' "
            "ORDER BY (c.embedding::vector(3) <=> %s::vector(3)) LIMIT 2", ("[0,1,0]",)))
    assert f"rag_hnsw_{kb.id}" in plan
    with pytest.raises(GraftError, match="vectors for 1 chunks"):  # vectors must match the chunks
        store.replace_documents(kb, [DocumentRows("bad", {}, 5, [Chunk(0, 0, 1, "x", 1)], axes[:2])])
    assert store.counts(kb) == (3, 3)


class _FakePostgres:
    """Stands in for PostgresBackend (no server): records its URL, holds one knowledge base."""

    def __init__(self, url):
        from graftlm.rag.backend import KnowledgeBase

        self.url = url
        self.kb = KnowledgeBase("kb-pg", "from-postgres", 250, 32, "all-MiniLM-L6-v2", 384, 0.0)

    def list_kbs(self):
        return [self.kb]

    def find_kb(self, key):
        return self.kb if key in (self.kb.id, self.kb.name) else None

    def counts(self, kb):
        return (0, 0)

    def close(self):
        pass


def test_rag_database_url_setting_selects_postgres_when_no_db_is_given(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from graftlm.cli import app
    from graftlm.config import get_settings, reset_settings
    from graftlm.rag import postgres_store
    from graftlm.rag.sqlite_store import SQLiteBackend

    url = "postgresql+psycopg://graft@db.example:5432/kbs"
    monkeypatch.setattr(postgres_store, "PostgresBackend", _FakePostgres)
    monkeypatch.setenv("GRAFT_RAG_DATABASE_URL", url)
    reset_settings()
    try:
        default = rag.open_store()
        assert isinstance(default, _FakePostgres) and default.url == url
        assert isinstance(rag.open_store(tmp_path / "explicit.db"), SQLiteBackend)  # an explicit db still wins
        listed = CliRunner().invoke(app, ["kb", "list", "--json"])  # `graft kb list` reaches PostgreSQL
        assert listed.exit_code == 0 and "from-postgres" in listed.output
    finally:
        rag.close_stores()
    monkeypatch.delenv("GRAFT_RAG_DATABASE_URL")
    reset_settings()
    assert isinstance(rag.open_store(), SQLiteBackend)
    rag.close_stores()
    monkeypatch.setenv("GRAFT_RAG_DATABASE_URL", "sqlite:///kbs.db")
    reset_settings()
    with pytest.raises(ValueError, match="must be a PostgreSQL URL"):
        get_settings()
    monkeypatch.delenv("GRAFT_RAG_DATABASE_URL")
    reset_settings()
