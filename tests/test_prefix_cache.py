"""Automatic prefix caching in the paged KV cache: greedy outputs with it on are identical to off (base, LoRA
on q,v, LoRA on all linear layers, T-Few), a block cached under one adapter is never reused by another, and
eviction under a small KV budget stays correct."""

from __future__ import annotations

import pytest
import torch

from graftlm.serve import Engine, SamplingParams
from graftlm.serve.kv_cache import kv_bytes_per_token
from graftlm.testing.adapters import build_test_llama, make_peft_adapter

ADAPTERS = {"lora_qv": dict(kind="lora", r=4, seed=1, target_modules=["q_proj", "v_proj"]),
            "lora_all": dict(kind="lora", r=4, seed=2),
            "tfew": dict(kind="ia3", seed=3)}
SHARED = [1] + list(range(20, 60))  # 41 tokens: two full blocks to share, then each prompt's own tokens
PROMPTS = [SHARED + [100 + i, 7, 8 + i] for i in range(3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    model = build_test_llama(root / "model")
    return model, {name: make_peft_adapter(model, root / name, **kw) for name, kw in ADAPTERS.items()}


def make_engine(setup, prefix_cache: bool, kv_cache_bytes: int | None = None) -> Engine:
    model, paths = setup
    e = Engine(model, dtype=torch.float32, device="cpu", max_seq_len=128, max_adapters=4,
               prefix_cache=prefix_cache, kv_cache_bytes=kv_cache_bytes)
    for name, path in paths.items():
        e.register_adapter(name, path)
    return e


def greedy(n=10):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def requests():
    return [(p, greedy(), a) for a in (None, "lora_qv", "lora_all", "tfew") for p in PROMPTS]


def test_greedy_outputs_are_identical_with_the_cache_on_and_off(setup):
    off, on = make_engine(setup, False), make_engine(setup, True)
    expected = [o.token_ids for o in off.generate(requests())]
    first = on.generate(requests())  # one batch: nothing cached yet within it
    again = on.generate(requests())  # each adapter's shared prefix is cached now
    one_by_one = [on.generate([r])[0] for r in requests()]
    assert [o.token_ids for o in first] == expected
    assert [o.token_ids for o in again] == expected
    assert [o.token_ids for o in one_by_one] == expected
    assert all(o.cached_tokens == 32 for o in again + one_by_one)  # two full blocks of the shared prefix
    assert all(o.cached_tokens == 0 for o in off.generate(requests()))
    assert len({tuple(t) for t in expected}) == len(expected)  # adapters and prompts really differ


def test_a_block_cached_under_one_adapter_is_never_reused_by_another(setup):
    e = make_engine(setup, True)
    e.generate([(PROMPTS[0], greedy(), None)])
    outs = e.generate([(PROMPTS[1], greedy(), a) for a in ("lora_qv", "lora_all", "tfew")])
    assert [o.cached_tokens for o in outs] == [0, 0, 0]
    assert e.generate([(PROMPTS[2], greedy(), None)])[0].cached_tokens == 32
    assert e.generate([(PROMPTS[2], greedy(), "tfew")])[0].cached_tokens == 32  # its own, cached just above


def test_eviction_under_a_small_kv_budget_stays_correct(setup):
    model, _ = setup
    from graftlm.serve.model import read_shape
    import json

    shape = read_shape(json.loads((model / "config.json").read_text()))
    block = 16 * kv_bytes_per_token(shape.layers, shape.kv_heads, shape.head_dim, torch.float32)
    small = make_engine(setup, True, kv_cache_bytes=8 * block)  # 8 blocks: two rows of 4 at a time
    off = make_engine(setup, False)
    prompts = [[1] + [(7 * i + j) % 300 + 3 for j in range(40)] + [5] for i in range(4)]
    reqs = [(p, greedy(12), a) for p in prompts for a in (None, "tfew")]
    expected = [o.token_ids for o in off.generate(reqs)]
    assert [o.token_ids for o in small.generate(reqs)] == expected
    # one by one, backwards: the last prompts' prefixes are still cached, the first ones were evicted
    assert [small.generate([r])[0].token_ids for r in reqs[::-1]] == expected[::-1]
    cache = small.cache
    assert cache.hit_tokens > 0 and len(cache.cached) <= cache.num_blocks
    assert cache.available_blocks == cache.num_blocks and all(r == 0 for r in cache.refs)  # nothing leaked


def test_the_cache_never_holds_the_last_prompt_token(setup):
    e = make_engine(setup, True)
    prompt = list(range(1, 33))  # exactly two blocks: only the first may come from the cache
    e.generate([(prompt, greedy(2), None)])
    assert e.generate([(prompt, greedy(2), None)])[0].cached_tokens == 16


@pytest.fixture
def tiny_served(varied_model_dir, monkeypatch):
    from graftlm.models.catalog import import_model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    return import_model(varied_model_dir, "tiny")


SYSTEM = {"role": "system", "content": "the quick brown fox jumps over the lazy dog " * 6}


def cached(client, question: str, stream: bool = False) -> int:
    kw = dict(model="tiny", messages=[SYSTEM, {"role": "user", "content": question}], max_tokens=3, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        return chunks[-1].usage.prompt_tokens_details.cached_tokens
    return client.chat.completions.create(**kw).usage.prompt_tokens_details.cached_tokens


def test_usage_reports_cached_prompt_tokens(client, tiny_served):
    assert cached(client, "hello") == 0
    hit = cached(client, "how are you")
    assert hit > 0 and hit % 16 == 0
    assert cached(client, "what is my balance", stream=True) == hit


def test_graft_prefix_cache_false_turns_it_off(client, tiny_served, monkeypatch):
    from graftlm.config import reset_settings

    monkeypatch.setenv("GRAFT_PREFIX_CACHE", "false")
    reset_settings()
    assert cached(client, "hello") == cached(client, "how are you") == 0


def test_a_burst_with_one_prefix_computes_it_once(setup):
    e = make_engine(setup, True)
    outs = e.generate([(PROMPTS[i % 3], greedy(4), None) for i in range(6)])
    assert [o.cached_tokens for o in outs] == [0] + [32] * 5  # the first prefills, the rest wait a step


def test_the_prefill_budget_counts_only_the_tokens_to_compute(setup, monkeypatch):
    e = make_engine(setup, True)
    e.scheduler.max_prefill_tokens = 60  # one 44-token prompt per step without the cache
    e.generate([(PROMPTS[0], greedy(1), None)])
    batches, prefill = [], e._prefill
    monkeypatch.setattr(e, "_prefill", lambda seqs: (batches.append(len(seqs)), prefill(seqs)))
    outs = e.generate([(PROMPTS[i % 3], greedy(1), None) for i in range(5)])
    assert batches == [5] and all(o.cached_tokens == 32 for o in outs)  # 12 tokens each to compute
