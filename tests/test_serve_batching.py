"""Continuous batching, the adapter cache, queue limits, cancellation, stop strings, seeds, streaming."""

import asyncio
import time

import pytest
import torch

from graftlm.errors import NotFound
from graftlm.serve import Engine, EngineUnavailable, QueueFull, SamplingParams
from graftlm.testing.adapters import build_test_llama, make_peft_adapter

P = [[1, 20, 31, 45, 99, 7], [1, 5, 6, 7], [1, 200, 300, 12, 13, 14, 15, 16, 17], [1, 42]]


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = build_test_llama(root / "model")
    paths = {f"lora{i}": make_peft_adapter(model, root / f"lora{i}", "lora", r=4 + 4 * (i % 2), seed=i)
             for i in range(3)}
    paths["ia3"] = make_peft_adapter(model, root / "ia3", "ia3", seed=9)
    return model, paths


def make_engine(setup, **kw):
    model, paths = setup
    kw = {"dtype": torch.float32, "device": "cpu", "max_seq_len": 64, "max_adapters": 4, **kw}
    e = Engine(model, **kw)
    for name, path in paths.items():
        e.register_adapter(name, path)
    return e


@pytest.fixture(scope="module")
def engine(setup):
    return make_engine(setup)


def test_requests_join_and_leave_mid_flight(engine):
    reqs = [(P[i % 4], greedy(3 + 4 * i), [None, "lora0", "lora1", "ia3"][i % 4]) for i in range(6)]
    solo = [engine.generate([r])[0].token_ids for r in reqs]
    handles = []
    for r in reqs:  # a new request joins after every step while earlier ones decode and retire
        handles.append(engine.submit(*r))
        engine.step()
    while not all(h.done for h in handles):
        engine.step()
    assert [h.result().token_ids for h in handles] == solo
    assert engine.num_running == 0


def test_lru_eviction_and_reload_give_identical_outputs(setup):
    e = make_engine(setup, max_adapters=2, max_cpu_adapters=1)
    names = ["lora0", "lora1", "lora2", "ia3"]
    first = {n: e.generate([(P[0], greedy(6), n)])[0].token_ids for n in names}
    assert len(e.adapters.resident) == 2 and e.adapters.loads == 4
    again = {n: e.generate([(P[0], greedy(6), n)])[0].token_ids for n in names}
    assert again == first
    assert e.adapters.loads == 8  # evicted from the device and from CPU memory, then re-read from disk
    # more adapters in one batch than slots: later ones wait for a slot, outputs unchanged
    outs = e.generate([(P[0], greedy(6), n) for n in names])
    assert {o.adapter: o.token_ids for o in outs} == first


def test_adapter_loads_in_background_without_stalling_the_batch(setup, monkeypatch):
    import threading

    import graftlm.serve.adapter_cache as ac

    e = make_engine(setup)
    disk_done = threading.Event()
    real_read = ac.read_adapter

    def read_when_allowed(*a, **kw):
        disk_done.wait(10)
        return real_read(*a, **kw)

    monkeypatch.setattr(ac, "read_adapter", read_when_allowed)
    base = e.submit(P[0], greedy(20))
    e.step()
    waiting = e.submit(P[1], greedy(3), "lora0")
    while not base.done:  # the base row decodes to the end while lora0 is still being read
        e.step()
    assert not waiting.done and e.num_waiting == 1
    disk_done.set()
    while not waiting.done:
        e.step()
    assert waiting.result().completion_tokens == 3


def test_queue_full_raises(setup):
    e = make_engine(setup, max_queue=2)
    e.submit(P[0], greedy(2))
    e.submit(P[0], greedy(2))
    with pytest.raises(QueueFull) as err:
        e.submit(P[0], greedy(2))
    assert err.value.status_code == 429 and err.value.retry_after > 0
    e.step()  # both admitted: the queue has room again
    e.submit(P[0], greedy(2))


