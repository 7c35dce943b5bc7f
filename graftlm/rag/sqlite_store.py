"""Knowledge bases in one SQLite file; BM25 (bm25_index) and HNSW (ann) indexes beside it, fed by a change log.

SQLite holds the truth: documents, chunks, chunk tokens (``rag_tokens``) and vectors (sqlite-vec's vec0, one
table per knowledge base). Every write also appends one row per chunk added or removed to ``rag_log``, in the
same transaction. Each knowledge base's keyword index (bm25_index.KeywordIndex) and dense index
(ann.DenseIndex) remember the last log sequence they folded in; a search first folds in the rows after it
(only the chunks that changed: no rebuild after a write). The indexes are saved under
``<db dir>/index/<kb id>/<kind>.<seq>/`` (written to a temporary directory, renamed, then recorded in
``rag_index_saved``); a process that starts loads them and replays the log after them. Log rows older than
both saved indexes are pruned (``rag_log_pruned`` records up to where, so a process whose in-memory index is
older reloads the saved one). A kill -9 at any point leaves committed rows and a log that reaches them, so the
next search is complete; an index is only rebuilt from the tables when none was saved (a knowledge base made
before the log existed, or a deleted index directory).
Opened through sqlean.py because the standard library's sqlite3 may not load extensions.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from graftlm.config import private_file
from graftlm.errors import Conflict, GraftError
from graftlm.rag.backend import DocumentRows, KnowledgeBase
from graftlm.rag.ann import DenseIndex
from graftlm.rag.bm25_index import KeywordIndex, tokenize

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rag_kbs (
  id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, chunk_size INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL,
  embedding_model TEXT NOT NULL, dimension INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rag_documents (
  kb_id TEXT NOT NULL, doc_id TEXT NOT NULL, metadata TEXT NOT NULL, n_chars INTEGER NOT NULL,
  n_chunks INTEGER NOT NULL, PRIMARY KEY (kb_id, doc_id));
CREATE TABLE IF NOT EXISTS rag_chunks (
  id INTEGER PRIMARY KEY, kb_id TEXT NOT NULL, doc_id TEXT NOT NULL, n INTEGER NOT NULL, text TEXT NOT NULL,
  start INTEGER NOT NULL, "end" INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS rag_chunks_doc ON rag_chunks (kb_id, doc_id);
CREATE TABLE IF NOT EXISTS rag_tokens (id INTEGER PRIMARY KEY, tokens TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rag_bm25_generation (kb_id TEXT PRIMARY KEY, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rag_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, kb_id TEXT NOT NULL,
  chunk INTEGER NOT NULL, op INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS rag_log_kb ON rag_log (kb_id, seq);
CREATE TABLE IF NOT EXISTS rag_index_saved (kb_id TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY (kb_id, kind));
CREATE TABLE IF NOT EXISTS rag_log_pruned (kb_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
KINDS = ("keyword", "dense")
_ADD, _DEL = 1, 0
_BATCH = 5000


def connect(path: str | Path):
    import sqlean
    import sqlite_vec

    if str(path) != ":memory:":
        private_file(Path(path))
    conn = sqlean.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


class SQLiteBackend:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect(self.path)
        self.lock = threading.RLock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self._indexes: dict[tuple[str, str], KeywordIndex | DenseIndex] = {}
        self._saved: dict[tuple[str, str], int] = {}  # log sequence of the index last saved by this process
        self._root = None if self.path == ":memory:" else Path(self.path).parent / "index"

    def close(self) -> None:
        with self.lock:
            for (kb_id, kind), ix in list(self._indexes.items()):
                if ix.applied > self._saved.get((kb_id, kind), 0):
                    try:
                        self._save(kb_id, kind, ix)
                    except Exception:  # noqa: BLE001 - the log replays whatever was not saved
                        pass
            self._indexes.clear()
        self.conn.close()

    @staticmethod
    def _fts(kb: KnowledgeBase) -> str:
        return f"rag_fts_{kb.id}"

    @staticmethod
    def _vec(kb: KnowledgeBase) -> str:
        return f"rag_vec_{kb.id}"

    # knowledge bases

    def insert_kb(self, kb: KnowledgeBase) -> None:
        if not kb.id.isalnum():
            raise GraftError(f"knowledge base id {kb.id!r} must be alphanumeric")
        with self.lock, self.conn:
            self.conn.execute("BEGIN")
            if self.conn.execute("SELECT 1 FROM rag_kbs WHERE name = ?", (kb.name,)).fetchone():
                raise Conflict(f"knowledge base {kb.name!r} already exists", param="name")
            self.conn.execute("INSERT INTO rag_kbs VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (kb.id, kb.name, kb.chunk_size, kb.chunk_overlap, kb.embedding_model,
                               kb.dimension, kb.created_at))
            self._bump(kb)
            self.conn.execute(f"CREATE VIRTUAL TABLE {self._vec(kb)} USING vec0("
                              f"embedding float[{kb.dimension}] distance_metric=cosine)")

    def list_kbs(self) -> list[KnowledgeBase]:
        with self.lock:
            rows = self.conn.execute("SELECT * FROM rag_kbs ORDER BY created_at, name").fetchall()
        return [KnowledgeBase(*r) for r in rows]

    def find_kb(self, name_or_id: str) -> KnowledgeBase | None:
        with self.lock:
            row = self.conn.execute("SELECT * FROM rag_kbs WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                                    (name_or_id, name_or_id, name_or_id)).fetchone()
        return KnowledgeBase(*row) if row else None

    def drop_kb(self, kb: KnowledgeBase) -> None:
        with self.lock, self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM rag_tokens WHERE id IN (SELECT id FROM rag_chunks WHERE kb_id = ?)",
                              (kb.id,))
            self.conn.execute("DELETE FROM rag_chunks WHERE kb_id = ?", (kb.id,))
            self.conn.execute("DELETE FROM rag_documents WHERE kb_id = ?", (kb.id,))
            for table in ("rag_bm25_generation", "rag_log", "rag_index_saved", "rag_log_pruned"):
                self.conn.execute(f"DELETE FROM {table} WHERE kb_id = ?", (kb.id,))
            self.conn.execute("DELETE FROM rag_kbs WHERE id = ?", (kb.id,))
            self.conn.execute(f"DROP TABLE IF EXISTS {self._fts(kb)}")
            self.conn.execute(f"DROP TABLE IF EXISTS {self._vec(kb)}")
            for kind in KINDS:
                self._indexes.pop((kb.id, kind), None)
                self._saved.pop((kb.id, kind), None)
        if self._root is not None:
            shutil.rmtree(self._root / kb.id, ignore_errors=True)
            shutil.rmtree(self._root.parent / "bm25" / kb.id, ignore_errors=True)  # before the change log

    # documents

    def _delete_chunks(self, kb: KnowledgeBase, doc_id: str) -> None:
        ids = [(r[0],) for r in self.conn.execute(
            "SELECT id FROM rag_chunks WHERE kb_id = ? AND doc_id = ?", (kb.id, doc_id))]
        if ids:
            self.conn.executemany("DELETE FROM rag_tokens WHERE id = ?", ids)
            if self._has_fts(kb):  # a knowledge base made before BM25 moved to bm25s
                self.conn.executemany(f"DELETE FROM {self._fts(kb)} WHERE rowid = ?", ids)
            self.conn.executemany(f"DELETE FROM {self._vec(kb)} WHERE rowid = ?", ids)
            self.conn.execute("DELETE FROM rag_chunks WHERE kb_id = ? AND doc_id = ?", (kb.id, doc_id))
            self.conn.executemany("INSERT INTO rag_log (kb_id, chunk, op) VALUES (?, ?, ?)",
                                  [(kb.id, i, _DEL) for (i,) in ids])

    def _has_fts(self, kb: KnowledgeBase) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (self._fts(kb),)).fetchone() is not None

    def _bump(self, kb: KnowledgeBase) -> None:
        """A write happened (inside its transaction): the generation counts writes."""
        self.conn.execute("INSERT INTO rag_bm25_generation VALUES (?, 1) ON CONFLICT (kb_id) DO UPDATE "
                          "SET generation = generation + 1", (kb.id,))

    def replace_documents(self, kb: KnowledgeBase, docs: list[DocumentRows]) -> None:
        tokens = tokenize([c.text for doc in docs for c in doc.chunks])  # outside the write lock
        with self.lock, self.conn:
            self.conn.execute("BEGIN IMMEDIATE")  # row ids come from max(id): hold the write lock
            next_id = (self.conn.execute("SELECT max(id) FROM rag_chunks").fetchone()[0] or 0) + 1
            chunk_rows, fts_rows, vec_rows = [], [], []
            for doc in docs:
                self._delete_chunks(kb, doc.doc_id)
                self.conn.execute("INSERT OR REPLACE INTO rag_documents VALUES (?, ?, ?, ?, ?)",
                                  (kb.id, doc.doc_id, json.dumps(doc.metadata), doc.n_chars, len(doc.chunks)))
                vectors = np.ascontiguousarray(doc.vectors, dtype=np.float32)
                for c, v in zip(doc.chunks, vectors, strict=True):
                    chunk_rows.append((next_id, kb.id, doc.doc_id, c.index, c.text, c.start, c.end))
                    fts_rows.append((next_id, json.dumps(tokens[len(fts_rows)])))
                    vec_rows.append((next_id, v.tobytes()))
                    next_id += 1
            self.conn.executemany("INSERT INTO rag_chunks VALUES (?, ?, ?, ?, ?, ?, ?)", chunk_rows)
            self.conn.executemany("INSERT INTO rag_tokens (id, tokens) VALUES (?, ?)", fts_rows)
            self.conn.executemany(f"INSERT INTO {self._vec(kb)} (rowid, embedding) VALUES (?, ?)", vec_rows)
            self.conn.executemany("INSERT INTO rag_log (kb_id, chunk, op) VALUES (?, ?, ?)",
                                  [(kb.id, r[0], _ADD) for r in chunk_rows])
            self._bump(kb)
        self._follow(kb)

    def delete_document(self, kb: KnowledgeBase, doc_id: str) -> bool:
        with self.lock, self.conn:
            self.conn.execute("BEGIN")
            self._delete_chunks(kb, doc_id)
            self._bump(kb)
            deleted = self.conn.execute("DELETE FROM rag_documents WHERE kb_id = ? AND doc_id = ?",
                                        (kb.id, doc_id)).rowcount > 0
        self._follow(kb)
        return deleted

    def _follow(self, kb: KnowledgeBase) -> None:
        """After a write: fold it into the indexes this process holds, so the writer pays, not the next search."""
        with self.lock:
            for kind in KINDS:
                if (kb.id, kind) in self._indexes:
                    self._index(kb, kind)

    def list_documents(self, kb: KnowledgeBase) -> list[dict]:
        with self.lock:
            rows = self.conn.execute("SELECT doc_id, metadata, n_chars, n_chunks FROM rag_documents WHERE kb_id = ? "
                                     "ORDER BY doc_id", (kb.id,)).fetchall()
        return [{"id": d, "metadata": json.loads(m), "n_chars": int(c), "n_chunks": int(n)} for d, m, c, n in rows]

    def counts(self, kb: KnowledgeBase) -> tuple[int, int]:
        with self.lock:
            row = self.conn.execute("SELECT count(*), coalesce(sum(n_chunks), 0) FROM rag_documents WHERE kb_id = ?",
                                    (kb.id,)).fetchone()
        return int(row[0]), int(row[1])

    def consistency(self, kb: KnowledgeBase) -> dict[str, int]:
        """Row counts of every table that holds a knowledge base's chunks (they must agree)."""
        with self.lock:
            q = lambda sql, *a: self.conn.execute(sql, a).fetchone()[0]  # noqa: E731
            return {"documents_chunks": q("SELECT coalesce(sum(n_chunks), 0) FROM rag_documents WHERE kb_id = ?",
                                          kb.id),
                    "chunks": q("SELECT count(*) FROM rag_chunks WHERE kb_id = ?", kb.id),
                    "keyword": q("SELECT count(*) FROM rag_tokens t JOIN rag_chunks c ON c.id = t.id "
                                 "WHERE c.kb_id = ?", kb.id),
                    "bm25": len(self._index(kb, "keyword")),
                    "vectors": q(f"SELECT count(*) FROM {self._vec(kb)}"),
                    "ann": len(self._index(kb, "dense"))}

    # search

    def _filter_sql(self, kb: KnowledgeBase, filters: dict) -> tuple[str, list]:
        """SELECT of the chunk row ids whose document metadata matches every filter."""
        where, args = ["c.kb_id = ?"], [kb.id]
        for key, value in filters.items():
            path = '$."' + key + '"'
            if value is None:
                where.append("json_extract(d.metadata, ?) IS NULL")
                args.append(path)
            else:
                where.append("json_extract(d.metadata, ?) = ?")
                args += [path, value]
        return ("SELECT c.id FROM rag_chunks c JOIN rag_documents d ON d.kb_id = c.kb_id AND d.doc_id = c.doc_id "
                "WHERE " + " AND ".join(where)), args

    # derived indexes (keyword, dense): built once, then fed by the change log

    def _index(self, kb: KnowledgeBase, kind: str) -> KeywordIndex | DenseIndex:
        """The knowledge base's index of ``kind``, up to date with every committed write."""
        with self.lock:
            key = (kb.id, kind)
            row = self.conn.execute("SELECT seq FROM rag_log_pruned WHERE kb_id = ?", (kb.id,)).fetchone()
            pruned = row[0] if row else 0
            ix = self._indexes.get(key)
            if ix is not None and ix.applied < pruned:  # the rows it still needs were pruned: take the saved one
                ix = None
            if ix is None:
                ix = self._load(kb, kind, pruned)
            if ix is None:
                ix = self._build(kb, kind)
            self._indexes[key] = ix
            self._catch_up(kb, kind, ix)
            return ix

    def _load(self, kb: KnowledgeBase, kind: str, pruned: int) -> KeywordIndex | DenseIndex | None:
        if self._root is None:
            return None
        row = self.conn.execute("SELECT seq FROM rag_index_saved WHERE kb_id = ? AND kind = ?",
                                (kb.id, kind)).fetchone()
        if row is None or row[0] < pruned:
            return None
        directory = self._root / kb.id / f"{kind}.{row[0]}"
        ix = KeywordIndex.load(directory) if kind == "keyword" else DenseIndex.load(directory, kb.dimension)
        if ix is None or ix.applied != row[0]:
            return None
        self._saved[(kb.id, kind)] = ix.applied
        return ix

    def _build(self, kb: KnowledgeBase, kind: str) -> KeywordIndex | DenseIndex:
        """Build from the tables (no saved index): one snapshot of the log position and the rows."""
        if kind == "keyword":
            self._fill_tokens(kb)
        with self.conn:
            self.conn.execute("BEGIN")
            row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rag_log'").fetchone()
            applied = row[0] if row else 0
            if kind == "keyword":
                ix: KeywordIndex | DenseIndex = KeywordIndex()
                cur = self.conn.execute("SELECT c.id, t.tokens FROM rag_chunks c JOIN rag_tokens t ON t.id = c.id "
                                        "WHERE c.kb_id = ? ORDER BY c.id", (kb.id,))
                while batch := cur.fetchmany(_BATCH):
                    ix.add([r[0] for r in batch], [json.loads(r[1]) for r in batch])
                ix.merge()
            else:
                ix = DenseIndex(kb.dimension)
                cur = self.conn.execute(f"SELECT rowid, embedding FROM {self._vec(kb)} ORDER BY rowid")
                while batch := cur.fetchmany(_BATCH):
                    ix.add([r[0] for r in batch], np.stack([np.frombuffer(r[1], dtype=np.float32) for r in batch]))
        ix.applied = applied
        self._save(kb.id, kind, ix)
        if self._root is not None:
            shutil.rmtree(self._root.parent / "bm25" / kb.id, ignore_errors=True)  # the index before the log
        return ix

    def _fill_tokens(self, kb: KnowledgeBase) -> None:
        """Chunks stored before rag_tokens existed get their tokens."""
        missing = self.conn.execute("SELECT c.id, c.text FROM rag_chunks c LEFT JOIN rag_tokens t ON t.id = c.id "
                                    "WHERE c.kb_id = ? AND t.id IS NULL", (kb.id,)).fetchall()
        if missing:
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.executemany("INSERT INTO rag_tokens (id, tokens) VALUES (?, ?)",
                                      [(i, json.dumps(t)) for (i, _), t in
                                       zip(missing, tokenize([m[1] for m in missing]), strict=True)])

    def _catch_up(self, kb: KnowledgeBase, kind: str, ix: KeywordIndex | DenseIndex) -> None:
        """Fold in the log rows after ``ix.applied``: remove every chunk they touch, add back those whose last
        operation is an add, with their current content."""
        with self.conn:
            self.conn.execute("BEGIN")
            rows = self.conn.execute("SELECT seq, chunk, op FROM rag_log WHERE kb_id = ? AND seq > ? ORDER BY seq",
                                     (kb.id, ix.applied)).fetchall()
            if not rows:
                return
            last = {chunk: op for _, chunk, op in rows}
            ix.remove(list(last))
            adds = [c for c, op in last.items() if op == _ADD]
            for lo in range(0, len(adds), _BATCH):
                part = adds[lo:lo + _BATCH]
                marks = ",".join("?" * len(part))
                if kind == "keyword":
                    got = self.conn.execute(f"SELECT id, tokens FROM rag_tokens WHERE id IN ({marks}) ORDER BY id",
                                            part).fetchall()
                    ix.add([r[0] for r in got], [json.loads(r[1]) for r in got])
                else:
                    got = self.conn.execute(f"SELECT rowid, embedding FROM {self._vec(kb)} WHERE rowid IN ({marks}) "
                                            "ORDER BY rowid", part).fetchall()
                    if got:
                        ix.add([r[0] for r in got], np.stack([np.frombuffer(r[1], dtype=np.float32) for r in got]))
        ix.applied = rows[-1][0]
        if ix.applied - self._saved.get((kb.id, kind), 0) >= max(_BATCH, len(ix) // 4):
            self._save(kb.id, kind, ix)

    def _save(self, kb_id: str, kind: str, ix: KeywordIndex | DenseIndex) -> None:
        """Write ``ix`` beside the database and record it; prune log rows both saved indexes hold."""
        if self._root is None:
            return
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)  # derived from the documents: private too
        root = self._root / kb_id
        root.mkdir(mode=0o700, exist_ok=True)
        tmp = root / f".{kind}.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ix.save(tmp)
        final = root / f"{kind}.{ix.applied}"
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")  # one saver at a time, across processes
            row = self.conn.execute("SELECT seq FROM rag_index_saved WHERE kb_id = ? AND kind = ?",
                                    (kb_id, kind)).fetchone()
            if row is not None and row[0] >= ix.applied:  # someone saved this or a later one already
                shutil.rmtree(tmp, ignore_errors=True)
                self._saved[(kb_id, kind)] = ix.applied
                return
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self.conn.execute("INSERT INTO rag_index_saved VALUES (?, ?, ?) ON CONFLICT (kb_id, kind) DO UPDATE "
                              "SET seq = excluded.seq", (kb_id, kind, ix.applied))
            saved = self.conn.execute("SELECT min(seq), count(*) FROM rag_index_saved WHERE kb_id = ?",
                                      (kb_id,)).fetchone()
            if saved[1] == len(KINDS):
                self.conn.execute("DELETE FROM rag_log WHERE kb_id = ? AND seq <= ?", (kb_id, saved[0]))
                self.conn.execute("INSERT INTO rag_log_pruned VALUES (?, ?) ON CONFLICT (kb_id) DO UPDATE "
                                  "SET seq = max(seq, excluded.seq)", (kb_id, saved[0]))
        self._saved[(kb_id, kind)] = ix.applied
        for old in root.glob(f"{kind}.*"):  # older saves of this kind are no longer referenced
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def _allowed(self, kb: KnowledgeBase, filters: dict) -> set[int] | None:
        if not filters:
            return None
        fsql, fargs = self._filter_sql(kb, filters)
        with self.lock:
            return {r[0] for r in self.conn.execute(fsql, fargs)}

    def keyword(self, kb: KnowledgeBase, terms: list[str], limit: int, filters: dict) -> list[tuple[int, float]]:
        if not terms:
            return []
        with self.lock:
            return self._index(kb, "keyword").search(" ".join(terms), limit, self._allowed(kb, filters))

    def dense(self, kb: KnowledgeBase, vector: np.ndarray, limit: int, filters: dict) -> list[tuple[int, float]]:
        with self.lock:
            return self._index(kb, "dense").search(vector, limit, self._allowed(kb, filters))

    def fetch(self, kb: KnowledgeBase, rowids: list[int]) -> dict[int, dict]:
        if not rowids:
            return {}
        with self.lock:
            rows = self.conn.execute(
                "SELECT c.id, c.doc_id, c.n, c.text, d.metadata, c.start, c.\"end\" FROM rag_chunks c "
                "JOIN rag_documents d ON d.kb_id = c.kb_id AND d.doc_id = c.doc_id "
                f"WHERE c.id IN ({','.join('?' * len(rowids))})", list(rowids)).fetchall()
        return {r[0]: {"document_id": r[1], "chunk_id": f"{r[1]}#{r[2]}", "text": r[3],
                       "metadata": json.loads(r[4]), "start": r[5], "end": r[6]} for r in rows}

    def vectors(self, kb: KnowledgeBase, rowids: list[int]) -> np.ndarray:
        if not rowids:
            return np.zeros((0, kb.dimension), dtype=np.float32)
        with self.lock:
            rows = dict(self.conn.execute(f"SELECT rowid, embedding FROM {self._vec(kb)} "
                                          f"WHERE rowid IN ({','.join('?' * len(rowids))})", list(rowids)))
        return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in rowids])
