"""The paged decode-attention kernel against dense attention, and the gather fallback against the kernel."""

import random

import pytest
import torch
import torch.nn.functional as F

from graftlm.serve import Engine, SamplingParams
from graftlm.serve.kv_cache import KVCache
from graftlm.serve.paged_attention import load_kernel, paged_decode_attention
from graftlm.testing.adapters import build_test_llama, make_peft_adapter


def scattered_cache(rows, max_len, kv_heads, dim, dtype, seed=0):
    """A one-layer cache of random K/V whose rows own shuffled, interleaved blocks, and their lengths."""
    torch.manual_seed(seed)
    cache = KVCache(1, kv_heads, dim, torch.float32, torch.device("cpu"),
                    rows * (max_len + 16) * 2 * kv_heads * dim * 4)
    cache.k[0].normal_()
    cache.v[0].normal_()
    cache.k[0], cache.v[0] = cache.k[0].to(dtype), cache.v[0].to(dtype)
    random.Random(seed).shuffle(cache.free_blocks)
    table = cache.table([cache.allocate(max_len) for _ in range(rows)], torch.device("cpu"))
    lengths = torch.randint(1, max_len + 1, (rows,))
    lengths[0] = max_len
    return cache, table, lengths


def dense_attention(q, cache, table, lengths):
    """Reference: each row's positions gathered in order, masked SDPA in fp32."""
    b, span = q.shape[0], int(lengths.max())
    slots = cache.slots(table, torch.arange(span).expand(b, span)).flatten()
    k = cache.k[0].float().index_select(0, slots).view(b, span, *cache.k[0].shape[1:]).transpose(1, 2)
    v = cache.v[0].float().index_select(0, slots).view(b, span, *cache.v[0].shape[1:]).transpose(1, 2)
    mask = (torch.arange(span) < lengths[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(q.float()[:, :, None], k, v, attn_mask=mask, enable_gqa=True)[:, :, 0]


def test_the_kernel_builds_here():
    assert load_kernel() is not None, "gcc + ninja should build the paged attention kernel (see the log warning)"


@pytest.mark.parametrize("dim", [64, 16])  # 64: the unrolled path SmolLM2 takes; 16: the generic one
def test_kernel_equals_dense_attention_over_scattered_blocks(dim):
    cache, table, lengths = scattered_cache(rows=5, max_len=70, kv_heads=2, dim=dim, dtype=torch.float32)
    q = torch.randn(5, 6, dim)  # 3 query heads per KV head
    out = paged_decode_attention(q, cache.k[0], cache.v[0], table, lengths, cache.block_size)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert (out - dense_attention(q, cache, table, lengths)).abs().max() < 1e-5
    # a row reads only its own first lengths[b] positions: garbage at its next position changes nothing
    lengths[1] = 30
    out = paged_decode_attention(q, cache.k[0], cache.v[0], table, lengths, cache.block_size)
    cache.k[0][cache.slots(table[1:2], torch.tensor([[30]]))[0, 0]] = float("nan")
    again = paged_decode_attention(q, cache.k[0], cache.v[0], table, lengths, cache.block_size)
    assert torch.equal(again, out)


def test_kernel_in_bf16_is_close_to_fp32():
    cache, table, lengths = scattered_cache(rows=4, max_len=50, kv_heads=3, dim=64, dtype=torch.bfloat16)
    q = torch.randn(4, 9, 64).to(torch.bfloat16)
    out = paged_decode_attention(q, cache.k[0], cache.v[0], table, lengths, cache.block_size)
    assert out.dtype == torch.bfloat16
    assert (out.float() - dense_attention(q, cache, table, lengths)).abs().max() < 2e-2


def test_a_length_outside_the_block_table_is_refused():
    cache, table, lengths = scattered_cache(rows=2, max_len=20, kv_heads=1, dim=16, dtype=torch.float32)
    lengths[1] = table.shape[1] * cache.block_size + 1
    with pytest.raises(RuntimeError, match="outside its block table"):
        paged_decode_attention(torch.randn(2, 2, 16), cache.k[0], cache.v[0], table, lengths, cache.block_size)


def test_gather_fallback_serves_what_the_kernel_serves(tmp_path, monkeypatch):
    from graftlm.config import reset_settings

    model = build_test_llama(tmp_path / "model")
    adapters = {"lora": make_peft_adapter(model, tmp_path / "lora", kind="lora", r=4, seed=1),
                "ia3": make_peft_adapter(model, tmp_path / "ia3", kind="ia3", seed=2)}
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0)
    prompts = [[1, 20, 31, 45, 99, 7], [1, 5, 6, 7], [1, 200, 300, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                                      23, 24, 25, 26]]
    requests = [(p, greedy, a) for p in prompts for a in (None, "lora", "ia3")]
    outs = {}
    for kernel in ("true", "false"):
        monkeypatch.setenv("GRAFT_PAGED_KERNEL", kernel)
        reset_settings()
        engine = Engine(model, dtype=torch.float32, device="cpu", max_seq_len=64, max_adapters=2)
        assert engine.model.paged_kernel is (kernel == "true")
        for name, path in adapters.items():
            engine.register_adapter(name, path)
        outs[kernel] = engine.generate(requests)
    for with_kernel, gathered in zip(outs["true"], outs["false"]):
        assert with_kernel.token_ids == gathered.token_ids
        lp = torch.tensor([x.logprob for x in with_kernel.logprobs])
        assert (lp - torch.tensor([x.logprob for x in gathered.logprobs])).abs().max() < 1e-4


def test_a_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(tmp_path):
    import os
    import time

    from graftlm.serve import paged_attention

    lock = tmp_path / "lock"
    lock.touch()
    paged_attention._clear_stale_lock(tmp_path)
    assert lock.exists()  # a build may be running right now
    old = time.time() - paged_attention.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    paged_attention._clear_stale_lock(tmp_path)
    assert not lock.exists()


def test_the_venvs_ninja_is_found_when_the_venv_is_not_activated(tmp_path, monkeypatch):
    import shutil

    from graftlm.serve import paged_attention

    monkeypatch.setenv("PATH", str(tmp_path))  # no ninja here, as for `.venv/bin/python` run from make
    assert shutil.which("ninja") is None
    paged_attention._find_ninja()
    assert shutil.which("ninja") is not None
