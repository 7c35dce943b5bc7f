"""OpenAI-compatible inference over the engine: base and custom models, endpoints, streaming via the
official SDK, clear 4xx errors, deactivation, disconnect, and 429 under overload."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from graftlm.clusters import clusters, endpoints
from graftlm.store.db import session
from graftlm.store.models import Model


@pytest.fixture
def served(varied_model_dir, tmp_path, monkeypatch):
    """`tiny` plus a LoRA and a T-Few custom model of it, and a hosting cluster with three endpoints."""
    from graftlm.models.catalog import import_model
    from graftlm.testing.adapters import make_peft_adapter

    tiny_model = import_model(varied_model_dir, "tiny")

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    lora = make_peft_adapter(tiny_model["path"], tmp_path / "lora", kind="lora", r=4, seed=1)
    ia3 = make_peft_adapter(tiny_model["path"], tmp_path / "ia3", kind="ia3", seed=2)
    with session() as s:
        s.add(Model(id="ft:tiny:lora:1", kind="custom", parent="tiny", path=str(lora), adapter_type="lora",
                    context_length=512))
        s.add(Model(id="ft:tiny:tfew:2", kind="custom", parent="tiny", path=str(ia3), adapter_type="ia3",
                    context_length=512))
    cluster = clusters.create_cluster("HOSTING", base_model="tiny", name="h")
    for name, model in (("base", "tiny"), ("lora-ep", "ft:tiny:lora:1"), ("tfew-ep", "ft:tiny:tfew:2")):
        endpoints.create_endpoint(model, cluster["id"], name)
    yield cluster
    from graftlm.clusters.hosting import shutdown_runtime

    shutdown_runtime()


def ask(client, model, content="hello how are you", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=8, **kw)


def test_chat_completion_from_base_and_adapters(client, served):
    outs = {m: ask(client, m) for m in ("base", "lora-ep", "tfew-ep", "tiny", "ft:tiny:lora:1")}
    for r in outs.values():
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        assert r.usage.completion_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    texts = {m: r.choices[0].message.content for m, r in outs.items()}
    assert texts["base"] == texts["tiny"]  # an endpoint of the base model serves the base model
    assert texts["lora-ep"] == texts["ft:tiny:lora:1"]  # endpoint name or custom model id: same adapter
    assert len({texts["base"], texts["lora-ep"], texts["tfew-ep"]}) == 3  # the adapters really apply


def test_streaming_through_the_sdk_matches_non_streaming(client, served):
    whole = ask(client, "tfew-ep").choices[0].message.content
    stream = ask(client, "tfew-ep", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])


def test_completions_endpoint(client, served):
    r = client.completions.create(model="lora-ep", prompt="the quick brown", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="lora-ep", prompt="the quick brown", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_logprobs(client, served):
    r = ask(client, "base", logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content)


def test_bad_requests_are_openai_shaped_4xx(client, served, http):
    with pytest.raises(openai.NotFoundError):
        ask(client, "no-such-model")
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "base", content="x", extra_body={"top_p": 5})
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    assert e.value.body["code"] == "context_length_exceeded"
    for body in ({"model": "base"}, {"model": "base", "messages": []}, {"model": "base", "messages": "hi"},
                 {"model": "base", "messages": [{"role": "wizard", "content": "x"}]},
                 {"model": "base", "messages": [{"role": "user", "content": "x"}], "temperature": -1}):
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, body
        assert "error" in r.json()
    assert http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400


def test_inactive_endpoint_is_refused_then_served_again(client, served):
    ep = endpoints.find_endpoint("lora-ep")
    before = ask(client, "lora-ep").choices[0].message.content
    endpoints.deactivate_endpoint(ep["id"])
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, "lora-ep")
    assert e.value.status_code == 409 and e.value.body["code"] == "endpoint_inactive"
    from graftlm.clusters.hosting import get_runtime

    engine = get_runtime().engines[f"cluster:{served['id']}"]
    assert "ft:tiny:lora:1" not in engine.adapters.paths  # its memory is freed
    endpoints.activate_endpoint(ep["id"])
    assert ask(client, "lora-ep").choices[0].message.content == before


def test_disconnect_mid_stream_frees_the_row(live_server, served):
    import time

    from graftlm.clusters.hosting import get_runtime
    from tests.conftest import ADMIN_KEY

    body = {"model": "base", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 400,
            "temperature": 1.0, "stream": True}
    ep_id = endpoints.find_endpoint("base")["id"]
    with httpx.stream("POST", live_server + "/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                (handle,) = get_runtime().inflight[ep_id]
                break  # got the first chunk: hang up
    output = handle.result(timeout=20)
    assert output.finish_reason == "cancelled" and output.completion_tokens < 400
    engine = get_runtime().engines[f"cluster:{served['id']}"]
    deadline = time.time() + 10
    while engine.num_running and time.time() < deadline:
        time.sleep(0.05)
    assert engine.num_running == 0 and not get_runtime().inflight[ep_id]


def test_overload_answers_429_with_retry_after(live_server, served):
    from graftlm.clusters.hosting import get_runtime
    from tests.conftest import ADMIN_KEY

    ask_body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
                "temperature": 1.0}
    runtime = get_runtime()
    runtime.resolve("base")  # start the engine, then shrink its queue so the test is quick
    engine = runtime.engines[f"cluster:{served['id']}"]
    engine.scheduler.max_queue = 2
    statuses, headers = [], []

    def one():
        r = httpx.post(live_server + "/chat/completions", json=ask_body, timeout=120,
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        statuses.append(r.status_code)
        headers.append(r.headers.get("retry-after"))

    threads = [threading.Thread(target=one) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 429 in statuses and 200 in statuses
    assert all(h and h.isdigit() for s, h in zip(statuses, headers) if s == 429)  # RFC 9110: seconds
    assert set(statuses) <= {200, 429}


def break_engine(engine, message="simulated device fault"):
    def broken(*_):
        raise RuntimeError(message)

    engine._prefill = broken  # the next step that admits work raises and kills the engine thread


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_engine_answers_503_then_is_replaced_on_the_next_request(http, served, caplog):
    from graftlm.clusters.hosting import get_runtime

    runtime, key = get_runtime(), f"cluster:{served['id']}"
    first = runtime.resolve("base").engine
    break_engine(first)
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = http.post("/v1/chat/completions", json=body)  # queued, then failed with the engine
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "engine_unavailable" and "RuntimeError: simulated device fault" in error["message"]
    with caplog.at_level("WARNING", logger="graftlm.serve"):
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    second = runtime.engines[key]
    assert second is not first and second.error is None and first._thread is None
    assert any("failed" in m and "starting a fresh one" in m for m in caplog.messages)
    assert http.post("/v1/chat/completions", json=body | {"model": "lora-ep"}).status_code == 200

    break_engine(second, "second fault")  # each failure is followed by one fresh engine
    with http.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and "second fault" in events[-1]  # queued, then failed mid-stream
    assert '"engine_unavailable"' in events[-1] and "[DONE]" not in events[-1]
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert runtime.engines[key] not in (first, second)


def slow_down(engine, monkeypatch, seconds=0.02):
    decode = engine._decode

    def slow(seqs):
        time.sleep(seconds)
        decode(seqs)

    monkeypatch.setattr(engine, "_decode", slow)


def test_deactivate_returns_once_the_endpoint_no_longer_serves(http, served, monkeypatch):
    """Running requests of the endpoint finish within the grace period or fail; its adapter is freed."""
    from graftlm.clusters.hosting import get_runtime
    from graftlm.config import reset_settings
    from graftlm.errors import GraftError
    from graftlm.serve import SamplingParams

    # Each step sleeps 50 ms, so the slow request needs at least 20 s and cannot finish within the 5 s grace,
    # while the quick one (10 steps) finishes well within it even on a loaded machine.
    monkeypatch.setenv("GRAFT_DEACTIVATE_GRACE_S", "5")
    reset_settings()
    runtime = get_runtime()
    target = runtime.resolve("lora-ep")
    engine, adapter = target.engine, target.adapter
    slow_down(engine, monkeypatch, seconds=0.05)

    def submit(max_tokens):
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        handle = engine.submit([1, 20, 31, 45], params, adapter)
        runtime.track(target, handle)
        return handle

    slow = submit(400)  # cannot finish within the grace period
    while not slow.tokens_streamed:
        time.sleep(0.01)
    quick = submit(10)  # finishes within it
    ep = endpoints.find_endpoint("lora-ep")
    assert not quick.done
    r = http.post(f"/v1/endpoints/{ep['id']}/deactivate")
    assert r.status_code == 200 and r.json()["lifecycle_state"] == "INACTIVE"
    assert quick.result(timeout=0).finish_reason == "length"
    with pytest.raises(GraftError) as e:
        slow.result(timeout=0)
    assert e.value.code == "endpoint_inactive" and "grace period" in e.value.message
    assert all(s.adapter != adapter for s in engine.scheduler.running + list(engine.scheduler.waiting))
    assert adapter not in engine.adapters.resident and adapter not in engine.adapters.cpu
    assert adapter not in engine.adapters.paths
    r = http.post("/v1/chat/completions", json={"model": "lora-ep", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "endpoint_inactive"
    other = {"model": "tfew-ep", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/chat/completions", json=other).status_code == 200  # the cluster's other endpoints serve


def test_max_tokens_beyond_the_kv_cache_is_a_400_naming_the_limit(http, served, monkeypatch):
    from graftlm.config import reset_settings

    monkeypatch.setenv("GRAFT_KV_CACHE_BYTES", str(64 * 512))  # 64 tokens of the tiny float32 model
    reset_settings()
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}
    r = http.post("/v1/chat/completions", json=body | {"max_tokens": 100})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "kv_cache_exceeded" and "at most 64 tokens" in error["message"]
    r = http.post("/v1/chat/completions", json=body | {"temperature": 1.0})  # the default max_tokens fits
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 64


def test_a_hosting_cluster_runs_on_its_units_share_of_the_cores(http, served, monkeypatch):
    """units × GRAFT_THREADS_PER_UNIT threads, capped at the cores; set on the engine's own thread only."""
    import os

    import torch

    from graftlm.clusters.hosting import cluster_threads, get_runtime
    from graftlm.config import reset_settings

    monkeypatch.setenv("GRAFT_THREADS_PER_UNIT", "1")
    reset_settings()
    assert cluster_threads(1) == 1 and cluster_threads(10_000) == (os.cpu_count() or 1)
    caller_threads = torch.get_num_threads()
    engine = get_runtime().resolve("base").engine
    seen = []
    decode = engine._decode
    monkeypatch.setattr(engine, "_decode", lambda seqs: (seen.append(torch.get_num_threads()), decode(seqs)))
    r = http.post("/v1/chat/completions", json={"model": "base", "max_tokens": 3,
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and engine.threads == 1 and seen and set(seen) == {1}
    assert torch.get_num_threads() == caller_threads  # other threads keep their own count
    monkeypatch.delenv("GRAFT_THREADS_PER_UNIT")
    reset_settings()
    assert get_runtime().resolve("base").engine.threads == cluster_threads(1) == (os.cpu_count() or 1)


def test_deactivating_a_custom_models_endpoints_is_a_kill_switch(http, served, monkeypatch):
    """A running request naming the custom model itself (no endpoint) finishes; after that neither the endpoint
    nor the model's id serves it (409 model_disabled) until an endpoint is activated again."""
    from graftlm.clusters.hosting import get_runtime
    from graftlm.serve import SamplingParams

    runtime = get_runtime()
    runtime.resolve("lora-ep")  # the cluster's engine is up, so direct requests share it
    direct = runtime.resolve("ft:tiny:lora:1")
    engine, adapter = direct.engine, direct.adapter
    assert direct.endpoint is None and engine is runtime.resolve("lora-ep").engine
    slow_down(engine, monkeypatch)
    handle = engine.submit([1, 20, 31, 45], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True), adapter)
    while not handle.tokens_streamed:
        time.sleep(0.01)
    ep = endpoints.find_endpoint("lora-ep")
    assert http.post(f"/v1/endpoints/{ep['id']}/deactivate").status_code == 200
    assert handle.result(timeout=30).finish_reason == "length"
    direct_body = {"model": "ft:tiny:lora:1", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    r = http.post("/v1/chat/completions", json=direct_body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_disabled", r.text
    assert "lora-ep" in r.json()["error"]["message"] and r.json()["error"]["param"] == "model"
    assert http.post("/v1/chat/completions", json={"model": "lora-ep", "max_tokens": 2,
                                                   "messages": [{"role": "user", "content": "hi"}]}).status_code == 409
    other = {"model": "ft:tiny:tfew:2", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/chat/completions", json=other).status_code == 200  # its endpoint is still active
    assert http.post(f"/v1/endpoints/{ep['id']}/activate").status_code == 200
    assert http.post("/v1/chat/completions", json=direct_body).status_code == 200


def test_direct_calls_of_custom_models_can_be_turned_off(http, served, monkeypatch):
    """GRAFT_DIRECT_MODEL_CALLS=false: custom models only through endpoints (OCI style); base models still."""
    from graftlm.config import reset_settings

    monkeypatch.setenv("GRAFT_DIRECT_MODEL_CALLS", "false")
    reset_settings()
    chat = {"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    r = http.post("/v1/chat/completions", json=chat | {"model": "ft:tiny:lora:1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "direct_calls_disabled", r.text
    assert http.post("/v1/chat/completions", json=chat | {"model": "lora-ep"}).status_code == 200
    assert http.post("/v1/chat/completions", json=chat | {"model": "tiny"}).status_code == 200
    monkeypatch.delenv("GRAFT_DIRECT_MODEL_CALLS")
    reset_settings()
    assert http.post("/v1/chat/completions", json=chat | {"model": "ft:tiny:lora:1"}).status_code == 200
