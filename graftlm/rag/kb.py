"""Knowledge bases: create, ingest, delete and search. The public face of graftlm.rag.

Every function takes ``db``: None for the default store (GRAFT_RAG_DATABASE_URL when set, a PostgreSQL
URL; else ``GRAFT_HOME/rag.db``), a path to another SQLite file, a
``postgresql://`` URL, or an open backend. ``kb`` is a KnowledgeBase, its id or its name.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, select

from graftlm.errors import GraftError, NotFound
from graftlm.rag import embeddings, rank
from graftlm.rag.backend import Backend, DocumentRows, KnowledgeBase, check_filters
from graftlm.rag.chunking import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, chunk_text
from graftlm.rag.fusion import check_fusion, rrf
from graftlm.rag.loaders import load_file
from graftlm.rag.text import query_words
from graftlm.store import scope
from graftlm.store.db import session
from graftlm.store.models import DEFAULT_PROJECT, KnowledgeBaseOwner

MODES = ("keyword", "dense", "hybrid")
Progress = Callable[[int, int], None]

_stores: dict[str, Backend] = {}
_stores_lock = threading.Lock()


def open_store(db: str | Path | Backend | None = None) -> Backend:
    if db is not None and not isinstance(db, (str, Path)):
        return db
    if db is None:
        from graftlm.config import get_settings

        db = get_settings().rag_db
    key = str(db)
    with _stores_lock:
        if key not in _stores:
            if key.startswith(("postgresql://", "postgres://", "postgresql+")):  # +psycopg: SQLAlchemy style
                from graftlm.rag.postgres_store import PostgresBackend

                _stores[key] = PostgresBackend(key)
            else:
                from graftlm.rag.sqlite_store import SQLiteBackend

                _stores[key] = SQLiteBackend(key)
        return _stores[key]


def close_stores() -> None:
    with _stores_lock:
        for store in _stores.values():
            store.close()
        _stores.clear()


def _resolve(kb: KnowledgeBase | str, db) -> tuple[Backend, KnowledgeBase]:
    store = open_store(db)
    key = kb.id if isinstance(kb, KnowledgeBase) else kb
    found = store.find_kb(key)
    if found is None or not _visible(found.id):  # another project's KB is as unknown as a missing one
        raise NotFound(f"knowledge base {key!r} not found", param="knowledge_base")
    return store, found


# knowledge bases

def create_kb(name: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
              embedding_model: str | None = None, db=None) -> KnowledgeBase:
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        raise GraftError("name must be a non-empty string of at most 128 characters", param="name")
    model = embedding_model or embeddings.DEFAULT_MODEL
    embeddings.model_path(model)  # NotFound for unknown models
    limit = embeddings.max_tokens(model)
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= limit:
        raise GraftError(f"chunk_size must be between 1 and {limit} tokens (what {model} reads at once)",
                         param="chunk_size")
    if not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_size:
        raise GraftError("chunk_overlap must be >= 0 and smaller than chunk_size", param="chunk_overlap")
    kb = KnowledgeBase(id=uuid.uuid4().hex, name=name, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                       embedding_model=model, dimension=embeddings.dimension(model), created_at=time.time())
    with session() as s:  # its project first: a KB is never visible to the wrong one, even for a moment
        s.add(KnowledgeBaseOwner(knowledge_base_id=kb.id, project_id=scope.project_for_new_rows()))
    try:
        open_store(db).insert_kb(kb)
    except BaseException:
        with session() as s, scope.unconfined():
            s.execute(delete(KnowledgeBaseOwner).where(KnowledgeBaseOwner.knowledge_base_id == kb.id))
        raise
    return kb


def _owners(ids: list[str]) -> dict[str, str]:
    """The project of each knowledge base id (one made before projects has no row: ``default``)."""
    with session() as s, scope.unconfined():
        rows = dict(s.execute(select(KnowledgeBaseOwner.knowledge_base_id, KnowledgeBaseOwner.project_id)
                              .where(KnowledgeBaseOwner.knowledge_base_id.in_(ids))).all())
    return {i: rows.get(i, DEFAULT_PROJECT) for i in ids}


def _visible(kb_id: str) -> bool:
    p = scope.current()
    return p is None or _owners([kb_id])[kb_id] == p


def list_kbs(*, db=None) -> list[KnowledgeBase]:
    kbs = open_store(db).list_kbs()
    p = scope.current()
    if p is None:
        return kbs
    owners = _owners([kb.id for kb in kbs])
    return [kb for kb in kbs if owners[kb.id] == p]


def get_kb(kb: KnowledgeBase | str, *, db=None) -> KnowledgeBase:
    return _resolve(kb, db)[1]


def describe_kb(kb: KnowledgeBase | str, *, db=None) -> dict:
    store, kb = _resolve(kb, db)
    documents, chunks = store.counts(kb)
    return {**kb.to_dict(), "documents": documents, "chunks": chunks}


def delete_kb(kb: KnowledgeBase | str, *, db=None) -> None:
    store, kb = _resolve(kb, db)
    store.drop_kb(kb)
    with session() as s, scope.unconfined():
        s.execute(delete(KnowledgeBaseOwner).where(KnowledgeBaseOwner.knowledge_base_id == kb.id))


# documents

def _check_documents(docs: list[dict]) -> list[dict]:
    if not isinstance(docs, (list, tuple)):
        raise GraftError("docs must be a list of {\"id\", \"text\", \"metadata\"} objects", param="docs")
    by_id: dict[str, dict] = {}
    for i, d in enumerate(docs):
        where = f"docs[{i}]"
        if not isinstance(d, dict):
            raise GraftError(f"{where}: expected an object with \"id\" and \"text\"", param="docs")
        doc_id, text, metadata = d.get("id"), d.get("text"), d.get("metadata") or {}
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool) or not str(doc_id).strip():
            raise GraftError(f"{where}: field \"id\" must be a non-empty string", param="docs")
        if not isinstance(text, str) or not text.strip():
            raise GraftError(f"{where} (id {doc_id!r}): field \"text\" must be a non-empty string", param="docs")
        if not isinstance(metadata, dict):
            raise GraftError(f"{where} (id {doc_id!r}): field \"metadata\" must be an object", param="docs")
        by_id.pop(str(doc_id), None)  # a repeated id: the last one wins
        by_id[str(doc_id)] = {"id": str(doc_id), "text": text, "metadata": metadata}
    return list(by_id.values())


def ingest_documents(kb: KnowledgeBase | str, docs: list[dict], *, progress: Progress | None = None,
                     batch_size: int = 1024, db=None) -> dict:
    """Chunk, embed and store documents; an id already present is replaced whole.

    Documents are validated first (nothing is stored if one is bad), then written ``batch_size`` at a
    time, each batch in one transaction; ``progress(done, total)`` runs after each batch and may
    raise to cancel (batches already written stay).
    """
    store, kb = _resolve(kb, db)
    docs = _check_documents(docs)
    token_spans = embeddings.token_spans_for(kb.embedding_model)
    total_chunks, per_document = 0, {}
    for lo in range(0, len(docs), batch_size):
        group = docs[lo:lo + batch_size]
        chunked = [chunk_text(d["text"], chunk_size=kb.chunk_size, chunk_overlap=kb.chunk_overlap,
                              token_spans=token_spans) for d in group]
        vectors = embeddings.embed([c.text for chunks in chunked for c in chunks], kb.embedding_model)
        rows, at = [], 0
        for d, chunks in zip(group, chunked):
            rows.append(DocumentRows(d["id"], d["metadata"], len(d["text"]), chunks, vectors[at:at + len(chunks)]))
            per_document[d["id"]] = len(chunks)
            at += len(chunks)
        store.replace_documents(kb, rows)
        total_chunks += at
        if progress is not None:
            progress(lo + len(group), len(docs))
    return {"documents": len(docs), "chunks": total_chunks, "per_document": per_document}


def ingest_files(kb: KnowledgeBase | str, paths: list[str | Path], *, progress: Progress | None = None,
                 metadata: dict | None = None, db=None) -> list[dict]:
    """One report per file: {"path", "ok", "documents", "chunks", "error"}; a bad file is skipped, not fatal.

    Document ids are the file names (jsonl: the line's "id", else "name:line"). ``metadata`` is added to
    every document's (over the file's own keys), so search ``filters`` can select them.
    """
    store, kb = _resolve(kb, db)
    reports = []
    for n, path in enumerate(paths, start=1):
        report = {"path": str(path), "ok": False, "documents": 0, "chunks": 0, "error": None}
        try:
            docs = [{**d, "metadata": {**(d.get("metadata") or {}), **(metadata or {})}} for d in load_file(path)]
            done = ingest_documents(kb, docs, db=store)
            report.update(ok=True, documents=done["documents"], chunks=done["chunks"])
        except GraftError as e:
            report["error"] = e.message
        reports.append(report)
        if progress is not None:
            progress(n, len(paths))
    return reports


def list_documents(kb: KnowledgeBase | str, *, db=None) -> list[dict]:
    """The knowledge base's documents: {"id", "metadata", "n_chars", "n_chunks"} each, by id."""
    store, kb = _resolve(kb, db)
    return store.list_documents(kb)


