"""Knowledge bases in PostgreSQL: full-text search (english tsvector) ranked by BM25, and pgvector for cosine KNN.

The scale-out twin of sqlite_store.SQLiteBackend, behind the same interface (graftlm.rag.backend.Backend).

* Chunks of every knowledge base share one table; each knowledge base gets its own partial HNSW index
  on ``embedding::vector(dimension)`` (cosine), so knowledge bases may use models of different sizes.
* Keyword search: ``tsv`` is ``to_tsvector('english', text)`` (Snowball stemming, stop words dropped) with a
  GIN index. The query's terms are stemmed by the same configuration and OR'ed into a tsquery built from
  the quoted lexemes (never parsed from user text), and matches are scored with Lucene's BM25 (k1 = 1.5,
  b = 0.75, IDF ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl / avgdl)), no (k1 + 1) factor)
  over the whole knowledge base: the formula bm25s uses for the SQLite backend, so scores read alike (the
  tokenizers differ a little: PostgreSQL's english configuration vs bm25s's stop words, and a term the query
  repeats counts once here).
* Filters: equality on document metadata (jsonb), ``metadata @> {key: value}``; a null value matches a
  missing key or a JSON null, as in SQLite. Dense search with filters scores the filtered chunks exactly
  (an HNSW scan filters after the fact and can come back short).

Needs the ``vector`` extension (pgvector >= 0.5) installed on the server; it is created if missing.
URLs: ``postgresql://…``, ``postgres://…`` or SQLAlchemy's ``postgresql+psycopg://…``.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.rag.backend import DocumentRows, KnowledgeBase

K1, B = 1.5, 0.75  # Lucene's BM25 as bm25s scores it (the SQLite backend)
_EF_SEARCH_MAX = 1000  # pgvector's largest hnsw.ef_search: deeper searches scan exactly

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS rag_kbs (
  id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, chunk_size INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL,
  embedding_model TEXT NOT NULL, dimension INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  n_chunks BIGINT NOT NULL DEFAULT 0, n_tokens BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rag_documents (
  kb_id TEXT NOT NULL REFERENCES rag_kbs (id) ON DELETE CASCADE, doc_id TEXT NOT NULL, metadata JSONB NOT NULL,
  n_chars INTEGER NOT NULL, n_chunks INTEGER NOT NULL, PRIMARY KEY (kb_id, doc_id));
CREATE INDEX IF NOT EXISTS rag_documents_metadata ON rag_documents USING gin (metadata jsonb_path_ops);
CREATE OR REPLACE FUNCTION rag_tsv_length(v tsvector) RETURNS INTEGER LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT coalesce(max(p), 0)::integer FROM unnest(v) u, unnest(u.positions) p $$;
CREATE TABLE IF NOT EXISTS rag_chunks (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kb_id TEXT NOT NULL, doc_id TEXT NOT NULL,
  n INTEGER NOT NULL, text TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
  embedding vector NOT NULL,
  tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED,
  n_tokens INTEGER GENERATED ALWAYS AS (rag_tsv_length(to_tsvector('english'::regconfig, text))) STORED,
  FOREIGN KEY (kb_id, doc_id) REFERENCES rag_documents (kb_id, doc_id) ON DELETE CASCADE);
CREATE INDEX IF NOT EXISTS rag_chunks_doc ON rag_chunks (kb_id, doc_id);
CREATE INDEX IF NOT EXISTS rag_chunks_tsv ON rag_chunks USING gin (tsv);
"""


