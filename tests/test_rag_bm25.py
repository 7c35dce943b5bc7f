"""SQLite keyword search = Lucene BM25 (bm25s): hand-computed scores, filters, and an index that follows writes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from graftlm.rag.backend import DocumentRows, KnowledgeBase
from graftlm.rag.bm25_index import B, K1, tokenize
from graftlm.rag.chunking import Chunk
from graftlm.rag.sqlite_store import SQLiteBackend

TOY = {"a": "The cat sat on the mat.", "b": "Dogs and cats.", "c": "A dog barked loudly at the cat; the cat ran."}
# after tokenization (stop words out, Snowball stems):
#   a: cat sat mat (3)   b: dog cat (2)   c: dog bark loud cat cat ran (6)     N = 3, avgdl = 11/3
TOY_TOKENS = {"a": ["cat", "sat", "mat"], "b": ["dog", "cat"], "c": ["dog", "bark", "loud", "cat", "cat", "ran"]}


def lucene_bm25(query_terms, docs_tokens):
    """Lucene (>= 8) BM25 written out: sum over query terms of IDF * tf / (tf + k1 (1 - b + b dl / avgdl))."""
    n = len(docs_tokens)
    avgdl = sum(map(len, docs_tokens.values())) / n
    out = {}
    for doc, toks in docs_tokens.items():
        s = 0.0
        for t in query_terms:
            df = sum(t in d for d in docs_tokens.values())
            tf = toks.count(t)
            if tf:
                s += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + K1 * (1 - B + B * len(toks) / avgdl))
        out[doc] = s
    return out


def kb_(dim=4):
    return KnowledgeBase(id="kbtest1", name="t", chunk_size=500, chunk_overlap=0, embedding_model="x",
                         dimension=dim, created_at=0.0)


def rows(doc_id, text, meta=None, dim=4, vector=None):
    return DocumentRows(doc_id=doc_id, metadata=meta or {}, n_chars=len(text),
                        chunks=[Chunk(index=0, text=text, start=0, end=len(text), n_tokens=len(text.split()))],
                        vectors=np.ones((1, dim), dtype=np.float32) / 2 if vector is None else vector[None])


def text_vector(text: str, dim: int = 4) -> np.ndarray:
    v = np.random.default_rng(abs(hash(text)) % 2 ** 32).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def by_doc(store, kb, query, limit=10, filters=None):
    hits = store.keyword(kb, query.split(), limit, filters or {})
    docs = store.fetch(kb, [r for r, _ in hits])
    return {docs[r]["document_id"]: s for r, s in hits}


def test_tokenizer_matches_the_hand_checked_tokens():
    assert dict(zip(TOY, tokenize(list(TOY.values())), strict=True)) == TOY_TOKENS


def test_scores_equal_lucene_bm25_by_hand(tmp_path):
    store, kb = SQLiteBackend(tmp_path / "rag.db"), kb_()
    store.insert_kb(kb)
    store.replace_documents(kb, [rows(d, t) for d, t in TOY.items()])
    # "cat": df = 3, idf = ln(1 + 0.5/3.5); doc c: tf 2, dl 6 -> 0.13353 * 2 / (2 + 1.5 (0.25 + 0.75 * 6 / (11/3)))
    got = by_doc(store, kb, "cats")
    assert got["c"] == pytest.approx(math.log(1 + 0.5 / 3.5) * 2 / (2 + 1.5 * (0.25 + 0.75 * 6 / (11 / 3))), rel=1e-5)
    for query in ("cats", "dog barking", "mat dog", "loud cats running"):
        ref = lucene_bm25(tokenize([query])[0], TOY_TOKENS)
        got = by_doc(store, kb, query)
        assert got == pytest.approx({d: s for d, s in ref.items() if s > 0}, rel=1e-5), query
        assert list(got) == sorted(got, key=lambda d: -got[d])  # best first
    assert by_doc(store, kb, "zebra") == {}
    ref = lucene_bm25(["cat"], TOY_TOKENS)
    assert list(by_doc(store, kb, "cat", limit=1)) == [max(ref, key=ref.get)] == ["b"]  # short b beats tf-2 c


def test_filters_restrict_without_changing_scores(tmp_path):
    store, kb = SQLiteBackend(tmp_path / "rag.db"), kb_()
    store.insert_kb(kb)
    store.replace_documents(kb, [rows(d, t, {"g": "x" if d != "c" else "y"}) for d, t in TOY.items()])
    everything = by_doc(store, kb, "cat dog")
    only_x = by_doc(store, kb, "cat dog", filters={"g": "x"})
    assert set(only_x) == {"a", "b"} and only_x == pytest.approx({d: everything[d] for d in ("a", "b")})
    assert by_doc(store, kb, "cat", filters={"g": "none"}) == {}


def test_index_persists_and_reloads_without_rebuilding(tmp_path, monkeypatch):
    path = tmp_path / "rag.db"
    store, kb = SQLiteBackend(path), kb_()
    store.insert_kb(kb)
    store.replace_documents(kb, [rows(d, t) for d, t in TOY.items()])
    first = by_doc(store, kb, "dog cat")
    store.close()
    assert (tmp_path / "index" / kb.id).is_dir() and any((tmp_path / "index" / kb.id).glob("keyword.*/keyword.npz"))

    monkeypatch.setattr(SQLiteBackend, "_build", lambda *a, **k: pytest.fail("rebuilt instead of loading"))
    again = SQLiteBackend(path)
    assert by_doc(again, kb, "dog cat") == pytest.approx(first)
    # writes after the load are folded in from the change log, still without a rebuild
    again.replace_documents(kb, [rows("d", "A dog and a cat and a dog.")])
    assert again.delete_document(kb, "a")
    live = {**{k: v for k, v in TOY_TOKENS.items() if k != "a"}, "d": tokenize(["A dog and a cat and a dog."])[0]}
    ref = lucene_bm25(tokenize(["dog cat"])[0], live)
    assert by_doc(again, kb, "dog cat") == pytest.approx(ref, rel=1e-5)
    # a process that dies without saving (no close): the next one loads the older save and replays the log
    del again
    third = SQLiteBackend(path)
    assert by_doc(third, kb, "dog cat") == pytest.approx(ref, rel=1e-5)
    third.close()


def test_a_write_does_not_rebuild_the_index(tmp_path, monkeypatch):
    """After the first build, each write costs the chunks it touches: the index is never built again."""
    store, kb = SQLiteBackend(tmp_path / "rag.db"), kb_()
    store.insert_kb(kb)
    store.replace_documents(kb, [rows(d, t) for d, t in TOY.items()])
    by_doc(store, kb, "cat")
    from graftlm.rag import bm25_index

    added = []
    real_add = bm25_index.KeywordIndex.add
    monkeypatch.setattr(SQLiteBackend, "_build", lambda *a, **k: pytest.fail("rebuilt after a write"))
    monkeypatch.setattr(bm25_index.KeywordIndex, "add", lambda self, r, t: (added.append(list(r)), real_add(self, r, t)))
    store.replace_documents(kb, [rows("z", "zebra cat")])
    got = by_doc(store, kb, "zebra")
    assert list(got) == ["z"] and len(added) == 1 and len(added[0]) == 1  # only the new chunk was indexed


@pytest.mark.parametrize("merge_min", [1 << 16, 4])  # 4: segments merge and compact after nearly every write
def test_random_ingest_replace_delete_keep_bm25_equal_to_a_fresh_index(tmp_path, monkeypatch, merge_min):
    """Property: after any sequence of writes, scores equal BM25 over exactly the documents table's chunks."""
    from graftlm.rag import bm25_index

    monkeypatch.setattr(bm25_index, "MERGE_MIN_POSTINGS", merge_min)
    monkeypatch.setattr(bm25_index, "MAX_SEGMENTS", 8 if merge_min > 4 else 2)
    rng = random.Random(7)
    words = ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach", "plum", "melon"]
    store, kb = SQLiteBackend(tmp_path / "rag.db"), kb_()
    store.insert_kb(kb)
    live: dict[str, str] = {}
    for step in range(40):
        op, doc = rng.random(), f"d{rng.randrange(8)}"
        if op < 0.65:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            store.replace_documents(kb, [rows(doc, text, vector=text_vector(text))])
            live[doc] = text
        else:
            assert store.delete_document(kb, doc) == (doc in live)
            live.pop(doc, None)
        if step % 4 != 3:  # mostly after every write; sometimes two writes in a row between searches
            counts = store.consistency(kb)
            assert set(counts.values()) == {len(live)}, counts
            query = " ".join(rng.sample(words, 3))
            ref = lucene_bm25(tokenize([query])[0], dict(zip(live, tokenize(list(live.values())), strict=True))) \
                if live else {}
            assert by_doc(store, kb, query, limit=20) == pytest.approx({d: s for d, s in ref.items() if s > 0},
                                                                      rel=1e-5), (step, query)
            for doc, text in list(live.items())[:3]:  # dense: each live chunk is its own nearest neighbour
                (hit, sim), *_ = store.dense(kb, text_vector(text), 1, {})
                assert store.fetch(kb, [hit])[hit]["document_id"] in {d for d, t in live.items() if t == text}
                assert sim == pytest.approx(1.0, abs=1e-5)
    store.drop_kb(kb)
    assert not (tmp_path / "index" / kb.id).exists()
