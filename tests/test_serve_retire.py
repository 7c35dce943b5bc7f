"""Every way a request ends goes through Engine._retire, once: the handle gets one last item (the final delta or
the error), the KV blocks and adapter references come back, and the request leaves the queue and the batch."""

import time

import pytest
import torch

from graftlm.errors import GraftError
from graftlm.serve import Engine, SamplingParams
from graftlm.testing.adapters import build_test_llama, make_peft_adapter


def greedy(n, **kw):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retire")
    model = build_test_llama(root / "model")
    return model, make_peft_adapter(model, root / "lora", "lora", r=4)


@pytest.fixture
def engine(setup, monkeypatch):
    model, lora = setup
    e = Engine(model, dtype=torch.float32, device="cpu", max_seq_len=64, max_batch_size=2, max_adapters=2)
    e.register_adapter("lora", lora)
    retired = []
    real = e._retire
    monkeypatch.setattr(e, "_retire", lambda seqs: (retired.extend(s.request_id for s in seqs if not s.retired),
                                                     real(seqs)))
    e.retired = retired
    yield e
    e.stop()


def run(engine, handles, timeout_s: float = 60):
    """Step until every handle is done. A deadline, not a step count: a LoRA row waits while its adapter loads
    in the background, and empty steps are fast (200 of them ended before the load on a quiet machine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(h.done for h in handles):
            return
        engine.step()
    raise AssertionError("requests did not end")


def assert_clean(engine, handles):
    """One retirement per request, nothing held: every KV block free, no adapter reference, no row."""
    assert sorted(engine.retired) == sorted(h.request_id for h in handles)
    assert engine.cache.available_blocks == engine.cache.num_blocks
    assert not any(engine.adapters.refs.values())
    assert engine.scheduler.live() == []
    for h in handles:  # exactly one last item, and it is the last one
        last = [i for i in h._items if isinstance(i, BaseException) or i.finish_reason]
        assert len(last) == 1 and h._items[-1] is last[0]


def test_length_stop_and_eos_retire_once(engine):
    full = engine.generate([([1, 20, 31, 45], greedy(8), None)])[0]
    engine.retired.clear()
    handles = [engine.submit([1, 20, 31, 45], greedy(3), "lora"),
               engine.submit([1, 20, 31, 45], greedy(12, stop=[full.text[2:4]]), None),
               engine.submit([1, 5, 6, 7], SamplingParams(max_tokens=5, temperature=0), None)]
    run(engine, handles)
    assert handles[0].result().finish_reason == "length" and handles[1].result().finish_reason == "stop"
    streamed = "".join(d.text for d in handles[1])
    assert streamed == handles[1].result().text  # the deltas add up to the text, the held-back part included
    assert_clean(engine, handles)


def test_cancel_running_and_waiting(engine):
    running = engine.submit([1, 20, 31, 45], greedy(40), "lora")
    other = engine.submit([1, 5, 6, 7], greedy(40), None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until both run (the adapter loads in the background)
        if running.tokens_streamed and other.tokens_streamed:
            break
        engine.step()
    waiting = engine.submit([1, 42], greedy(5), None)  # both rows are taken: it waits
    engine.step()
    assert engine.num_waiting == 1 and running.tokens_streamed >= 2
    running.cancel()
    waiting.cancel()
    engine.step()
    assert running.result().finish_reason == "cancelled" and waiting.result().finish_reason == "cancelled"
    assert waiting.result().token_ids == []
    other.cancel()
    run(engine, [other])
    assert_clean(engine, [running, other, waiting])


def test_failed_evicted_and_stopped_requests_retire_once(engine, setup, tmp_path):
    a = engine.submit([1, 20, 31, 45], greedy(40), "lora")
    b = engine.submit([1, 5, 6, 7], greedy(40), None)
    c = engine.submit([1, 42], greedy(40), None)
    engine.step()
    engine.fail_requests([b], GraftError("gone", code="endpoint_inactive"))
    engine.evict_adapter("lora", GraftError("evicted", code="model_disabled"))
    with pytest.raises(GraftError, match="gone"):
        b.result(timeout=0)
    with pytest.raises(GraftError, match="evicted"):
        a.result(timeout=0)
    import shutil
    broken = shutil.copytree(setup[1], tmp_path / "broken")
    engine.register_adapter("broken", broken)
    (broken / "adapter_model.safetensors").unlink()  # its load fails when it is admitted
    d = engine.submit([1, 42], greedy(4), "broken")
    deadline = time.monotonic() + 60
    while not d.done and time.monotonic() < deadline:  # the failing load runs in the background
        engine.step()
    with pytest.raises(GraftError) as err:
        d.result(timeout=0)
    assert err.value.code == "model_files_unreadable"
    engine.stop()  # c still runs: it fails with the reason
    with pytest.raises(GraftError, match="stopped"):
        c.result(timeout=0)
    assert_clean(engine, [a, b, c, d])