def connect_url(url: str) -> str:
    """A libpq URL: SQLAlchemy's ``postgresql+psycopg://`` (or +psycopg2) becomes ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise GraftError(f"not a PostgreSQL URL: {url!r}")
    return "postgresql://" + rest


def _vector_text(v) -> str:
    return "[" + ",".join(repr(x) for x in np.asarray(v, dtype=np.float32).tolist()) + "]"


def _parse_vector(s: str) -> np.ndarray:
    return np.array(s[1:-1].split(","), dtype=np.float32)


def _tsquery_text(lexemes: list[str]) -> str:
    """An OR of quoted lexemes in tsquery syntax: no operator or weight can come from the query text."""
    return " | ".join("'" + lex.replace("\\", "\\\\").replace("'", "''") + "'" for lex in lexemes)


class PostgresBackend:
    def __init__(self, url: str):
        self.url = url
        self.lock = threading.RLock()
        self.conn = self._connect()
        with self.lock, self.conn.transaction():
            # one schema migration at a time across processes
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('graftlm.rag schema'))")
            try:
                self.conn.execute(_SCHEMA)
            except Exception as e:  # noqa: BLE001 - say what to install
                if "vector" in str(e):
                    raise GraftError(f"PostgreSQL at {self._where()} has no pgvector extension (install "
                                     f"postgresql-<version>-pgvector): {e}") from e
                raise

    def _connect(self):
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - the [postgres] extra
            raise GraftError("PostgreSQL knowledge bases need psycopg: pip install 'graftlm[postgres]'") from e
        return psycopg.connect(connect_url(self.url), autocommit=True)

    def _where(self) -> str:
        return self.url.partition("://")[2].rpartition("@")[2]

    def _db(self):
        if self.conn.closed or self.conn.broken:
            self.conn = self._connect()
        return self.conn

    def close(self) -> None:
        self.conn.close()

    @staticmethod
    def _index(kb: KnowledgeBase) -> str:
        return f"rag_hnsw_{kb.id}"

    @staticmethod
    def _lit(kb: KnowledgeBase) -> str:
        """The knowledge base id as a SQL literal (checked alphanumeric): partial indexes need a constant."""
        if not kb.id.isalnum():
            raise GraftError(f"knowledge base id {kb.id!r} must be alphanumeric")
        return f"'{kb.id}'"

    # knowledge bases

    def insert_kb(self, kb: KnowledgeBase) -> None:
        kb_lit = self._lit(kb)
        if not isinstance(kb.dimension, int) or not 1 <= kb.dimension <= 2000:
            raise GraftError(f"embedding dimension {kb.dimension} is outside pgvector's indexable 1..2000")
        with self.lock, self._db().transaction():
            if self.conn.execute("SELECT 1 FROM rag_kbs WHERE name = %s", (kb.name,)).fetchone():
                raise Conflict(f"knowledge base {kb.name!r} already exists", param="name")
            self.conn.execute("INSERT INTO rag_kbs (id, name, chunk_size, chunk_overlap, embedding_model, "
                              "dimension, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                              (kb.id, kb.name, kb.chunk_size, kb.chunk_overlap, kb.embedding_model, kb.dimension,
                               kb.created_at))
            self.conn.execute(f"CREATE INDEX {self._index(kb)} ON rag_chunks USING hnsw "
                              f"((embedding::vector({kb.dimension})) vector_cosine_ops) WHERE kb_id = {kb_lit}")

    _KB_COLUMNS = "id, name, chunk_size, chunk_overlap, embedding_model, dimension, created_at"

    def list_kbs(self) -> list[KnowledgeBase]:
        with self.lock:
            rows = self._db().execute(f"SELECT {self._KB_COLUMNS} FROM rag_kbs ORDER BY created_at, name").fetchall()
        return [KnowledgeBase(*r) for r in rows]

    def find_kb(self, name_or_id: str) -> KnowledgeBase | None:
        with self.lock:
            row = self._db().execute(f"SELECT {self._KB_COLUMNS} FROM rag_kbs WHERE id = %s OR name = %s "
                                     "ORDER BY id = %s DESC LIMIT 1", (name_or_id, name_or_id, name_or_id)).fetchone()
        return KnowledgeBase(*row) if row else None

    def drop_kb(self, kb: KnowledgeBase) -> None:
        self._lit(kb)
        with self.lock, self._db().transaction():
            self.conn.execute(f"DROP INDEX IF EXISTS {self._index(kb)}")
            self.conn.execute("DELETE FROM rag_chunks WHERE kb_id = %s", (kb.id,))
            self.conn.execute("DELETE FROM rag_kbs WHERE id = %s", (kb.id,))  # documents cascade

    # documents

    def _lock_kb(self, kb: KnowledgeBase) -> None:
        """Serialize writers of one knowledge base (and fail cleanly if it was dropped meanwhile)."""
        if self.conn.execute("SELECT 1 FROM rag_kbs WHERE id = %s FOR UPDATE", (kb.id,)).fetchone() is None:
            raise NotFound(f"knowledge base {kb.name!r} not found", param="knowledge_base")

    def _delete_docs(self, kb: KnowledgeBase, doc_ids: list[str]) -> int:
        """Delete documents and their chunks, keeping the knowledge base's BM25 totals; returns documents deleted."""
        row = self.conn.execute(
            "WITH c AS (DELETE FROM rag_chunks WHERE kb_id = %s AND doc_id = ANY(%s) RETURNING n_tokens) "
            "SELECT count(*), coalesce(sum(n_tokens), 0) FROM c", (kb.id, doc_ids)).fetchone()
        self.conn.execute("UPDATE rag_kbs SET n_chunks = n_chunks - %s, n_tokens = n_tokens - %s WHERE id = %s",
                          (row[0], row[1], kb.id))
        return self.conn.execute("DELETE FROM rag_documents WHERE kb_id = %s AND doc_id = ANY(%s)",
                                 (kb.id, doc_ids)).rowcount

    def replace_documents(self, kb: KnowledgeBase, docs: list[DocumentRows]) -> None:
        if not docs:
            return
        doc_ids = [d.doc_id for d in docs]
        with self.lock, self._db().transaction():
            self._lock_kb(kb)
            self._delete_docs(kb, doc_ids)
            with self.conn.cursor() as cur:
                cur.executemany("INSERT INTO rag_documents (kb_id, doc_id, metadata, n_chars, n_chunks) "
                                "VALUES (%s, %s, %s::jsonb, %s, %s)",
                                [(kb.id, d.doc_id, json.dumps(d.metadata), d.n_chars, len(d.chunks)) for d in docs])
                with cur.copy('COPY rag_chunks (kb_id, doc_id, n, text, start, "end", embedding) FROM STDIN') as cp:
                    for d in docs:
                        vectors = np.asarray(d.vectors, dtype=np.float32)
                        if len(d.chunks) and vectors.shape != (len(d.chunks), kb.dimension):
                            raise GraftError(f"document {d.doc_id!r}: {vectors.shape} vectors for "
                                             f"{len(d.chunks)} chunks of dimension {kb.dimension}")
                        for c, v in zip(d.chunks, vectors, strict=True):
                            cp.write_row((kb.id, d.doc_id, c.index, c.text, c.start, c.end, _vector_text(v)))
            self.conn.execute(
                "UPDATE rag_kbs SET n_chunks = n_chunks + s.n, n_tokens = n_tokens + s.t FROM "
                "(SELECT count(*) AS n, coalesce(sum(n_tokens), 0) AS t FROM rag_chunks "
                " WHERE kb_id = %s AND doc_id = ANY(%s)) s WHERE id = %s", (kb.id, doc_ids, kb.id))

    def delete_document(self, kb: KnowledgeBase, doc_id: str) -> bool:
        with self.lock, self._db().transaction():
            self._lock_kb(kb)
            return self._delete_docs(kb, [doc_id]) > 0

    def list_documents(self, kb: KnowledgeBase) -> list[dict]:
        with self.lock:
            rows = self._db().execute("SELECT doc_id, metadata, n_chars, n_chunks FROM rag_documents "
                                      "WHERE kb_id = %s ORDER BY doc_id", (kb.id,)).fetchall()
        return [{"id": d, "metadata": m if isinstance(m, dict) else json.loads(m), "n_chars": int(c),
                 "n_chunks": int(n)} for d, m, c, n in rows]

    def counts(self, kb: KnowledgeBase) -> tuple[int, int]:
        with self.lock:
            row = self._db().execute("SELECT count(*), coalesce(sum(n_chunks), 0) FROM rag_documents "
                                     "WHERE kb_id = %s", (kb.id,)).fetchone()
        return int(row[0]), int(row[1])

    def consistency(self, kb: KnowledgeBase) -> dict[str, int]:
        """Row counts of everything that holds a knowledge base's chunks (they must agree)."""
        with self.lock:
            row = self._db().execute(
                "SELECT (SELECT coalesce(sum(n_chunks), 0) FROM rag_documents WHERE kb_id = %(kb)s), "
                " count(*), count(*) FILTER (WHERE tsv IS NOT NULL), "
                " count(*) FILTER (WHERE vector_dims(embedding) = %(dim)s), "
                " (SELECT n_chunks FROM rag_kbs WHERE id = %(kb)s) "
                "FROM rag_chunks WHERE kb_id = %(kb)s", {"kb": kb.id, "dim": kb.dimension}).fetchone()
        return {"documents_chunks": int(row[0]), "chunks": int(row[1]), "fts": int(row[2]),
                "vectors": int(row[3]), "stats": int(row[4] or 0)}

    # search

    @staticmethod
    def _filter_sql(filters: dict) -> tuple[str, list]:
        """A condition on chunk ``c``: its document's metadata matches every filter (empty: no condition)."""
        if not filters:
            return "", []
        where, args = [], []
        present = {k: v for k, v in filters.items() if v is not None}
        if present:
            where.append("d.metadata @> %s::jsonb")
            args.append(json.dumps(present))
        for key in (k for k, v in filters.items() if v is None):
            where.append("coalesce(d.metadata -> %s, 'null'::jsonb) = 'null'::jsonb")
            args.append(key)
        return (" AND EXISTS (SELECT 1 FROM rag_documents d WHERE d.kb_id = c.kb_id AND d.doc_id = c.doc_id AND "
                + " AND ".join(where) + ")"), args

    def keyword(self, kb: KnowledgeBase, terms: list[str], limit: int, filters: dict) -> list[tuple[int, float]]:
        if not terms:
            return []
        kb_lit = self._lit(kb)
        fsql, fargs = self._filter_sql(filters)
        with self.lock:
            conn = self._db()
            # the terms as the index sees them: stemmed, stop words dropped, each lexeme once
            lexemes = conn.execute("SELECT coalesce(array_agg(DISTINCT lexeme ORDER BY lexeme), '{}') FROM "
                                   "unnest(tsvector_to_array(to_tsvector('english'::regconfig, %s))) lexeme",
                                   (" ".join(terms),)).fetchone()[0]
            if not lexemes:
                return []
            rows = conn.execute(
                f"""WITH m AS MATERIALIZED (
                      SELECT c.id, c.tsv, c.n_tokens FROM rag_chunks c
                      WHERE c.kb_id = {kb_lit} AND c.tsv @@ %s::tsquery),
                    t AS (SELECT m.id, u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf, m.n_tokens
                          FROM m CROSS JOIN LATERAL unnest(m.tsv) u WHERE u.lexeme = ANY(%s::text[])),
                    df AS (SELECT lexeme, count(*) AS df FROM t GROUP BY lexeme),
                    s AS (SELECT greatest(n_chunks, 1)::float8 AS n,
                                 greatest(n_tokens::float8 / greatest(n_chunks, 1), 1) AS avgdl
                          FROM rag_kbs WHERE id = {kb_lit})
                SELECT t.id, sum(ln(1 + (s.n - df.df + 0.5) / (df.df + 0.5))
                                 * t.tf / (t.tf + {K1} * (1 - {B} + {B} * t.n_tokens / s.avgdl))) AS score
                FROM t JOIN df USING (lexeme) CROSS JOIN s
                WHERE t.id IN (SELECT c.id FROM rag_chunks c WHERE c.id IN (SELECT id FROM m){fsql})
                GROUP BY t.id ORDER BY score DESC, t.id LIMIT %s""",
                (_tsquery_text(lexemes), lexemes, *fargs, limit)).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def dense(self, kb: KnowledgeBase, vector: np.ndarray, limit: int, filters: dict) -> list[tuple[int, float]]:
        kb_lit, dim = self._lit(kb), int(kb.dimension)
        q = _vector_text(vector)
        fsql, fargs = self._filter_sql(filters)
        distance = f"(c.embedding::vector({dim}) <=> %s::vector({dim}))"
        with self.lock:
            conn = self._db()
            if filters or limit > _EF_SEARCH_MAX:
                # exact: score every (filtered) chunk; OFFSET 0 keeps the planner off the HNSW index
                rows = conn.execute(
                    f"SELECT id, dist FROM (SELECT c.id, {distance} AS dist FROM rag_chunks c "
                    f"WHERE c.kb_id = {kb_lit}{fsql} OFFSET 0) s ORDER BY dist, id LIMIT %s",
                    (q, *fargs, limit)).fetchall()
            else:
                with conn.transaction():
                    conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, limit)}")
                    rows = conn.execute(f"SELECT c.id, {distance} AS dist FROM rag_chunks c "
                                        f"WHERE c.kb_id = {kb_lit} ORDER BY {distance} LIMIT %s",
                                        (q, q, limit)).fetchall()
        return [(int(r[0]), 1.0 - float(r[1])) for r in rows]

    def fetch(self, kb: KnowledgeBase, rowids: list[int]) -> dict[int, dict]:
        if not rowids:
            return {}
        with self.lock:
            rows = self._db().execute(
                'SELECT c.id, c.doc_id, c.n, c.text, d.metadata, c.start, c."end" FROM rag_chunks c '
                "JOIN rag_documents d ON d.kb_id = c.kb_id AND d.doc_id = c.doc_id "
                "WHERE c.kb_id = %s AND c.id = ANY(%s)", (kb.id, list(rowids))).fetchall()
        return {r[0]: {"document_id": r[1], "chunk_id": f"{r[1]}#{r[2]}", "text": r[3],
                       "metadata": r[4], "start": r[5], "end": r[6]} for r in rows}

    def vectors(self, kb: KnowledgeBase, rowids: list[int]) -> np.ndarray:
        if not rowids:
            return np.zeros((0, kb.dimension), dtype=np.float32)
        with self.lock:
            rows = dict(self._db().execute("SELECT id, embedding::text FROM rag_chunks WHERE kb_id = %s "
                                           "AND id = ANY(%s)", (kb.id, list(rowids))).fetchall())
        return np.stack([_parse_vector(rows[i]) for i in rowids])
