"""A noisy neighbour: one client sends every hostile sampling value the schema admits (and some it does
not) while 8 others stream from the same engine; the 8 all finish with 200, and the hostile ones get a
200 or a 4xx naming the param, never a 5xx."""

from __future__ import annotations

import json
import threading

import httpx

from tests.conftest import ADMIN_KEY

ADMITTED = [{"top_p": 1e-300}, {"temperature": 1e-300}, {"temperature": 1e-45, "top_k": 1}, {"top_p": 5e-324},
            {"temperature": 2, "top_p": 1e-300, "top_k": 10**15}, {"temperature": 1e-7, "seed": 2**64 - 1},
            {"seed": -(2**63)}, {"top_k": 2**63}, {"stop": "a stop string longer than sixteen characters"},
            {"stop": ["a"] * 16}]
REFUSED = [({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"), ({"seed": 10**30}, "seed"),
           ({"temperature": float("nan")}, "temperature"), ({"top_p": float("inf")}, "top_p"),
           ({"top_p": 0}, "top_p"), ({"stop": ["x"] * 10000}, "stop"), ({"stop": "x" * 1001}, "stop"), ({"stop": [""]}, "stop.0"),
           ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content.0.text"),
           ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0.type")]


def chat(http, extra=None, **kw):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello how are you"}], "max_tokens": 8,
            **(extra or {}), **kw}
    # the stdlib writes NaN/Infinity and integers past 64 bits, as careless clients do
    return http.post("/v1/chat/completions", content=json.dumps(body).encode(),
                     headers={"content-type": "application/json"})


def test_hostile_values_are_200_or_4xx_naming_the_param(http, tiny_model):
    for extra in ADMITTED:
        for path, body in (("/v1/chat/completions", None), ("/v1/completions", {"prompt": "the quick"})):
            if body is None:
                r = chat(http, extra)
            else:
                r = http.post(path, content=json.dumps({"model": "tiny", "max_tokens": 8, **body, **extra}),
                              headers={"content-type": "application/json"})
            assert r.status_code == 200, (path, extra, r.text)
    for extra, param in REFUSED:
        r = chat(http, extra)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param, (extra, r.json())
    r = http.post("/v1/completions", content=json.dumps({"model": "tiny", "prompt": "x", "seed": 2**64}),
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_eight_streams_finish_while_a_neighbour_sends_hostile_values(live_server, tiny_model):
    base = live_server.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    results: dict[int, tuple[int, bool]] = {}

    def stream(i: int) -> None:
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"client {i} says hello"}],
                "max_tokens": 24, "temperature": 1.0, "seed": i, "stream": True}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = [line for line in r.iter_lines() if line]
                results[i] = (r.status_code, lines[-1:] == ["data: [DONE]"] and
                              not any('"error"' in line for line in lines))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    statuses = []
    with httpx.Client(base_url=base, headers=headers, timeout=120) as c:
        for _ in range(2):
            for extra in ADMITTED:
                statuses.append(chat(c, extra, stream=bool(len(statuses) % 2)).status_code)
    for t in threads:
        t.join(timeout=120)
    assert results == {i: (200, True) for i in range(8)}
    assert statuses and all(s == 200 for s in statuses)
    from graftlm.clusters.hosting import get_runtime

    assert all(e.error is None for e in get_runtime().engines.values())
