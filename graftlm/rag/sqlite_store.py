"""Knowledge bases in one SQLite file, BM25 from bm25s (see bm25_index) and sqlite-vec's vec0 for cosine KNN.

Each knowledge base gets its own BM25 index and vec0 table, so BM25 statistics are per knowledge base. Chunk
tokens live in ``rag_tokens`` (same transaction as the chunk); the scored BM25 index is rebuilt from them on the
first search after a write and saved next to the database (``<db dir>/bm25/<kb id>/``). Knowledge bases made
before that keep their old FTS5 table unused; their tokens are filled in on first search.
Opened through sqlean.py because the standard library's sqlite3 may not load extensions.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np

from graftlm.config import private_file
from graftlm.errors import Conflict, GraftError
from graftlm.rag.backend import DocumentRows, KnowledgeBase
from graftlm.rag.bm25_index import ScoredIndex, tokenize

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
"""
_KNN_MAX = 4096  # sqlite-vec's largest k


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
        self._bm25: dict[str, ScoredIndex] = {}
        self._bm25_root = None if self.path == ":memory:" else Path(self.path).parent / "bm25"

    def close(self) -> None:
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
            self.conn.execute("DELETE FROM rag_bm25_generation WHERE kb_id = ?", (kb.id,))
            self.conn.execute("DELETE FROM rag_kbs WHERE id = ?", (kb.id,))
            self.conn.execute(f"DROP TABLE IF EXISTS {self._fts(kb)}")
            self.conn.execute(f"DROP TABLE IF EXISTS {self._vec(kb)}")
            self._bm25.pop(kb.id, None)
        if self._bm25_root is not None:
            shutil.rmtree(self._bm25_root / kb.id, ignore_errors=True)

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

    def _has_fts(self, kb: KnowledgeBase) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (self._fts(kb),)).fetchone() is not None

    def _bump(self, kb: KnowledgeBase) -> None:
        """A write happened: the scored BM25 index is stale (called inside the write's transaction)."""
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
            self._bump(kb)

    def delete_document(self, kb: KnowledgeBase, doc_id: str) -> bool:
        with self.lock, self.conn:
            self.conn.execute("BEGIN")
            self._delete_chunks(kb, doc_id)
            self._bump(kb)
            return self.conn.execute("DELETE FROM rag_documents WHERE kb_id = ? AND doc_id = ?",
                                     (kb.id, doc_id)).rowcount > 0

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
                    "bm25": len(self._bm25_index(kb)),
                    "vectors": q(f"SELECT count(*) FROM {self._vec(kb)}")}

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

    def _bm25_index(self, kb: KnowledgeBase) -> ScoredIndex:
        """The scored BM25 index of the knowledge base's current generation: cached, loaded or rebuilt."""
        with self.lock:
            row = self.conn.execute("SELECT generation FROM rag_bm25_generation WHERE kb_id = ?", (kb.id,)).fetchone()
            generation = row[0] if row else 0
            index = self._bm25.get(kb.id)
            if index is not None and index.generation == generation:
                return index
            root = None if self._bm25_root is None else self._bm25_root / kb.id
            index = ScoredIndex.load(root, generation) if root is not None else None
            if index is None:
                missing = self.conn.execute(
                    "SELECT c.id, c.text FROM rag_chunks c LEFT JOIN rag_tokens t ON t.id = c.id "
                    "WHERE c.kb_id = ? AND t.id IS NULL", (kb.id,)).fetchall()
                if missing:  # chunks stored before rag_tokens existed
                    with self.conn:
                        self.conn.execute("BEGIN")
                        self.conn.executemany("INSERT INTO rag_tokens (id, tokens) VALUES (?, ?)",
                                              [(i, json.dumps(t)) for (i, _), t in
                                               zip(missing, tokenize([m[1] for m in missing]), strict=True)])
                rows = self.conn.execute("SELECT c.id, t.tokens FROM rag_chunks c JOIN rag_tokens t ON t.id = c.id "
                                         "WHERE c.kb_id = ? ORDER BY c.id", (kb.id,)).fetchall()
                index = ScoredIndex.build([r[0] for r in rows], [json.loads(r[1]) for r in rows], generation)
                if root is not None:
                    index.save(root)
            self._bm25[kb.id] = index
            return index

    def keyword(self, kb: KnowledgeBase, terms: list[str], limit: int, filters: dict) -> list[tuple[int, float]]:
        if not terms:
            return []
        index = self._bm25_index(kb)
        allowed = None
        if filters:
            fsql, fargs = self._filter_sql(kb, filters)
            with self.lock:
                allowed = {r[0] for r in self.conn.execute(fsql, fargs)}
        return index.search(" ".join(terms), limit, allowed)

    def dense(self, kb: KnowledgeBase, vector: np.ndarray, limit: int, filters: dict) -> list[tuple[int, float]]:
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        vec = self._vec(kb)
        k = min(limit if not filters else max(8 * limit, 200), _KNN_MAX)
        with self.lock:
            rows = self.conn.execute(f"SELECT rowid, distance FROM {vec} WHERE embedding MATCH ? AND k = ? "
                                     "ORDER BY distance", (blob, k)).fetchall()
            if filters:
                fsql, fargs = self._filter_sql(kb, filters)
                ids = [r[0] for r in rows]
                keep = {r[0] for r in self.conn.execute(
                    f"{fsql} AND c.id IN ({','.join('?' * len(ids))})", (*fargs, *ids))} if ids else set()
                filtered = [r for r in rows if r[0] in keep]
                if len(filtered) < limit and len(rows) == k:
                    # too few survived the filter: score the filtered chunks exactly
                    rows = self.conn.execute(
                        f"SELECT v.rowid, vec_distance_cosine(v.embedding, ?) AS dist FROM {vec} v "
                        f"WHERE v.rowid IN ({fsql}) ORDER BY dist LIMIT ?", (blob, *fargs, limit)).fetchall()
                else:
                    rows = filtered
        return [(r[0], 1.0 - r[1]) for r in rows[:limit]]

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
