"""Knowledge bases on SQLite with the real all-MiniLM-L6-v2: ingest, replace, delete, search, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graftlm import rag
from graftlm.errors import Conflict, GraftError, NotFound

DOCS = [
    {"id": "cats", "text": "# Cats\n\nCats are small furry animals. A cat purrs when it is happy.",
     "metadata": {"topic": "pets", "year": 2021}},
    {"id": "dogs", "text": "Dogs bark at the mailman. A loyal dog guards the house.",
     "metadata": {"topic": "pets", "year": 2022}},
    {"id": "stocks", "text": "The stock market fell sharply as investors sold shares.",
     "metadata": {"topic": "finance", "year": 2022}},
    {"id": "rockets", "text": "Rockets carry satellites into orbit around the earth.",
     "metadata": {"topic": "space", "year": 2020}},
]


@pytest.fixture
def db(tmp_path):
    yield tmp_path / "rag.db"
    rag.close_stores()


@pytest.fixture
def kb(db):
    kb = rag.create_kb("animals", chunk_size=64, chunk_overlap=8, db=db)
    rag.ingest_documents(kb, DOCS, db=db)
    return kb


def test_sqlean_loads_sqlite_vec_and_fts5():
    from graftlm.rag.sqlite_store import connect

    conn = connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE v USING vec0(embedding float[2] distance_metric=cosine)")
    rows = [(1, [1.0, 0.0]), (2, [0.0, 1.0]), (3, [0.7, 0.7])]
    conn.executemany("INSERT INTO v (rowid, embedding) VALUES (?, ?)",
                     [(i, np.array(e, dtype=np.float32).tobytes()) for i, e in rows])
    q = np.array([1.0, 0.1], dtype=np.float32).tobytes()
    knn = conn.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = 2 ORDER BY distance", (q,)).fetchall()
    assert [r[0] for r in knn] == [1, 3]
    conn.execute("CREATE VIRTUAL TABLE f USING fts5(text, tokenize='porter unicode61')")
    conn.executemany("INSERT INTO f (rowid, text) VALUES (?, ?)", [(1, "running dogs"), (2, "a cat sat")])
    assert conn.execute("SELECT rowid FROM f WHERE f MATCH '\"run\"'").fetchall() == [(1,)]


def test_kb_lifecycle(db):
    kb = rag.create_kb("docs", db=db)
    assert kb.embedding_model == "all-MiniLM-L6-v2" and kb.dimension == 384 and kb.chunk_size == 250
    assert rag.get_kb("docs", db=db) == kb == rag.get_kb(kb.id, db=db)
    assert [k.name for k in rag.list_kbs(db=db)] == ["docs"]
    with pytest.raises(Conflict, match="already exists"):
        rag.create_kb("docs", db=db)
    with pytest.raises(GraftError, match="chunk_size must be between 1 and 254"):
        rag.create_kb("big", chunk_size=512, db=db)
    with pytest.raises(NotFound, match="embedding model 'nope'"):
        rag.create_kb("x", embedding_model="nope", db=db)
    rag.delete_kb("docs", db=db)
    assert rag.list_kbs(db=db) == []
    with pytest.raises(NotFound, match="knowledge base 'docs' not found"):
        rag.search("docs", "cats", db=db)


def test_search_modes_and_result_shape(kb, db):
    for mode in rag.MODES:
        results = rag.search(kb, "Why do cats purr?", mode=mode, top_k=2, db=db)
        assert results[0]["document_id"] == "cats", mode
        r = results[0]
        assert set(r) == {"document_id", "chunk_id", "text", "score", "metadata", "start", "end", "mode", "ranker"}
        assert r["chunk_id"] == "cats#0" and r["mode"] == mode and r["ranker"] is None
        assert r["text"] == DOCS[0]["text"][r["start"]:r["end"]]
        assert r["metadata"] == {"topic": "pets", "year": 2021}


def test_keyword_ors_terms_stems_and_drops_stop_words(kb, db):
    # implicit AND would find nothing: no document has both "satellites" and "shares"
    hits = rag.search(kb, "what are the satellites and shares?", mode="keyword", db=db)
    assert {h["document_id"] for h in hits} == {"rockets", "stocks"}
    # stemming: "barking" finds "bark"; FTS syntax in user input is harmless
    assert [h["document_id"] for h in rag.search(kb, 'barking" OR NEAR(* -', mode="keyword", db=db)] == ["dogs"]
    # only stop words: no keyword hits, dense still answers in hybrid
    assert rag.search(kb, "what is it", mode="keyword", db=db) == []
    assert len(rag.search(kb, "what is it", mode="hybrid", top_k=3, db=db)) == 3


def test_filters_apply_before_top_k(kb, db):
    for mode in rag.MODES:
        hits = rag.search(kb, "cats purr dog", mode=mode, top_k=2, filters={"topic": "pets", "year": 2022}, db=db)
        assert [h["document_id"] for h in hits] == ["dogs"], mode
    assert rag.search(kb, "orbit", mode="dense", top_k=1, filters={"topic": "space"}, db=db)[0]["document_id"] \
        == "rockets"
    assert rag.search(kb, "orbit", mode="hybrid", filters={"topic": "nothing"}, db=db) == []
    with pytest.raises(GraftError, match="filter key"):
        rag.search(kb, "x", filters={"a'b": 1}, db=db)


def test_replace_and_delete_keep_tables_consistent(kb, db):
    store = rag.open_store(db)
    assert store.consistency(kb) == dict.fromkeys(("documents_chunks", "chunks", "keyword", "bm25", "vectors", "ann"), 4)
    long_text = "\n\n".join(f"Paragraph {i} about zebras and their stripes in the savanna." for i in range(20))
    rag.ingest_documents(kb, [{"id": "cats", "text": long_text, "metadata": {"topic": "zoo"}}], db=db)
    counts = store.consistency(kb)
    assert counts["chunks"] > 4 and len(set(counts.values())) == 1
    # the old text is gone from every index
    assert [h["document_id"] for h in rag.search(kb, "purr", mode="keyword", db=db)] == []
    assert all(h["document_id"] != "cats" or "zebras" in h["text"]
               for h in rag.search(kb, "cats purr", mode="dense", top_k=50, db=db))
    assert rag.search(kb, "zebras", mode="keyword", top_k=1, db=db)[0]["metadata"] == {"topic": "zoo"}
    rag.delete_document(kb, "cats", db=db)
    assert store.consistency(kb) == dict.fromkeys(("documents_chunks", "chunks", "keyword", "bm25", "vectors", "ann"), 3)
    assert all(h["document_id"] != "cats" for h in rag.search(kb, "zebras cats", mode="hybrid", top_k=10, db=db))
    with pytest.raises(NotFound, match="document 'cats' not found"):
        rag.delete_document(kb, "cats", db=db)


def test_rerank_always_works_and_says_which_ranker(kb, db):
    hits = rag.search(kb, "loyal dog", rerank=True, top_k=2, db=db)
    assert hits[0]["document_id"] == "dogs" and all(h["ranker"] == "cosine" for h in hits)
    hits = rag.search(kb, "pets", rerank=True, ranker="mmr", top_k=3, db=db)
    assert len({h["document_id"] for h in hits}) == 3 and hits[0]["ranker"] == "mmr"
    hits = rag.search(kb, "pets", rerank=True, ranker=lambda q, ts: [float("orbit" in t) for t in ts], db=db)
    assert hits[0]["document_id"] == "rockets"


def test_empty_kb_and_bad_input_errors(db):
    kb = rag.create_kb("empty", db=db)
    with pytest.raises(GraftError, match="'empty' is empty"):
        rag.search(kb, "anything", db=db)
    with pytest.raises(GraftError, match="mode must be one of"):
        rag.search(kb, "x", mode="fuzzy", db=db)
    with pytest.raises(GraftError, match="query must be a non-empty string"):
        rag.search(kb, "  ", db=db)
    with pytest.raises(GraftError, match=r'docs\[1\] \(id \'b\'\): field "text"'):
        rag.ingest_documents(kb, [{"id": "a", "text": "ok"}, {"id": "b", "text": ""}], db=db)
    assert rag.describe_kb(kb, db=db)["documents"] == 0  # nothing stored from the rejected batch


def test_ingest_files_reports_bad_files_and_keeps_the_rest(kb, db, tmp_path):
    (tmp_path / "notes.md").write_text("# Notes\n\nThe aardvark eats ants at night.")
    (tmp_path / "page.html").write_text("<html><head><title>Page</title><style>x{}</style></head><body>"
                                        "<h1>Owls</h1><p>Owls hunt mice.</p><script>var a;</script></body></html>")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r1", "text": "Penguins swim.", "metadata": {"k": 1}})
                                         + "\n" + json.dumps({"text": "Parrots talk."}) + "\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 5}\n')
    (tmp_path / "bad.pdf").write_bytes(b"not a pdf at all")
    (tmp_path / "data.xlsx").write_bytes(b"x")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    names = ["notes.md", "page.html", "rows.jsonl", "bad.jsonl", "bad.pdf", "data.xlsx", "latin1.txt", "missing.txt"]
    progress = []
    reports = rag.ingest_files(kb, [tmp_path / n for n in names], progress=lambda d, t: progress.append(d), db=db)
    ok = {r["path"].split("/")[-1]: r for r in reports}
    assert [ok[n]["ok"] for n in names] == [True, True, True, False, False, False, False, False]
    assert ok["rows.jsonl"]["documents"] == 2 and progress == list(range(1, 9))
    assert ok["bad.jsonl"]["error"] == 'bad.jsonl line 2: field "text" must be a string'
    assert "not a readable PDF" in ok["bad.pdf"]["error"]
    assert "unsupported file type '.xlsx'" in ok["data.xlsx"]["error"]
    assert "not UTF-8" in ok["latin1.txt"]["error"]
    assert "no such file" in ok["missing.txt"]["error"]
    # earlier documents and the good files are all searchable
    assert rag.describe_kb(kb, db=db)["documents"] == 4 + 4
    owl = rag.search(kb, "owls hunting", mode="keyword", top_k=1, db=db)[0]
    assert owl["document_id"] == "page.html" and owl["text"] == "# Owls\n\nOwls hunt mice."
    assert owl["metadata"] == {"source": "page.html", "title": "Page"}
    assert rag.search(kb, "penguins", mode="keyword", top_k=1, db=db)[0]["metadata"] == {"source": "rows.jsonl", "k": 1}


def test_openai_embeddings_shape():
    body = rag.openai_embeddings(["hello world", "graft"])
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 384 and body["usage"]["prompt_tokens"] > 4
    v = rag.embed(["hello world"])
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v[0])) - 1) < 1e-5
