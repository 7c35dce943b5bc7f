"""BM25 keyword search for the SQLite backend: Lucene BM25 (as `bm25s` scores it) over an incremental index.

Scoring is bm25s's "lucene" method: k1 = 1.5, b = 0.75, IDF = ln(1 + (N - df + 0.5) / (df + 0.5)), term weight
IDF * tf / (tf + k1 (1 - b + b dl / avgdl)), document length = number of indexed tokens. Tokenization is
bm25s's: lowercase, words of two or more characters (``(?u)\\b\\w\\w+\\b``), bm25s's English stop words removed,
Snowball English stems (PyStemmer). Queries go through the same steps; a term the query repeats counts once per
occurrence (as bm25s and a Lucene BooleanQuery of the words do).

Incremental (no whole-index rebuild after a write). bm25s bakes IDF and the mean length into its matrix, so
one new document would change every stored weight; this index keeps raw term frequencies instead, in
segments of postings (term -> positions, tf), and computes IDF, N and avgdl over the live documents at query
time, the way Lucene keeps per-segment postings and collection statistics. Scores are exactly those of a
fresh bm25s index over the live chunks (tests compare them). A write appends a small segment; a delete clears
the position's live bit. Small segments merge into one delta segment when there are more than
``MAX_SEGMENTS``; the delta merges into the base segment (dropping deleted positions) once it holds more than
an eighth of the base's postings, so each posting is rewritten O(log N) times overall (amortized, like an
LSM tree) and no write or search pays for the whole index.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np

K1, B = 1.5, 0.75
MAX_SEGMENTS = 8
MERGE_MIN_POSTINGS = 1 << 16  # the delta merges into the base past max(this, base / 8) postings
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


class _Segment:
    """Postings of some positions: for term id t, positions pos[indptr[t]:indptr[t+1]] with frequencies tf."""

    def __init__(self, indptr: np.ndarray, pos: np.ndarray, tf: np.ndarray):
        self.indptr, self.pos, self.tf = indptr, pos, tf

    @classmethod
    def from_coo(cls, terms: np.ndarray, pos: np.ndarray, tf: np.ndarray, n_terms: int) -> _Segment:
        order = np.lexsort((pos, terms))
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=n_terms), out=indptr[1:])
        return cls(indptr, pos[order].astype(np.int64), tf[order].astype(np.float32))

    def __len__(self) -> int:
        return len(self.pos)

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        if term + 1 >= len(self.indptr):
            return self.pos[:0], self.tf[:0]
        lo, hi = self.indptr[term], self.indptr[term + 1]
        return self.pos[lo:hi], self.tf[lo:hi]

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        terms = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
        return terms, self.pos, self.tf


class KeywordIndex:
    """One knowledge base's BM25 index. Not thread-safe: the store calls it under its lock.

    ``applied`` is the last change-log sequence number folded in (see sqlite_store)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.rowids = np.zeros(0, dtype=np.int64)   # per position
        self.length = np.zeros(0, dtype=np.float32)  # tokens per position
        self.live = np.zeros(0, dtype=bool)
        self.n = 0                                   # positions used
        self.pos_of: dict[int, int] = {}             # live row id -> position
        self.base: _Segment | None = None
        self.segments: list[_Segment] = []
        self.total_length = 0.0
        self.applied = 0

    def __len__(self) -> int:
        return len(self.pos_of)

    # writes

    def _grow(self, extra: int) -> None:
        need = self.n + extra
        if need > len(self.rowids):
            cap = max(need, 2 * len(self.rowids), 1024)
            for name in ("rowids", "length", "live"):
                old = getattr(self, name)
                new = np.zeros(cap, dtype=old.dtype)
                new[:self.n] = old[:self.n]
                setattr(self, name, new)

    def remove(self, rowids) -> None:
        for r in rowids:
            p = self.pos_of.pop(int(r), None)
            if p is not None:
                self.live[p] = False
                self.total_length -= float(self.length[p])

    def add(self, rowids: list[int], tokens: list[list[str]]) -> None:
        """Index chunks (a row id already present is replaced)."""
        self.remove(rowids)
        if not rowids:
            return
        self._grow(len(rowids))
        terms, pos, tf = [], [], []
        for r, toks in zip(rowids, tokens, strict=True):
            p = self.n
            self.n += 1
            self.rowids[p], self.length[p], self.live[p] = r, len(toks), True
            self.pos_of[int(r)] = p
            self.total_length += len(toks)
            for term, count in Counter(toks).items():
                t = self.vocab.get(term)
                if t is None:
                    t = self.vocab[term] = len(self.vocab)
                terms.append(t)
                pos.append(p)
                tf.append(count)
        if terms:
            self.segments.append(_Segment.from_coo(np.asarray(terms, np.int64), np.asarray(pos, np.int64),
                                                   np.asarray(tf, np.float32), len(self.vocab)))
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        base_n = len(self.base) if self.base is not None else 0
        delta_n = sum(map(len, self.segments))
        if delta_n > max(base_n // 8, MERGE_MIN_POSTINGS) or (base_n == 0 and len(self.segments) > MAX_SEGMENTS):
            self.merge(compact=True)
        elif len(self.segments) > MAX_SEGMENTS:
            parts = [s.coo() for s in self.segments]
            self.segments = [_Segment.from_coo(*(np.concatenate(x) for x in zip(*parts)), len(self.vocab))]

    def merge(self, compact: bool = True) -> None:
        """Fold every segment into one base segment; ``compact`` drops deleted positions."""
        parts = [s.coo() for s in ([self.base] if self.base is not None else []) + self.segments]
        if not parts:
            self.segments = []
            return
        terms, pos, tf = (np.concatenate(x) for x in zip(*parts))
        if compact:
            keep = self.live[:self.n]
            new_pos = np.cumsum(keep) - 1
            alive = keep[pos]
            terms, pos, tf = terms[alive], new_pos[pos[alive]], tf[alive]
            self.rowids = self.rowids[:self.n][keep].copy()
            self.length = self.length[:self.n][keep].copy()
            self.n = len(self.rowids)
            self.live = np.ones(self.n, dtype=bool)
            self.pos_of = {int(r): i for i, r in enumerate(self.rowids)}
        self.base, self.segments = _Segment.from_coo(terms, pos, tf, len(self.vocab)), []

    # search

    def search(self, query: str, limit: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """(row id, BM25) best first among chunks sharing a term with the query (and in `allowed` if given)."""
        n_live = len(self.pos_of)
        if n_live == 0 or limit <= 0:
            return []
        terms = [self.vocab[t] for t in tokenize([query])[0] if t in self.vocab]
        if not terms:
            return []
        avgdl = self.total_length / n_live
        live = self.live[:self.n]
        segments = ([self.base] if self.base is not None else []) + self.segments
        all_pos, all_w = [], []
        for term, repeat in Counter(terms).items():
            got = [s.postings(term) for s in segments]
            pos = np.concatenate([g[0] for g in got])
            tf = np.concatenate([g[1] for g in got])
            keep = live[pos]
            pos, tf = pos[keep], tf[keep]
            if not len(pos):
                continue
            idf = np.log1p((n_live - len(pos) + 0.5) / (len(pos) + 0.5))
            dl = self.length[pos]
            all_pos.append(pos)
            all_w.append(repeat * idf * tf / (tf + K1 * (1 - B + B * dl / avgdl)))
        if not all_pos:
            return []
        scores = np.bincount(np.concatenate(all_pos), weights=np.concatenate(all_w), minlength=self.n)
        if allowed is not None:
            ok = np.isin(self.rowids[:self.n], np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
            scores = np.where(ok, scores, 0.0)
        hit = np.flatnonzero(scores > 0)
        if len(hit) > limit:
            hit = hit[np.argpartition(-scores[hit], limit - 1)[:limit]]
        rowids = self.rowids[:self.n]
        hit = hit[np.lexsort((rowids[hit], -scores[hit]))]
        return [(int(rowids[i]), float(scores[i])) for i in hit]

    # persistence (the store writes to a temporary directory and renames it)

    def save(self, directory: Path) -> None:
        self.merge(compact=True)
        directory.mkdir(parents=True, exist_ok=True)
        empty = _Segment(np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        base = self.base or empty
        np.savez(directory / "keyword.npz", rowids=self.rowids[:self.n], length=self.length[:self.n],
                 indptr=base.indptr, pos=base.pos, tf=base.tf)
        terms = sorted(self.vocab, key=self.vocab.get)
        (directory / "vocab.json").write_text(json.dumps(terms))
        (directory / "keyword.json").write_text(json.dumps({"applied": self.applied, "n": self.n}))

    @classmethod
    def load(cls, directory: Path) -> KeywordIndex | None:
        try:
            meta = json.loads((directory / "keyword.json").read_text())
            terms = json.loads((directory / "vocab.json").read_text())
            with np.load(directory / "keyword.npz") as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            return None
        ix = cls()
        ix.vocab = {t: i for i, t in enumerate(terms)}
        ix.rowids, ix.length = arrays["rowids"].astype(np.int64), arrays["length"].astype(np.float32)
        ix.n = len(ix.rowids)
        ix.live = np.ones(ix.n, dtype=bool)
        ix.pos_of = {int(r): i for i, r in enumerate(ix.rowids)}
        ix.total_length = float(ix.length.sum())
        ix.base = _Segment(arrays["indptr"], arrays["pos"], arrays["tf"]) if len(arrays["pos"]) else None
        ix.applied = int(meta["applied"])
        return ix
