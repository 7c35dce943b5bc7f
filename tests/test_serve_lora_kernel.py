"""The CPU LoRA kernel (Punica-style BGMV, one call per fused group) against the grouped-bmm path and a
plain reference: base, LoRA of three ranks (all-linear and q,v only) and (IA)³ rows in one batch."""

import pytest
import torch

from graftlm.serve import Engine, SamplingParams
from graftlm.serve.adapters import KernelLoraRows, LoraRows
from graftlm.serve.paged_attention import load_kernels
from graftlm.testing.adapters import build_test_llama, make_peft_adapter

pytestmark = pytest.mark.skipif(load_kernels() is None, reason="no C++ toolchain to build the kernel")

ADAPTERS = {"lora4": dict(kind="lora", r=4, seed=1), "lora16": dict(kind="lora", r=16, seed=4),
            "lora8qv": dict(kind="lora", r=8, seed=2, target_modules=["q_proj", "v_proj"]),
            "ia3": dict(kind="ia3", seed=3)}
PROMPTS = [[1, 20, 31, 45, 99, 7], [1, 5, 6, 7], [1, 200, 300, 12, 13, 14, 15, 16, 17], [1, 42]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-kernel")
    model = build_test_llama(root / "model")
    return model, {name: make_peft_adapter(model, root / name, **kw) for name, kw in ADAPTERS.items()}


def make_engine(setup, dtype, kernel):
    model, paths = setup
    e = Engine(model, dtype=dtype, device="cpu", max_seq_len=64, max_adapters=5)
    e.pool.lora_kernel = kernel
    for name, path in paths.items():
        e.register_adapter(name, path)
    return e


def requests(n=10):
    greedy = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=0)
    names = [None, "lora4", "lora8qv", "ia3", "lora16", "lora4"]
    return [(PROMPTS[i % len(PROMPTS)], greedy, names[i % len(names)]) for i in range(12)]


def test_kernel_serves_what_the_grouped_bmm_path_serves_in_fp32(setup):
    outs = {k: make_engine(setup, torch.float32, k).generate(requests()) for k in (True, False)}
    for fast, ref in zip(outs[True], outs[False]):
        assert fast.token_ids == ref.token_ids, fast.adapter
        lp = torch.tensor([x.logprob for x in fast.logprobs])
        assert (lp - torch.tensor([x.logprob for x in ref.logprobs])).abs().max() < 1e-4
    # the adapters change the outputs, so the comparison above covers their deltas
    assert len({tuple(o.token_ids) for o in outs[True][:6]}) >= 5


def test_the_engine_uses_the_kernel_on_cpu(setup):
    e = make_engine(setup, torch.float32, True)
    e.adapters.load_now("lora4")
    assert isinstance(e.pool.rows([0, e.adapters.acquire("lora4")]).lora, KernelLoraRows)
    e.pool.lora_kernel = False
    assert isinstance(e.pool.rows([0, e.adapters.acquire("lora4")]).lora, LoraRows)


def test_kernel_logits_in_bf16_close_to_fp32(setup):
    rows = [(p, a) for p in PROMPTS[:2] for a in (None, "lora4", "lora16", "lora8qv", "ia3")]
    ref = make_engine(setup, torch.float32, False).logits(rows)
    got = make_engine(setup, torch.bfloat16, True).logits(rows)
    assert (got - ref).abs().max() < 0.25  # as test_serve_engine's BF16_TOL (logits of magnitude ~10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_kernel_equals_a_plain_reference(dtype, tol):
    g = torch.Generator().manual_seed(0)
    slots, fin, cap, outs, n = 5, 48, 8, [24, 8], 7
    a = [torch.randn(slots, fin, cap, generator=g).to(dtype) for _ in outs]
    b = [torch.randn(slots, cap, o, generator=g).to(dtype) for o in outs]
    ranks = torch.tensor([[0, 4, 8, 0, 2], [0, 4, 0, 3, 8]])  # slot 0 is the base: rank 0 everywhere
    token_slot = torch.tensor([1, 0, 2, 3, 4, 1, 2])
    x = torch.randn(n, fin, generator=g).to(dtype)
    y = torch.randn(n, 40, generator=g).to(dtype)  # columns 24..32 for module 1, 32..40 no module
    want = y.float().clone()
    cols = [0, 24]
    for t in range(n):
        s = int(token_slot[t])
        for m, o in enumerate(outs):
            r = int(ranks[m, s])
            want[t, cols[m]:cols[m] + o] += x[t].float() @ a[m][s, :, :r].float() @ b[m][s, :r].float()
    got = y.clone()
    load_kernels().lora_add(x, got, a, b, cols, token_slot, ranks)
    assert (got.float() - want).abs().max() < tol * want.abs().max()
    assert torch.equal(got[1], y[1]) and torch.equal(got[:, 32:], y[:, 32:])  # base row, untargeted columns


def test_kernel_refuses_a_slot_outside_the_pool():
    x, y = torch.zeros(1, 4), torch.zeros(1, 4)
    a, b = [torch.zeros(2, 4, 2)], [torch.zeros(2, 2, 4)]
    with pytest.raises(RuntimeError, match="slot"):
        load_kernels().lora_add(x, y, a, b, [0], torch.tensor([2]), torch.tensor([[0, 2]]))
