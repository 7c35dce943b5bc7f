"""Dense search for the SQLite backend: an HNSW graph per knowledge base (`usearch`), exact below a size.

The vectors' source of truth stays the knowledge base's sqlite-vec table; the graph is a derived index that
follows the store's change log (see sqlite_store), is saved under ``<db dir>/index/<kb id>/`` and loads
instead of rebuilding. Cosine metric, f32, connectivity 16, expansion 128 on add and ``EXPANSION_SEARCH`` on
search (recall@10 vs exact >= 0.98 at 100k chunks in bench/rag.py and on random data in the tests).

- Exact below ``EXACT_BELOW`` chunks: usearch's brute-force scan (no approximation where it buys nothing).
- Filters: a pre-filter when the matching chunks are few (at most ``PREFILTER_MAX``, or a small share of the
  knowledge base): their vectors are scored exactly, so the answer is exact and complete. Otherwise a
  post-filter with over-fetch: ask the graph for limit x (N / matching) x 2 neighbours (at least 2 x limit),
  keep the matching ones, and double the over-fetch until ``limit`` survive or the whole index was asked.
  Only matching chunks are ever returned.
- Deletes remove the key from the graph (usearch marks the node and skips it); a replaced chunk gets a new
  row id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EXACT_BELOW = 10_000
PREFILTER_MAX = 20_000
EXPANSION_SEARCH = 128


class DenseIndex:
    """Not thread-safe: the store calls it under its lock. ``applied``: last change-log sequence folded in."""

    def __init__(self, dimension: int, index=None):
        from usearch.index import Index

        self.dimension = dimension
        self.index = index if index is not None else Index(ndim=dimension, metric="cos", dtype="f32",
                                                           connectivity=16, expansion_add=128,
                                                           expansion_search=EXPANSION_SEARCH)
        self.index.expansion_search = EXPANSION_SEARCH
        self.applied = 0

    def __len__(self) -> int:
        return len(self.index)

    def remove(self, rowids) -> None:
        keys = np.asarray(list(rowids), dtype=np.uint64)
        if len(keys):
            self.index.remove(keys)  # keys not in the graph are skipped

    def add(self, rowids: list[int], vectors: np.ndarray) -> None:
        self.remove(rowids)
        if len(rowids):
            self.index.add(np.asarray(rowids, dtype=np.uint64), np.ascontiguousarray(vectors, dtype=np.float32))

    def _exact(self, vector: np.ndarray, keys: np.ndarray, limit: int) -> list[tuple[int, float]]:
        if not len(keys):
            return []
        got = self.index.get(keys, dtype=np.float32)
        got = got if isinstance(got, tuple) else (got,)
        present = [i for i, g in enumerate(got) if g is not None]
        keys, mat = keys[present], np.stack([got[i] for i in present]) if present else np.zeros((0, self.dimension))
        norms = np.linalg.norm(mat, axis=1) * (np.linalg.norm(vector) or 1.0)
        sims = (mat @ vector) / np.where(norms > 0, norms, 1.0)
        top = np.argsort(-sims, kind="stable")[:limit]
        return [(int(keys[i]), float(sims[i])) for i in top]

    def search(self, vector: np.ndarray, limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """(row id, cosine similarity) best first, only row ids in ``allowed`` when given."""
        n = len(self.index)
        if n == 0 or limit <= 0:
            return []
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        exact = n < EXACT_BELOW
        if allowed is None:
            m = self.index.search(vector, min(limit, n), exact=exact)
            return [(int(k), 1.0 - float(d)) for k, d in zip(m.keys, m.distances)]
        keys = np.fromiter(allowed, dtype=np.uint64, count=len(allowed))
        if len(keys) <= PREFILTER_MAX or len(keys) * 20 <= n or exact:
            return self._exact(vector, keys, limit)
        fetch = max(2 * limit, int(np.ceil(limit * n / len(keys) * 2)))
        while True:
            m = self.index.search(vector, min(fetch, n), exact=False)
            hits = [(int(k), 1.0 - float(d)) for k, d in zip(m.keys, m.distances) if int(k) in allowed]
            if len(hits) >= limit or fetch >= n:
                return hits[:limit]
            fetch *= 2

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.index.save(str(directory / "dense.usearch"))
        (directory / "dense.json").write_text(json.dumps({"applied": self.applied, "n": len(self.index),
                                                          "dimension": self.dimension}))

    @classmethod
    def load(cls, directory: Path, dimension: int) -> DenseIndex | None:
        from usearch.index import Index

        try:
            meta = json.loads((directory / "dense.json").read_text())
            index = Index.restore(str(directory / "dense.usearch"))
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        if index is None or meta.get("dimension") != dimension:
            return None
        ix = cls(dimension, index)
        ix.applied = int(meta["applied"])
        return ix
