"""What a knowledge-base store must do; SQLite (FTS5 + sqlite-vec) and PostgreSQL (tsvector + pgvector) implement it.

Chunks are addressed by an integer row id inside the store; the public chunk id is "{document_id}#{n}".
Scores: keyword = BM25 (higher is better), dense = cosine similarity.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from graftlm.errors import GraftError
from graftlm.rag.chunking import Chunk


@dataclass(frozen=True)
class KnowledgeBase:
    id: str
    name: str
    chunk_size: int
    chunk_overlap: int
    embedding_model: str
    dimension: int
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DocumentRows:
    """One document ready to store: its chunks and their unit-normalized vectors (len(chunks) rows)."""
    doc_id: str
    metadata: dict
    n_chars: int
    chunks: list[Chunk]
    vectors: np.ndarray


METADATA_KEY = re.compile(r"^[A-Za-z0-9_.\- ]{1,64}$")


def check_filters(filters: dict | None) -> dict:
    """Equality filters on metadata keys; values are str, int, float, bool or None."""
    filters = filters or {}
    if not isinstance(filters, dict):
        raise GraftError("filters must be an object of metadata key -> value", param="filters")
    for key, value in filters.items():
        if not isinstance(key, str) or not METADATA_KEY.match(key):
            raise GraftError(f"filter key {key!r}: use letters, digits, '_', '-', '.', ' ' (at most 64)",
                             param="filters")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise GraftError(f"filter {key!r}: value must be a string, number, boolean or null", param="filters")
    return filters


class Backend(Protocol):
    def insert_kb(self, kb: KnowledgeBase) -> None: ...
    def list_kbs(self) -> list[KnowledgeBase]: ...
    def find_kb(self, name_or_id: str) -> KnowledgeBase | None: ...
    def drop_kb(self, kb: KnowledgeBase) -> None: ...
    def replace_documents(self, kb: KnowledgeBase, docs: list[DocumentRows]) -> None:
        """Atomically make each document's chunks, keyword rows and vectors exactly the given ones."""
    def delete_document(self, kb: KnowledgeBase, doc_id: str) -> bool: ...
    def list_documents(self, kb: KnowledgeBase) -> list[dict[str, Any]]:
        """{"id", "metadata", "n_chars", "n_chunks"} per document, by id."""
    def counts(self, kb: KnowledgeBase) -> tuple[int, int]:
        """(documents, chunks)."""
    def keyword(self, kb: KnowledgeBase, terms: list[str], limit: int, filters: dict) -> list[tuple[int, float]]:
        """(row id, BM25) best first; documents matching any term."""
    def dense(self, kb: KnowledgeBase, vector: np.ndarray, limit: int, filters: dict) -> list[tuple[int, float]]:
        """(row id, cosine similarity) best first."""
    def fetch(self, kb: KnowledgeBase, rowids: list[int]) -> dict[int, dict[str, Any]]:
        """row id -> {"document_id", "chunk_id", "text", "metadata", "start", "end"}."""
    def vectors(self, kb: KnowledgeBase, rowids: list[int]) -> np.ndarray: ...
    def close(self) -> None: ...
