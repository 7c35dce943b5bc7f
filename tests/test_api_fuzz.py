"""Malformed uploads and junk request bodies never make the server answer 500."""

from __future__ import annotations

import io
import json
import random
import time

ROUTES = [("POST", "/v1/files"), ("POST", "/v1/fine_tuning/jobs"), ("POST", "/v1/chat/completions"),
          ("POST", "/v1/completions"), ("POST", "/v1/dedicated_ai_clusters"), ("POST", "/v1/endpoints"),
          ("PATCH", "/v1/endpoints/ep-x"), ("GET", "/v1/files?limit=abc"), ("GET", "/v1/fine_tuning/jobs?limit=-3"),
          ("GET", "/v1/fine_tuning/jobs/ftjob-x/events?after=nope"), ("POST", "/v1/fine_tuning/jobs/x/explode"),
          ("GET", "/v1/usage?price_per_unit_hour=cheap")]


def junk_bodies(rng: random.Random):
    yield b""
    yield b"{"
    yield b"null"
    yield b"[]"
    yield json.dumps({"model": None, "messages": [{"role": "user"}]}).encode()
    yield json.dumps({"model": "x", "training_file": 5, "method": "tfew"}).encode()
    yield json.dumps({"type": "HOSTING", "unit_count": "many"}).encode()
    yield json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).encode()
    for _ in range(10):
        yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def corrupt_files(rng: random.Random):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    yield b""
    yield b"\xef\xbb\xbf" + good.encode()
    yield b"\xff\xfe\x00garbage\n"
    yield b"\x1f\x8b\x08\x00broken-gzip"
    yield (good + "\n") * 3 + "{\n" + "[1,2]\n" + "\n"
    for _ in range(8):
        line = bytearray(good.encode())
        for _ in range(rng.randrange(1, 6)):
            line[rng.randrange(len(line))] = rng.randrange(256)
        yield bytes(line) + b"\n"


def test_junk_bodies_never_500(http, tiny_model):
    rng = random.Random(0)
    bodies = list(junk_bodies(rng))
    for method, path in ROUTES:
        for body in bodies:
            r = http.request(method, path, content=body, headers={"content-type": "application/json"})
            assert r.status_code < 500, (method, path, body, r.text)
            assert r.status_code == 200 or "error" in r.json()


def test_corrupt_uploads_end_in_error_status_never_500(client, http):
    rng = random.Random(1)
    ids = []
    for i, data in enumerate(corrupt_files(rng)):
        r = http.post("/v1/files", files={"file": (f"f{i}.jsonl", data)}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    deadline = time.time() + 60
    for fid in ids:
        while (f := client.files.retrieve(fid)).status == "uploaded" and time.time() < deadline:
            time.sleep(0.1)
        assert f.status == "error" and f.status_details, (fid, f)
