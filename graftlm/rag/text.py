"""Query text to search terms: words, minus English stop words, quoted for FTS5 and OR'ed."""

from __future__ import annotations

import re

# a common English list (Lucene's + a few question words); keeps queries like "how do I reset" on topic
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
""".split())

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> list[str]:
    """Lowercased words of the query without stop words or repeats, in order."""
    seen: dict[str, None] = {}
    for w in _WORD.findall(query.lower()):
        if w not in STOP_WORDS:
            seen.setdefault(w)
    return list(seen)


def query_words(query: str) -> list[str]:
    """Lowercased words of the query without stop words, repeats kept: BM25 (Lucene, bm25s) counts a word the
    query says twice twice, and on CISI's long queries dropping repeats costs 0.07 nDCG@10."""
    return [w for w in _WORD.findall(query.lower()) if w not in STOP_WORDS]


def fts_or_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression: every term quoted (no syntax from user input) and OR'ed."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
