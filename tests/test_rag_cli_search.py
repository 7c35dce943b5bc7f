"""`graft kb search` with --filters, --rrf-k and --weights, and clear errors for bad values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from graftlm import rag

DOCS = [
    {"id": "kittens", "text": "Kittens and cats purr, nap in the sun and chase mice around the house.",
     "metadata": {"topic": "pets"}},
    {"id": "manual", "text": "Feline model 7 printer manual: replace the toner cartridge when the light blinks.",
     "metadata": {"topic": "office"}},
    {"id": "dogs", "text": "Dogs bark at strangers and love long walks in the park.", "metadata": {"topic": "pets"}},
]


@pytest.fixture
def kb():
    from graftlm.cli import app  # noqa: F401 - import the CLI package before graftlm.cli.kb (it mounts it)

    kb = rag.create_kb("cli-kb", chunk_size=64, chunk_overlap=8)
    rag.ingest_documents(kb, DOCS)
    return kb


def search(*args):
    from graftlm.cli import app

    return CliRunner().invoke(app, ["kb", "search", "cli-kb", "feline companions", "--json", *args])


def test_filters_and_fusion_options_reach_the_search(kb):
    out = search("--filters", '{"topic": "pets"}')
    assert out.exit_code == 0, out.output
    assert {h["document_id"] for h in json.loads(out.stdout)} == {"kittens", "dogs"}

    keyword_first = json.loads(search("--rrf-k", "0", "--weights", "keyword=3").stdout)
    dense_first = json.loads(search("--rrf-k", "0", "--weights", '{"dense": 3}').stdout)
    assert keyword_first[0]["document_id"] == "manual" and dense_first[0]["document_id"] == "kittens"
    assert keyword_first[0]["score"] == pytest.approx(3 / (0 + 1) + 1 / (0 + keyword_rank_in_dense(kb)))


def keyword_rank_in_dense(kb) -> int:
    dense = [h["document_id"] for h in rag.search(kb, "feline companions", mode="dense")]
    return dense.index("manual") + 1


@pytest.mark.parametrize("args,says", [
    (["--filters", "topic=pets"], "--filters must be a JSON object"),
    (["--filters", "[1]"], "--filters must be a JSON object, not list"),
    (["--weights", "keyword"], "--weights: 'keyword' is not NAME=NUMBER"),
    (["--weights", "dense=-1"], "weights.dense must be a finite number >= 0"),
    (["--rrf-k", "-3"], "rrf_k must be an integer >= 0"),
])
def test_bad_options_are_clear_errors(kb, args, says):
    out = search(*args)
    assert out.exit_code == 2 and says in " ".join(out.output.split()), out.output
