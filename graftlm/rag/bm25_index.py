"""BM25 keyword search for the SQLite backend, scored by the `bm25s` package (Lucene BM25).

Scoring is bm25s's: method "lucene", k1 = 1.5, b = 0.75, IDF = ln(1 + (N - df + 0.5) / (df + 0.5)), document
length = number of indexed tokens. Tokenization is bm25s's too: lowercase, words of two or more characters
(``(?u)\\b\\w\\w+\\b``), bm25s's English stop words removed, Snowball English stems (PyStemmer). Queries go through
the same steps, so a query's terms are the document terms they must match; a term the query repeats counts
once per occurrence (as bm25s and a Lucene BooleanQuery of the words do).

Incremental on ingest and delete: each chunk's tokens are computed once, at ingest, and stored in SQLite next to
the chunk (table ``rag_tokens``, written in the same transaction). Every write bumps the knowledge base's
generation; the scored index (bm25s's sparse matrix, which depends on every document through IDF and the mean
length) is rebuilt from the stored tokens on the first search after a write, kept in memory, and saved under
``GRAFT_HOME/bm25/<kb id>/<generation>/`` so a restart loads it instead of rebuilding. A crash mid-save leaves a
stale or partial directory that is ignored (a generation is only used once its ``complete`` marker exists).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

K1, B = 1.5, 0.75
_stemmer_lock = threading.Lock()
_stemmer = None


def _stem():
    global _stemmer
    with _stemmer_lock:
        if _stemmer is None:
            import Stemmer

            _stemmer = Stemmer.Stemmer("english")
        return _stemmer


def tokenize(texts: list[str]) -> list[list[str]]:
    """bm25s's tokenizer with English stop words and the Snowball English stemmer: one token list per text."""
    import bm25s

    if not texts:
        return []
    stemmer = _stem()
    with _stemmer_lock:  # PyStemmer objects are not thread-safe
        return bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer.stemWords, return_ids=False,
                              show_progress=False)


class ScoredIndex:
    """One generation of a knowledge base's BM25 index: bm25s's model plus chunk row id per position."""

    def __init__(self, model, rowids: np.ndarray, generation: int):
        self.model, self.rowids, self.generation = model, rowids, generation

    @classmethod
    def build(cls, rowids: list[int], tokens: list[list[str]], generation: int) -> ScoredIndex:
        import bm25s

        model = bm25s.BM25(k1=K1, b=B, method="lucene")
        if rowids:
            model.index(tokens, show_progress=False)
        return cls(model if rowids else None, np.asarray(rowids, dtype=np.int64), generation)

    def save(self, root: Path) -> None:
        final = root / str(self.generation)
        if (final / "complete").exists():
            return
        tmp = root / f".{self.generation}.{os.getpid()}.{threading.get_ident()}.tmp"  # processes may race here
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.model is not None:
            self.model.save(str(tmp), show_progress=False)
        np.save(tmp / "rowids.npy", self.rowids)
        (tmp / "complete").write_text(json.dumps({"generation": self.generation, "n": len(self.rowids)}))
        shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:  # another process saved this generation first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
        for old in root.iterdir():  # older generations are no longer needed
            if old.name != str(self.generation) and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, root: Path, generation: int) -> ScoredIndex | None:
        import bm25s

        d = root / str(generation)
        if not (d / "complete").exists():
            return None
        try:
            rowids = np.load(d / "rowids.npy")
            model = bm25s.BM25.load(str(d), mmap=False, show_progress=False, verbosity=0) if len(rowids) else None
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None
        return cls(model, rowids, generation)

    def __len__(self) -> int:
        return len(self.rowids)

    def search(self, query: str, limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """(row id, BM25) best first among chunks sharing a term with the query (and in `allowed` if given)."""
        if self.model is None or limit <= 0:
            return []
        terms = [t for t in tokenize([query])[0] if t in self.model.vocab_dict]  # repeats count, as in bm25s
        if not terms:
            return []
        mask = None
        if allowed is not None:
            mask = np.isin(self.rowids, np.fromiter(allowed, dtype=np.int64, count=len(allowed))).astype(np.float32)
            if not mask.any():
                return []
        scores = self.model.get_scores(terms)
        if mask is not None:  # bm25s's weight_mask is the same product, slower
            scores = scores * mask
        hit = np.flatnonzero(scores > 0)
        if len(hit) > limit:
            hit = hit[np.argpartition(-scores[hit], limit - 1)[:limit]]
        hit = hit[np.lexsort((self.rowids[hit], -scores[hit]))]
        return [(int(self.rowids[i]), float(scores[i])) for i in hit]