def test_cancel_frees_the_row(engine):
    h = engine.submit(P[0], greedy(50))
    other = engine.submit(P[1], greedy(5))
    engine.step()
    assert engine.num_running == 2
    h.cancel()
    engine.step()
    assert engine.num_running == 1 and h.done and h.result().finish_reason == "cancelled"
    while not other.done:
        engine.step()
    assert other.result().token_ids == engine.generate([(P[1], greedy(5), None)])[0].token_ids


def test_stop_strings_and_eos(engine):
    full = engine.generate([(P[0], greedy(12), None)])[0]
    stop = full.text[3:6]
    out = engine.generate([(P[0], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=[stop]),
                            None)])[0]
    assert out.finish_reason == "stop" and out.text == full.text[:full.text.find(stop)]
    eos = full.token_ids[2]
    out = engine.generate([(P[0], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[eos]), None)])[0]
    assert out.finish_reason == "stop" and out.token_ids == full.token_ids[:full.token_ids.index(eos) + 1]


def test_seeded_sampling_is_reproducible(engine):
    sp = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=123, ignore_eos=True,
                        logprobs=3)
    a = engine.generate([(P[0], sp, "lora1"), (P[1], greedy(4), None)])[0]
    b = engine.generate([(P[0], sp, "lora1")])[0]
    assert a.token_ids == b.token_ids
    assert len(a.logprobs[0].top) == 3 and a.logprobs[0].top[0][1] >= a.logprobs[0].logprob
    c = engine.generate([(P[0], SamplingParams(**{**sp.__dict__, "seed": 124}), "lora1")])[0]
    assert c.token_ids != a.token_ids


def test_streaming_from_asyncio_with_background_loop(setup):
    e = make_engine(setup)
    expected = e.generate([(P[2], greedy(8), "ia3")])[0]
    e.start()
    try:
        async def consume():
            h = e.submit(P[2], greedy(8), "ia3")
            return [d async for d in h]

        deltas = asyncio.run(consume())
        assert "".join(d.text for d in deltas) == expected.text
        assert sum((d.token_ids for d in deltas), []) == expected.token_ids
        assert deltas[-1].finish_reason == "length"
        with pytest.raises(NotFound):
            e.submit(P[0], greedy(2), "missing")
        e.unregister_adapter("ia3")
        with pytest.raises(NotFound):
            e.submit(P[0], greedy(2), "ia3")
    finally:
        e.stop()


def fail_every_step(engine, message):
    def broken(*_):
        raise RuntimeError(message)

    engine._prefill = broken  # the first step that admits work raises, killing the engine thread


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_engine_error_fails_pending_requests_and_refuses_new_ones(setup):
    e = make_engine(setup, max_batch_size=1)
    fail_every_step(e, "simulated device fault")
    handles = [e.submit(P[i], greedy(4), [None, "lora0", None][i]) for i in range(3)]  # 1 runs, 2 wait
    e.start()
    try:
        for h in handles:
            with pytest.raises(EngineUnavailable, match="simulated device fault"):
                h.result(timeout=20)
        assert isinstance(e.error, RuntimeError) and e.num_running == 0 and e.num_waiting == 0
        with pytest.raises(EngineUnavailable, match="RuntimeError: simulated device fault") as err:
            e.submit(P[0], greedy(2))
        assert err.value.status_code == 503 and err.value.code == "engine_unavailable"
    finally:
        e.stop()


def test_stop_fails_queued_requests_even_one_that_raced_the_stop(setup, monkeypatch):
    e = make_engine(setup)
    queued = e.submit(P[0], greedy(4))
    e.stop()
    with pytest.raises(EngineUnavailable, match="stopped"):
        queued.result(timeout=5)
    with pytest.raises(EngineUnavailable):
        e.submit(P[0], greedy(2))
    monkeypatch.setattr(e, "_check_serving", lambda: None)  # as if stop() ran between the check and the queue
    raced = e.submit(P[1], greedy(2))
    with pytest.raises(EngineUnavailable):
        raced.result(timeout=5)
    assert e.num_waiting == 0


def test_retry_after_is_whole_seconds():
    assert QueueFull("full").retry_after == 1 and str(QueueFull("full").retry_after) == "1"
    assert QueueFull("full", retry_after=0.2).retry_after == 1
    assert QueueFull("full", retry_after=2.5).retry_after == 3


