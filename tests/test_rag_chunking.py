"""Chunking: sizes in tokens, heading/paragraph boundaries, overlap, and text == source[start:end]."""

from __future__ import annotations

import pytest

from graftlm.rag.chunking import chunk_text, regex_token_spans

DOC = """# Install

Run pip install graftlm. Then run graft serve.

# Configure

Set GRAFT_HOME to a directory. The default is ~/.graft and it holds the database.

## Keys

Create an admin key first."""


def _check_offsets(text, chunks):
    for c in chunks:
        assert c.text == text[c.start:c.end]
        assert c.text == c.text.strip()


def test_headings_start_chunks_and_offsets_match():
    chunks = chunk_text(DOC, chunk_size=100, chunk_overlap=10)
    _check_offsets(DOC, chunks)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Install", "# Configure", "## Keys"]
    assert [c.index for c in chunks] == [0, 1, 2]
    # no overlap across sections: every chunk starts after the previous ends
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))


def test_consecutive_headings_stay_with_their_body():
    text = "# Title\n\n## Part one\n\nBody text here.\n\n## Part two\n\nMore body."
    chunks = chunk_text(text, chunk_size=50, chunk_overlap=0)
    assert [c.text for c in chunks] == ["# Title\n\n## Part one\n\nBody text here.", "## Part two\n\nMore body."]


def test_long_text_respects_size_prefers_paragraphs_and_overlaps():
    paragraphs = [" ".join(f"w{p}x{i}" for i in range(30)) + "." for p in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, chunk_size=70, chunk_overlap=5)
    _check_offsets(text, chunks)
    assert all(c.n_tokens <= 70 for c in chunks)
    assert len(regex_token_spans(chunks[0].text)) == chunks[0].n_tokens
    # the first chunk ends at a paragraph end (2 paragraphs = 62 tokens), not mid-paragraph
    assert chunks[0].text == "\n\n".join(paragraphs[:2])
    # consecutive chunks overlap by about chunk_overlap tokens, starting on a word
    assert chunks[1].start < chunks[0].end
    assert len(regex_token_spans(text[chunks[1].start:chunks[0].end])) == 5
    assert chunks[-1].end == len(text)
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_unbreakable_text_and_edge_cases():
    text = "x" * 10 + " " + "-" * 40
    chunks = chunk_text(text, chunk_size=8, chunk_overlap=2)
    _check_offsets(text, chunks)
    assert all(c.n_tokens <= 8 for c in chunks) and chunks[-1].end == len(text)
    assert chunk_text("   \n\n ", chunk_size=8, chunk_overlap=0) == []
    with pytest.raises(ValueError):
        chunk_text("a b", chunk_size=4, chunk_overlap=4)


def test_chunk_sizes_count_the_embedding_models_tokens():
    from graftlm.rag.embeddings import token_spans_for

    spans = token_spans_for()
    text = "Ünïcode naïve café façade. " * 80 + "\n\n# Next\n\nend"
    chunks = chunk_text(text, chunk_size=50, chunk_overlap=8, token_spans=spans)
    _check_offsets(text, chunks)
    assert all(len(spans(c.text)) <= 50 for c in chunks)
    assert chunks[-1].text == "# Next\n\nend"
