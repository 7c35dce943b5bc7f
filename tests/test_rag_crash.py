"""kill -9 during ingest: the store, its change log and the saved indexes stay usable, and the ingest resumes.

The child writes documents one transaction at a time (random words, random vectors; no model), searching
between writes so both indexes live in memory and are saved often (small save threshold), and is killed
with SIGKILL mid-way: maybe inside a transaction, maybe while an index is being written to disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from graftlm.rag.backend import KnowledgeBase
from graftlm.rag.bm25_index import tokenize
from graftlm.rag.sqlite_store import SQLiteBackend
from tests.test_rag_bm25 import lucene_bm25

WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach", "plum", "melon", "kiwi", "fig"]
N_DOCS = 400


def doc_text(i: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15)))


def doc_vector(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


CHILD = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    from graftlm.rag import sqlite_store
    from graftlm.rag.backend import DocumentRows, KnowledgeBase
    from graftlm.rag.chunking import Chunk
    from tests.test_rag_crash import doc_text, doc_vector, N_DOCS
    sqlite_store._BATCH = 3  # save the indexes every few writes
    store = sqlite_store.SQLiteBackend({db!r})
    kb = KnowledgeBase(id="kbcrash", name="c", chunk_size=500, chunk_overlap=0, embedding_model="x", dimension=8,
                       created_at=0.0)
    if store.find_kb(kb.id) is None:
        store.insert_kb(kb)
    done = {{d["id"] for d in store.list_documents(kb)}}
    for i in range(N_DOCS):
        if f"d{{i}}" in done:
            continue
        text = doc_text(i)
        store.replace_documents(kb, [DocumentRows(f"d{{i}}", {{"i": i}}, len(text),
                                                  [Chunk(0, 0, len(text), text, 1)], doc_vector(i)[None])])
        if i % 7 == 3:
            store.delete_document(kb, f"d{{i - 2}}")
        store.keyword(kb, ["apple"], 5, {{}})
        store.dense(kb, doc_vector(0), 5, {{}})
        print(i, flush=True)
    print("done", flush=True)
''')


def expected_live(present: set[str]) -> dict[str, str]:
    return {d: doc_text(int(d[1:])) for d in present}


def check(store: SQLiteBackend, kb: KnowledgeBase) -> set[str]:
    docs = {d["id"] for d in store.list_documents(kb)}
    counts = store.consistency(kb)
    assert set(counts.values()) == {len(docs)}, counts
    live = expected_live(docs)
    for query in ("apple mango", "kiwi fig plum"):
        ref = lucene_bm25(tokenize([query])[0], dict(zip(live, tokenize(list(live.values())), strict=True)))
        hits = store.keyword(kb, query.split(), 1000, {})
        rows = store.fetch(kb, [r for r, _ in hits])
        got = {rows[r]["document_id"]: s for r, s in hits}
        assert got == pytest.approx({d: s for d, s in ref.items() if s > 0}, rel=1e-5)
    for d in list(docs)[:20]:
        hit = store.dense(kb, doc_vector(int(d[1:])), 1, {})[0]
        assert store.fetch(kb, [hit[0]])[hit[0]]["document_id"] == d and hit[1] == pytest.approx(1.0, abs=1e-5)
    return docs


@pytest.mark.parametrize("kill_after", [25, 140])
def test_kill_9_during_ingest_leaves_usable_indexes_and_a_resumable_ingest(tmp_path, kill_after):
    db = str(tmp_path / "rag.db")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=root, db=db))
    env = {**os.environ, "PYTHONPATH": root}
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    for line in child.stdout:
        assert time.time() < deadline
        if line.strip() != "done" and int(line) >= kill_after:
            break
    time.sleep(random.Random(kill_after).random() * 0.05)  # land somewhere inside the next writes
    child.send_signal(signal.SIGKILL)
    child.wait()
    kb = KnowledgeBase(id="kbcrash", name="c", chunk_size=500, chunk_overlap=0, embedding_model="x", dimension=8,
                       created_at=0.0)
    store = SQLiteBackend(db)
    before = check(store, kb)
    assert 0 < len(before) < N_DOCS
    store.close()
    # resume: the same ingest again skips what is stored and finishes
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("done"), out.stderr
    store = SQLiteBackend(db)
    after = check(store, kb)
    assert {f"d{i}" for i in range(N_DOCS) if i % 7 != 1} <= after  # every document not deleted is there
    store.close()