def test_cpu_tier_evicts_the_least_recently_used_adapter(setup):
    e = make_engine(setup, max_adapters=1, max_cpu_adapters=2)
    cache = e.adapters
    cache.load_now("lora0")
    cache.load_now("lora1")
    assert list(cache.cpu) == ["lora0", "lora1"]
    assert cache.acquire("lora0") is not None  # a hit on the older one makes it the most recent
    cache.release("lora0")
    cache.load_now("lora2")
    assert list(cache.cpu) == ["lora0", "lora2"]  # lora1, least recently used, was evicted
    e.stop()


def kv_budget(setup, tokens: int) -> int:
    """Bytes of KV cache for ``tokens`` tokens of the test model in float32."""
    import json

    from graftlm.serve.kv_cache import kv_bytes_per_token
    from graftlm.serve.model import read_shape

    s = read_shape(json.loads((setup[0] / "config.json").read_text()))
    return tokens * kv_bytes_per_token(s.layers, s.kv_heads, s.head_dim, torch.float32)


def test_kv_budget_admits_only_requests_whose_kv_fits(setup, engine):
    """Each request reserves prompt + max_tokens (2 blocks of 16); a 4-block budget runs 2 at a time."""
    budget = kv_budget(setup, 64)
    e = make_engine(setup, max_batch_size=8, kv_cache_bytes=budget)
    assert e.cache.nbytes <= budget and e.cache.capacity_tokens == 64
    reqs = [(P[i % 4][:6], greedy(32 - len(P[i % 4][:6])), [None, "lora0", "ia3"][i % 3]) for i in range(5)]
    handles = [e.submit(*r) for r in reqs]
    most_running, saw_waiting = 0, False
    while not all(h.done for h in handles):
        e.step()
        most_running = max(most_running, e.num_running)
        saw_waiting = saw_waiting or (e.num_waiting > 0 and e.num_running > 0)
    assert most_running == 2 and saw_waiting  # 8 rows free, but KV for only two
    assert [h.result().token_ids for h in handles] == [engine.generate([r])[0].token_ids for r in reqs]
    assert e.cache.free_tokens == 64  # every block came back
    short = [e.submit(P[1], greedy(4)) for _ in range(8)]  # 8 tokens each: 1 block each, 4 at a time
    e.step()
    assert e.num_running == 4
    while not all(h.done for h in short):
        e.step()
    e.stop()


def test_a_request_larger_than_the_whole_kv_cache_is_refused_naming_the_limit(setup):
    from graftlm.errors import GraftError

    e = make_engine(setup, kv_cache_bytes=kv_budget(setup, 32))
    with pytest.raises(GraftError) as err:
        e.submit(P[0], greedy(40))
    assert err.value.status_code == 400 and err.value.code == "kv_cache_exceeded"
    assert "46 tokens" in err.value.message and "at most 32 tokens" in err.value.message
    assert "GRAFT_KV_CACHE_BYTES" in err.value.message
    assert e.generate([(P[0], greedy(26), None)])[0].completion_tokens == 26  # 6 + 26 = 32 fits exactly
    e.stop()


def test_evict_adapter_fails_its_requests_and_frees_its_slot_and_cpu_copy(setup):
    e = make_engine(setup)
    keep = e.submit(P[0], greedy(30), "lora1")
    gone = [e.submit(P[1], greedy(30), "lora0"), e.submit(P[2], greedy(30), "lora0")]
    while e.num_running < 3:
        e.step()
    slot = e.adapters.resident["lora0"]
    e.evict_adapter("lora0", EngineUnavailable("lora0 was unloaded"))
    for h in gone:
        with pytest.raises(EngineUnavailable, match="unloaded"):
            h.result(timeout=1)
    assert e.num_running == 1 and all(s.adapter != "lora0" for s in e.scheduler.running)
    assert "lora0" not in e.adapters.resident and "lora0" not in e.adapters.cpu and slot in e.adapters.free_slots
    while not keep.done:
        e.step()
    assert keep.result().completion_tokens == 30 and e.cache.free_tokens == e.cache.capacity_tokens
    e.stop()
