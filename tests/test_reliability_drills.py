"""Kill drills: the engine dies mid-stream (the API stays up, the stream ends with a clear error, the next
request gets a fresh engine); the server is killed with SIGKILL during a fine-tuning job (its worker runs on,
or is requeued, and the job succeeds exactly once). The disk-full drill is in test_reliability_storage."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ADMIN_KEY

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_engine_dies_mid_stream_and_the_next_request_gets_a_fresh_one(live_server, tiny_model):
    from graftlm.clusters.hosting import get_runtime

    base = live_server.removesuffix("/v1")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 400,
            "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    engine = get_runtime().resolve("tiny").engine
    decode, crash = engine._decode, threading.Event()

    def decode_then_crash(seqs):  # one real decode step, then hold until the client has seen tokens and crash
        if engine._decode_calls:
            crash.wait(30)
            raise RuntimeError("simulated engine crash")
        engine._decode_calls += 1
        decode(seqs)

    engine._decode_calls = 0
    engine._decode = decode_then_crash  # armed before the request: a fast engine cannot finish first
    events = []
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line)
                if '"content":"' in line:  # tokens are flowing: let the engine die
                    crash.set()
        assert r.status_code == 200
        assert '"engine_unavailable"' in events[-1] and "simulated engine crash" in events[-1]
        assert not any("[DONE]" in e for e in events)  # the client can tell it was cut, not finished
        assert c.get("/healthz").status_code == 200  # the API stayed up
        again = c.post("/v1/chat/completions", json=body | {"stream": False, "max_tokens": 4})
        assert again.status_code == 200, again.text
    assert get_runtime().resolve("tiny").engine is not engine and engine.error is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "graftlm.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], stdout=log, stderr=log, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def toy_dataset(n: int) -> bytes:
    words = ["hello", "weather", "flight", "balance"]
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"say {words[i % 4]}"},
                                            {"role": "assistant", "content": words[i % 4]}]}) + "\n"
                   for i in range(n)).encode()


@pytest.mark.slow
def test_server_killed_during_a_job_and_the_job_succeeds_once(tiny_model, tmp_path):
    from graftlm.store.db import session
    from graftlm.store.models import FineTuningJob

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "ab")
    first = start_server(port, log)
    second = None
    try:
        with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
            f = c.post("/v1/files", files={"file": ("t.jsonl", io.BytesIO(toy_dataset(24)))},
                       data={"purpose": "fine-tune"}).json()
            spec = {"type": "supervised", "supervised": {"hyperparameters": {
                "training_method": "lora", "n_epochs": 4, "batch_size": 2, "log_model_metrics_interval_in_steps": 1}}}
            job = c.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": f["id"], "method": spec}).json()
            deadline = time.time() + 120
            while not [e for e in c.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
                       if e["type"] == "metrics"]:
                assert time.time() < deadline, "the job never started training"
                time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)  # the server dies mid-job
        first.wait(timeout=30)
        with session() as s:
            worker = s.get(FineTuningJob, job["id"]).worker_pid
        second = start_server(port, log)
        with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as c:
            deadline = time.time() + 300
            while (state := c.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["status"] not in (
                    "succeeded", "failed", "cancelled"):
                assert time.time() < deadline, state
                time.sleep(0.5)
            assert state["status"] == "succeeded", state["error"]
            events = c.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
            models = [m["id"] for m in c.get("/v1/models").json()["data"] if m["parent"] == "tiny"]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert worker is not None
    assert [e["message"] for e in events].count(f"job succeeded: {state['fine_tuned_model']}") == 1
    assert models == [state["fine_tuned_model"]]  # one custom model: trained once
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert sorted(set(steps)) == list(range(1, 41)) and len(steps) == len(set(steps))  # none lost or repeated
