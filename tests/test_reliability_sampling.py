"""Sampling is numerically safe for every value the schema admits, and a fault in one row of the batch
fails that request alone: the other rows finish as if alone, and the engine keeps serving."""

from __future__ import annotations

import pytest
import torch

from graftlm.errors import GraftError
from graftlm.serve import Engine, SamplingParams
from graftlm.serve.engine import RowFailed
from graftlm.serve.sampler import sample, sample_row
from graftlm.testing.adapters import build_test_llama

P = [[1, 20, 31, 45, 99, 7], [1, 5, 6, 7], [1, 200, 300, 12, 13, 14, 15, 16, 17], [1, 42]]
HOSTILE = [dict(top_p=1e-300), dict(temperature=1e-300), dict(temperature=1e-45, top_k=1),
           dict(temperature=1e-45), dict(temperature=1e-300, top_p=1e-300, top_k=3), dict(top_p=5e-324),
           dict(temperature=2.0, top_p=1e-300), dict(temperature=1e-7, top_k=2), dict(temperature=2.0, top_k=10**12)]


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = build_test_llama(tmp_path_factory.mktemp("rel") / "model")
    return Engine(model, dtype=torch.float32, device="cpu", max_seq_len=64)


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_hostile_sampling_values_give_a_valid_token(hostile):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=g) * 8
    logits[17] = logits.max() + 0.5  # a clear argmax
    p = SamplingParams(seed=1, **hostile)
    token = int(sample_row(logits, p, torch.Generator().manual_seed(1)))
    assert 0 <= token < 1000
    if p.top_p < 1e-100 or p.temperature < 1e-6 or p.top_k == 1:  # these leave only the best token
        assert token == 17
    chosen, _ = sample(logits[None].repeat(3, 1), [p, p, SamplingParams(temperature=0)], [None, None, None])
    assert all(0 <= t < 1000 for t in chosen) and chosen[2] == 17


def test_extreme_logits_never_reach_multinomial_as_nan():
    logits = torch.tensor([3e38, -3e38, float("-inf"), 1.0])  # fp32 extremes: differences overflow in fp32
    for p in (SamplingParams(temperature=1e-45), SamplingParams(temperature=2.0, top_p=0.5),
              SamplingParams(temperature=1.0, top_k=2)):
        assert int(sample_row(logits, p, None)) == 0
    assert int(sample_row(torch.full((5,), float("nan")), SamplingParams(), None)) in range(5)
    with_nan = torch.tensor([1.0, float("nan"), 0.5, float("-inf")])
    assert all(int(sample_row(with_nan, SamplingParams(temperature=t), None)) in (0, 2) for t in (1e-300, 1.0, 2.0))


def test_tiny_top_p_still_samples_within_the_nucleus():
    """top_p keeps the smallest prefix reaching it: with two tokens at 0.5 each and top_p 0.6, both are
    drawn, never a third (the guard for the best token does not narrow ordinary nuclei)."""
    logits = torch.tensor([5.0, 5.0, -20.0, -20.0]).log_softmax(-1)
    g = torch.Generator().manual_seed(3)
    seen = {int(sample_row(logits, SamplingParams(top_p=0.6), g)) for _ in range(200)}
    assert seen == {0, 1}


def test_hostile_rows_in_a_batch_leave_the_others_as_if_alone(engine):
    solo = [engine.generate([(P[i], greedy(6), None)])[0].token_ids for i in range(4)]
    hostile = [(P[i % 4], SamplingParams(max_tokens=6, ignore_eos=True, seed=i, **h), None)
               for i, h in enumerate(HOSTILE)]
    outs = engine.generate([(P[i], greedy(6), None) for i in range(4)] + hostile)
    assert [o.token_ids for o in outs[:4]] == solo
    assert all(len(o.token_ids) == 6 and o.finish_reason == "length" for o in outs[4:])
    assert engine.error is None


def test_a_sampling_fault_fails_only_its_row(engine, monkeypatch):
    import graftlm.serve.engine as engine_module

    real = engine_module.sample
    poison = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

    def faulty(logits, params, generators, **kw):
        if any(p is poison for p in params):
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, params, generators, **kw)

    monkeypatch.setattr(engine_module, "sample", faulty)
    solo = [engine.generate([(P[i], greedy(6), None)])[0].token_ids for i in range(3)]
    handles = [engine.submit(P[i], greedy(6), None) for i in range(3)] + [engine.submit(P[3], poison, None)]
    while not all(h.done for h in handles):
        engine.step()
    assert [h.result().token_ids for h in handles[:3]] == solo
    with pytest.raises(RowFailed, match="other requests on the engine were not affected") as info:
        handles[3].result()
    assert info.value.status_code == 500 and engine.error is None
    assert engine.num_running == 0 and engine.cache.available_blocks == engine.cache.num_blocks  # its KV freed
    monkeypatch.setattr(engine_module, "sample", real)
    assert engine.generate([(P[0], greedy(6), None)])[0].token_ids == solo[0]  # the engine still serves


def test_a_forward_fault_in_one_row_is_retried_row_by_row(engine, monkeypatch):
    real = engine._decode_logits
    bad = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

    def faulty(seqs):
        if any(s.params is bad for s in seqs) and len(seqs[0].output_ids) >= 2:
            raise IndexError("index out of range in self")
        return real(seqs)

    monkeypatch.setattr(engine, "_decode_logits", faulty)
    solo = [engine.generate([(P[i], greedy(6), None)])[0].token_ids for i in range(3)]
    outs = [engine.submit(P[i], greedy(6), None) for i in range(3)]
    victim = engine.submit(P[3], bad, None)
    while not all(h.done for h in outs + [victim]):
        engine.step()
    assert [h.result().token_ids for h in outs] == solo
    with pytest.raises(RowFailed, match="IndexError"):
        victim.result()
    assert engine.error is None and engine.num_running == 0


def test_out_of_range_seed_and_token_ids_are_refused_before_queueing(engine):
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(GraftError) as info:
            SamplingParams(seed=seed)
        assert info.value.param == "seed"
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1
    with pytest.raises(GraftError, match="vocabulary") as info:
        engine.submit([1, 10**9], greedy(2))
    assert info.value.param == "prompt"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(GraftError) as info:
            SamplingParams(temperature=bad)
        assert info.value.param == "temperature"
