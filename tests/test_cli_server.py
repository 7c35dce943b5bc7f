"""Issue 16 items 4 and 5: `graft chat` takes endpoint names and, like `graft kb search`, asks the running
server (found through GRAFT_HOME/server.json, written by `graft serve`) when there is one, else works locally."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from graftlm.clusters import clusters, endpoints


def invoke(*args):
    from graftlm.cli.main import app

    return CliRunner().invoke(app, list(args), terminal_width=200)


@pytest.fixture
def served(live_server, tiny_model):
    """The live server announced in server.json, as `graft serve` does, with an endpoint cs-base."""
    from graftlm.cli.remote import server_file

    c = clusters.create_cluster("HOSTING", base_model="tiny", name="cs")
    endpoints.create_endpoint("tiny", c["id"], "cs-base")
    server_file().write_text(json.dumps({"url": live_server, "pid": os.getpid()}))
    return live_server


def test_chat_takes_an_endpoint_name_and_uses_the_running_server(served):
    r = invoke("chat", "cs-base", "hello there", "--max-tokens", "6")
    assert r.exit_code == 0, r.output
    assert f"answered by the server at {served}" in r.output
    local = invoke("chat", "cs-base", "hello there", "--max-tokens", "6", "--local")
    assert local.exit_code == 0, local.output
    assert "answered by the server" not in local.output and "Warning" not in local.output
    assert local.stdout.strip() == r.stdout.strip()  # the same greedy answer either way


def test_chat_through_the_server_reports_a_typo_with_a_suggestion(served):
    r = invoke("chat", "cs-bsae", "hi")
    assert r.exit_code == 2
    assert "did you mean 'cs-base'" in r.output.lower()


def test_a_stale_server_file_falls_back_to_local(tiny_model):
    from graftlm.cli.remote import server_file, server_url

    c = clusters.create_cluster("HOSTING", base_model="tiny", name="cs")
    endpoints.create_endpoint("tiny", c["id"], "cs-base")
    server_file().parent.mkdir(parents=True, exist_ok=True)
    server_file().write_text(json.dumps({"url": "http://127.0.0.1:9/v1", "pid": 2 ** 22 + 7}))  # no such process
    assert server_url() is None
    r = invoke("chat", "cs-base", "hello there", "--max-tokens", "4")
    assert r.exit_code == 0, r.output
    assert "answered by the server" not in r.output


def test_serve_writes_and_removes_its_server_file(monkeypatch):
    from graftlm.cli import serve as serve_cli
    from graftlm.cli.remote import server_file

    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(json.loads(server_file().read_text())))
    serve_cli.serve(host="0.0.0.0", port=8123, log_level="warning")
    assert seen == {"url": "http://127.0.0.1:8123/v1", "pid": os.getpid()}
    assert not server_file().exists()


def test_kb_search_uses_the_running_server(served):
    from graftlm import rag

    r = invoke("kb", "create", "faq", "--chunk-size", "64", "--chunk-overlap", "8")
    assert r.exit_code == 0 and f"created by the server at {served}" in r.output, r.output
    kb = rag.get_kb("faq")
    rag.ingest_documents(kb, [{"id": "pin", "text": "To reset your PIN open the app and choose security."},
                              {"id": "card", "text": "A lost card is blocked from the cards page."}])
    r = invoke("kb", "search", "faq", "reset my pin", "--mode", "keyword", "--json")
    assert r.exit_code == 0, r.output
    assert f"searched by the server at {served}" in r.output
    via_server = json.loads(r.stdout)
    local = invoke("kb", "search", "faq", "reset my pin", "--mode", "keyword", "--json", "--local")
    assert json.loads(local.stdout) == via_server and via_server[0]["document_id"] == "pin"


def test_loading_the_embedding_model_is_logged_with_its_duration(caplog):
    import logging

    from graftlm.rag import embeddings

    embeddings._load.cache_clear()
    caplog.set_level(logging.INFO, logger="graftlm.rag")
    embeddings.get_model()
    assert any("embedding model" in r.getMessage() and "loaded in" in r.getMessage() for r in caplog.records)