def delete_document(kb: KnowledgeBase | str, document_id: str, *, db=None) -> None:
    store, kb = _resolve(kb, db)
    if not store.delete_document(kb, str(document_id)):
        raise NotFound(f"document {document_id!r} not found in knowledge base {kb.name!r}", param="document_id")


# search

def search(kb: KnowledgeBase | str, query: str, *, top_k: int = 10, mode: str = "hybrid", rerank: bool = False,
           ranker: str | rank.ScoreFn | None = None, rerank_top_n: int = 50, filters: dict | None = None,
           rrf_k: int = 60, weights: dict[str, float] | None = None, candidates: int | None = None,
           db=None) -> list[dict]:
    """Best chunks first: [{"document_id", "chunk_id", "text", "score", "metadata", "start", "end",
    "mode", "ranker"}]; ``text == document_text[start:end]``.

    score: BM25 (keyword), cosine similarity (dense), RRF score (hybrid), or the ranker's score.
    ranker: which second stage ran (None without ``rerank``; see graftlm.rag.rank).
    hybrid fuses ``candidates`` hits of each mode (default max(2 * needed, 50)) with RRF:
    score = sum over keyword and dense of weights[list] / (rrf_k + rank in list); a missing weight is 1.
    """
    if not isinstance(query, str) or not query.strip():
        raise GraftError("query must be a non-empty string", param="query")
    if mode not in MODES:
        raise GraftError(f"mode must be one of {', '.join(MODES)}", param="mode")
    if not isinstance(top_k, int) or not 1 <= top_k <= 1000:
        raise GraftError("top_k must be between 1 and 1000", param="top_k")
    weights = check_fusion(rrf_k, weights)
    if weights and mode != "hybrid":
        raise GraftError(f"weights apply to mode \"hybrid\" only (mode is {mode!r})", param="weights")
    filters = check_filters(filters)
    store, kb = _resolve(kb, db)
    if store.counts(kb)[0] == 0:
        raise GraftError(f"knowledge base {kb.name!r} is empty: ingest documents before searching",
                         code="knowledge_base_empty")
    needed = max(top_k, rerank_top_n) if rerank else top_k
    depth = candidates or max(2 * needed, 50)
    query_vector = None
    if mode != "keyword":
        query_vector = embeddings.embed([query], kb.embedding_model)[0]
    if mode == "keyword":
        hits = store.keyword(kb, query_words(query), needed, filters)
    elif mode == "dense":
        hits = store.dense(kb, query_vector, needed, filters)
    else:
        keyword = store.keyword(kb, query_words(query), depth, filters)
        dense = store.dense(kb, query_vector, depth, filters)
        hits = rrf({"keyword": [h[0] for h in keyword], "dense": [h[0] for h in dense]},
                   k=rrf_k, weights=weights)[:needed]
    rows = store.fetch(kb, [h[0] for h in hits])
    results = [{**rows[i], "score": float(s), "mode": mode, "ranker": None} for i, s in hits]
    if rerank:
        name, score_fn = rank.resolve(ranker)
        vectors = None
        if score_fn is None:
            if query_vector is None:
                query_vector = embeddings.embed([query], kb.embedding_model)[0]
            vectors = store.vectors(kb, [h[0] for h in hits])
        results, _ = rank.rerank(query, results, ranker=score_fn or name, top_k=top_k,
                                 query_vector=query_vector, vectors=vectors)
    return results[:top_k]
