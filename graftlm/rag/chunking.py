"""Token-aware chunking that keeps headings and paragraphs together and remembers source offsets.

A chunk is a span of the document: ``chunk.text == text[chunk.start:chunk.end]`` always holds, so a
citation can point back at the exact characters. Sizes are counted in the embedding model's own
tokens (``token_spans`` returns each token's character span), so a chunk fits the model's window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

TokenSpans = Callable[[str], list[tuple[int, int]]]

DEFAULT_CHUNK_SIZE = 250  # MiniLM sees 256 tokens including [CLS] and [SEP]
DEFAULT_CHUNK_OVERLAP = 32

_HEADING_LINE = re.compile(r"#{1,6}\s")
# how good a place is to cut before a token; a heading is a hard break
_WORD, _SENTENCE, _LINE, _PARAGRAPH, _HEADING = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    end: int
    text: str
    n_tokens: int


def regex_token_spans(text: str) -> list[tuple[int, int]]:
    """Words and punctuation marks; a stand-in tokenizer for callers without a model."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def _break_scores(text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    scores, in_heading = [], []
    heading = False
    prev_end = 0
    for i, (s, _e) in enumerate(spans):
        gap = text[prev_end:s]
        newlines = gap.count("\n")
        if i == 0 or newlines:
            line_start = text.rfind("\n", 0, s) + 1
            heading = bool(_HEADING_LINE.match(text, line_start)) and not text[line_start:s].strip("#").strip()
        if heading and (i == 0 or newlines):
            score = _HEADING
        elif i == 0 or newlines >= 2:
            score = _PARAGRAPH
        elif newlines:
            score = _LINE
        elif gap and text[spans[i - 1][1] - 1] in ".!?":
            score = _SENTENCE
        elif gap:
            score = _WORD
        else:
            score = 0
        scores.append(score)
        in_heading.append(heading)
        prev_end = spans[i][1]
    return scores, in_heading


def chunk_text(text: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
               token_spans: TokenSpans = regex_token_spans) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``chunk_size`` tokens.

    A markdown heading starts a new chunk (once the current chunk has some body text); otherwise a
    chunk ends at the best boundary in its second half: paragraph, then line, sentence, word.
    Consecutive chunks inside one section share about ``chunk_overlap`` tokens; sections don't.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_overlap must be >= 0 and smaller than chunk_size")
    spans = token_spans(text)
    n = len(spans)
    scores, in_heading = _break_scores(text, spans)
    chunks: list[Chunk] = []
    i = 0
    while i < n:
        limit = min(i + chunk_size, n)
        j, hard = None, False
        has_body = not in_heading[i]
        for t in range(i + 1, limit):
            if scores[t] == _HEADING and has_body:
                j, hard = t, True
                break
            has_body = has_body or not in_heading[t]
        if j is None and limit == n:
            j = n
        if j is None:
            lo = i + max(1, chunk_size // 2)
            best = max(range(lo, limit + 1), key=lambda t: (scores[t], t))
            j = best if scores[best] > 0 else limit
            hard = scores[j] == _HEADING
        start, end = spans[i][0], spans[j - 1][1]
        chunks.append(Chunk(len(chunks), start, end, text[start:end], j - i))
        if hard or j == n or chunk_overlap == 0:
            i = j
            continue
        back = max(j - chunk_overlap, i + 1)
        # start the overlap on a word boundary rather than mid-word
        i = next((t for t in range(back, j) if scores[t] > 0), back)
    return chunks
