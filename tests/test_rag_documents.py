"""Issue 16 item 8: list a knowledge base's documents over HTTP, delete one with its chunks, and
`graft kb ingest --metadata key=value` so that `--filters` has something to match."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from graftlm import rag

DOCS = [{"id": "cats", "text": "Cats are small carnivorous mammals. They sleep for most of the day. " * 6,
         "metadata": {"topic": "animals"}},
        {"id": "paris", "text": "Paris is the capital of France. The Eiffel Tower stands in Paris.",
         "metadata": {"topic": "places"}}]


def _http() -> TestClient:
    from graftlm.api.errors import install_error_handlers
    from graftlm.api.routes.rag import router

    api = FastAPI()
    install_error_handlers(api)
    api.include_router(router, prefix="/v1")
    return TestClient(api)


def test_list_and_delete_documents_over_http():
    kb = rag.create_kb("docs-kb", chunk_size=16, chunk_overlap=2)
    rag.ingest_documents(kb, DOCS)
    assert {h["document_id"] for h in rag.search(kb, "cats sleep mammals", top_k=5, mode="keyword")} == {"cats"}
    http = _http()
    listed = http.get(f"/v1/knowledge_bases/{kb.id}/documents")
    assert listed.status_code == 200, listed.text
    data = listed.json()["data"]
    assert [d["id"] for d in data] == ["cats", "paris"]
    assert data[0]["metadata"] == {"topic": "animals"} and data[0]["n_chunks"] > 1
    assert data[0]["object"] == "knowledge_base.document"

    assert http.delete(f"/v1/knowledge_bases/{kb.id}/documents/cats").json()["deleted"] is True
    assert [d["id"] for d in http.get(f"/v1/knowledge_bases/{kb.id}/documents").json()["data"]] == ["paris"]
    counts = rag.open_store().consistency(kb)  # chunks, keyword rows and vectors went with the document
    assert set(counts.values()) == {data[1]["n_chunks"]}
    assert rag.search(kb, "cats sleep mammals", top_k=5, mode="keyword") == []
    assert http.get("/v1/knowledge_bases/nope/documents").status_code == 404


def test_ingest_metadata_option_feeds_filters(tmp_path):
    from graftlm.cli import app

    (tmp_path / "en.md").write_text("The refund policy allows returns within thirty days.")
    (tmp_path / "fr.md").write_text("The refund policy in France allows returns within fourteen days.")
    rag.create_kb("meta-kb", chunk_size=64, chunk_overlap=8)
    runner = CliRunner()
    for name, lang, year in (("en.md", "en", "2024"), ("fr.md", "fr", "2023")):
        out = runner.invoke(app, ["kb", "ingest", "meta-kb", str(tmp_path / name), "--metadata", f"lang={lang}",
                                  "--metadata", f"year={year}"])
        assert out.exit_code == 0, out.output
    docs = {d["id"]: d["metadata"] for d in rag.list_documents("meta-kb")}
    assert docs["en.md"] == {"source": "en.md", "lang": "en", "year": 2024}
    found = runner.invoke(app, ["kb", "search", "meta-kb", "refund policy", "--json", "--mode", "keyword",
                                "--filters", '{"lang": "fr"}'])
    assert found.exit_code == 0, found.output
    assert {h["document_id"] for h in json.loads(found.output)} == {"fr.md"}
    found = runner.invoke(app, ["kb", "search", "meta-kb", "refund policy", "--json", "--mode", "keyword",
                                "--filters", '{"year": 2024}'])
    assert {h["document_id"] for h in json.loads(found.output)} == {"en.md"}

    listed = runner.invoke(app, ["kb", "documents", "meta-kb", "--json"])
    assert {d["id"] for d in json.loads(listed.output)} == {"en.md", "fr.md"}

    bad = runner.invoke(app, ["kb", "ingest", "meta-kb", str(tmp_path / "en.md"), "--metadata", "lang"])
    assert bad.exit_code == 2 and "--metadata" in bad.output
