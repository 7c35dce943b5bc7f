"""Two `graft serve` processes on one database agree: an ingestion started through one shows its progress and
result through the other; an eval created on one runs on the other and its run is listed by the first."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import json

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.test_evals_ladder import LABELS, QUESTIONS, write_set

pytestmark = pytest.mark.slow  # two server processes each import torch and load models (~1 min on 2 CPUs)
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRAFT_REPLICAS": "process", "GRAFT_DEACTIVATE_GRACE_S": "0",
           "GRAFT_ENDPOINT_POLL_S": "0.5"}
    return subprocess.Popen([sys.executable, "-m", "graftlm.cli", "serve", "--port", str(port), "--log-level",
                             "warning"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_up(proc: subprocess.Popen, http: httpx.Client, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not start")


@pytest.fixture
def two_servers(graft_home, varied_model_dir):
    from graftlm.models.catalog import import_model
    from graftlm.store.db import upgrade

    upgrade()  # once, before two processes race to create the schema
    import_model(varied_model_dir, "tiny")
    procs, clients = [], []
    for _ in range(2):
        port = free_port()
        procs.append(start_server(port))
        clients.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                    headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
    try:
        for proc, http in zip(procs, clients):
            wait_up(proc, http)
        yield clients
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        for http in clients:
            http.close()


def test_two_processes_share_ingestions_and_evals(two_servers, tmp_path):
    a, b = two_servers
    kb = a.post("/v1/knowledge_bases", json={"name": "shared", "chunk_size": 64, "chunk_overlap": 8}).json()
    assert b.get(f"/v1/knowledge_bases/{kb['id']}").status_code == 200
    docs = [{"id": f"d{i}", "text": f"Document {i} says that item {i} costs {i * 3} dollars. " * 4} for i in range(300)]
    job = a.post(f"/v1/knowledge_bases/{kb['id']}/documents", json={"documents": docs}).json()
    seen = []
    deadline = time.time() + 300
    while True:
        r = b.get(f"/v1/knowledge_bases/{kb['id']}/ingestions/{job['id']}")
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if seen[-1]["status"] != "running" or time.time() > deadline:
            break
        time.sleep(0.05)
    assert seen[-1]["status"] == "succeeded", seen[-1]
    assert seen[-1] == a.get(f"/v1/knowledge_bases/{kb['id']}/ingestions/{job['id']}").json()
    assert seen[-1]["documents"] == 300 and seen[-1]["progress"] == 1.0
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress)  # the other process's progress, as it advanced
    hits = b.post(f"/v1/knowledge_bases/{kb['id']}/search", json={"query": "item 17 costs", "mode": "keyword"}).json()
    # "17": keyword tokens are words of >= 2 characters (bm25s's tokenizer), so "item 7" would not name d7
    assert hits["data"] and hits["data"][0]["document_id"] == "d17"

    data = write_set(tmp_path / "test.jsonl", [(QUESTIONS[label][0], label) for label in LABELS])
    ev = a.post("/v1/evals", json={"name": "intents", "data_path": data}).json()
    assert [e["id"] for e in b.get("/v1/evals").json()["data"]] == [ev["id"]]
    run = b.post(f"/v1/evals/{ev['id']}/runs", json={"model": "tiny", "max_tokens": 4})
    assert run.status_code == 200, run.text
    listed = a.get(f"/v1/evals/{ev['id']}/runs").json()["data"]
    assert [r["id"] for r in listed] == [run.json()["id"]] and listed[0]["n"] == 3
    assert len(a.get(f"/v1/evals/{ev['id']}/runs/{run.json()['id']}").json()["results"]) == 3


def test_deactivating_through_one_process_stops_the_other(two_servers, varied_model_dir):
    """Each server runs the cluster on its own replica processes (GRAFT_REPLICAS=process in the servers'
    environment, see the fixture): a stream running on B when A deactivates the endpoint ends with 409
    endpoint_inactive once B's store poll sees it (grace 0 here), and B's next request is a 409 too."""
    from transformers import AutoTokenizer

    a, b = two_servers
    no_eos = {str(AutoTokenizer.from_pretrained(varied_model_dir).eos_token_id): -100}
    c = a.post("/v1/dedicated_ai_clusters", json={"type": "HOSTING", "base_model": "tiny", "unit_count": 1}).json()
    ep = a.post("/v1/endpoints", json={"model": "tiny", "dedicated_ai_cluster_id": c["id"], "name": "shared"}).json()
    chat = {"model": "shared", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    assert b.post("/v1/chat/completions", json=chat).status_code == 200  # B serves it (and so polls it)
    events = []
    with b.stream("POST", "/v1/chat/completions", json=chat | {"stream": True, "max_tokens": 400,
                                                                "logit_bias": no_eos}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    assert a.post(f"/v1/endpoints/{ep['id']}/deactivate").status_code == 200
    assert "error" in events[-1] and events[-1]["error"]["code"] == "endpoint_inactive", events[-1]
    r = b.post("/v1/chat/completions", json=chat)
    assert r.status_code == 409 and r.json()["error"]["code"] == "endpoint_inactive"
