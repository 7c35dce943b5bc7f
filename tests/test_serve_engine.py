"""The serving engine against HF + PEFT: mixed batches of base, LoRA (two ranks) and (IA)³ rows."""

import pytest
import torch

from graftlm.serve import Engine, SamplingParams
from graftlm.testing.adapters import build_test_llama, make_peft_adapter

ADAPTERS = {"lora4": dict(kind="lora", r=4, seed=1),
            "lora8qv": dict(kind="lora", r=8, seed=2, target_modules=["q_proj", "v_proj"]),
            "ia3": dict(kind="ia3", seed=3)}
PROMPTS = [[1, 20, 31, 45, 99, 7], [1, 5, 6, 7], [1, 200, 300, 12, 13, 14, 15, 16, 17], [1, 42]]
FP32_TOL = 1e-4  # max |logit difference| between our engine and HF + PEFT in fp32
BF16_TOL = 0.25  # max |logit difference| between bf16 and fp32 engines (logits of magnitude ~10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = build_test_llama(root / "model")
    paths = {name: make_peft_adapter(model, root / name, **kw) for name, kw in ADAPTERS.items()}
    return model, paths


@pytest.fixture(scope="module")
def engine(setup):
    model, paths = setup
    e = Engine(model, dtype=torch.float32, device="cpu", max_seq_len=64, max_adapters=4)
    for name, path in paths.items():
        e.register_adapter(name, path)
    return e


def hf_model(model_path, adapter_path=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return (PeftModel.from_pretrained(m, adapter_path) if adapter_path else m).eval()


def mixed_requests(max_tokens=10):
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, logprobs=0)
    names = [None, "lora4", "lora8qv", "ia3"]
    return [(PROMPTS[i % len(PROMPTS)], greedy, names[i % 4]) for i in range(8)]


def test_mixed_batch_equals_solo_runs(engine):
    reqs = mixed_requests()
    batched = engine.generate(reqs)
    for req, out in zip(reqs, batched):
        solo = engine.generate([req])[0]
        assert out.token_ids == solo.token_ids, req[2]
    # the adapters really change the outputs (a silently ignored adapter would pass the test above)
    by_adapter = {o.adapter: o.token_ids for o in batched[:4]}
    assert len({tuple(v) for v in by_adapter.values()}) == 4


def test_matches_hf_peft_generation_and_logits(engine, setup):
    model_path, paths = setup
    reqs = mixed_requests()
    outs = engine.generate(reqs)
    for name in [None, "lora4", "lora8qv", "ia3"]:
        hf = hf_model(model_path, paths.get(name))
        for (prompt, _, adapter), out in zip(reqs, outs):
            if adapter != name:
                continue
            ids = torch.tensor([prompt])
            with torch.no_grad():
                gen = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                  do_sample=False, min_new_tokens=10, pad_token_id=0)
                assert gen[0, len(prompt):].tolist() == out.token_ids, name
                logits = hf(input_ids=gen).logits[0, len(prompt) - 1:-1].float()
            # the KV-cached decode path: logprob of every generated token
            hf_lp = torch.log_softmax(logits, -1)[torch.arange(10), gen[0, len(prompt):]]
            ours_lp = torch.tensor([lp.logprob for lp in out.logprobs])
            assert (hf_lp - ours_lp).abs().max() < FP32_TOL, name
            # the logits API (no cache), one row per adapter in the same call
            ours = engine.logits([(prompt, adapter), (PROMPTS[1], None)])[0]
            assert (ours - logits[0]).abs().max() < FP32_TOL, name


def test_bf16_logits_close_to_fp32(setup, engine):
    model, paths = setup
    e16 = Engine(model, dtype=torch.bfloat16, device="cpu", max_seq_len=64, max_adapters=4)
    for name, path in paths.items():
        e16.register_adapter(name, path)
    rows = [(p, a) for p, _, a in mixed_requests()]
    diff = (e16.logits(rows) - engine.logits(rows)).abs().max()
    assert diff < BF16_TOL
    assert e16.logits(rows).dtype == torch.float32


def test_logits_rows_mix_adapters(engine):
    rows = [(PROMPTS[0], None), (PROMPTS[0], "lora4"), (PROMPTS[0], "ia3")]
    mixed = engine.logits(rows)
    for i, row in enumerate(rows):
        assert torch.allclose(mixed[i], engine.logits([row])[0], atol=1e-5)
    assert (mixed[0] - mixed[1]).abs().max() > 1e-2 and (mixed[0] - mixed[2]).abs().max() > 1e-2


def test_grouped_lora_rows_of_several_ranks_and_uneven_groups(engine):
    # LoRA rows are grouped by adapter and padded to the largest group: 3 lora4 rows, 1 lora8qv row
    # (q and v only, so k's columns get no delta), (IA)³ and base rows in between
    rows = [(PROMPTS[0], "lora4"), (PROMPTS[1], None), (PROMPTS[2], "lora4"), (PROMPTS[3], "lora8qv"),
            (PROMPTS[1], "ia3"), (PROMPTS[2], "lora4")]
    mixed = engine.logits(rows)
    for i, row in enumerate(rows):
        assert torch.allclose(mixed[i], engine.logits([row])[0], atol=1e-5), row
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    outs = engine.generate([(p, greedy, a) for p, a in rows])
    for (p, a), out in zip(rows, outs):
        assert out.token_ids == engine.generate([(p, greedy, a)])[0].token_ids, a


def test_install_over_an_occupied_slot_leaves_no_trace(setup):
    # install resets only what the slot's previous adapter wrote: the result must equal a fresh install
    from graftlm.serve.adapters import AdapterPool, read_adapter
    from graftlm.serve.model import Llama

    model_path, paths = setup
    shape = Llama(model_path, torch.float32, torch.device("cpu"), 16).shape
    w = {n: read_adapter(p, shape) for n, p in paths.items()}

    def slot_state(pool):  # slot 1's weights, LoRA trimmed of all-zero rank columns
        state = {}
        for name in ("lora_a", "lora_b", "ia3_out", "ia3_in"):
            for module, t in getattr(pool, name).items():
                t = t[:, 1]
                if name == "lora_a":
                    t = t[..., :int(t.abs().sum((0, 1)).nonzero().max()) + 1] if t.any() else None
                elif name == "lora_b":
                    t = t[:, :int(t.abs().sum((0, 2)).nonzero().max()) + 1] if t.any() else None
                elif (t == 1).all():
                    t = None
                if t is not None:
                    state[name, module] = t
        return state

    for later in ("lora8qv", "ia3", "lora4"):
        reused = AdapterPool(shape, 2, 16, torch.float32, torch.device("cpu"))
        for earlier in ("lora4", "lora8qv", "ia3"):
            reused.install(1, w[earlier])
        reused.install(1, w[later])
        fresh = AdapterPool(shape, 2, 16, torch.float32, torch.device("cpu"))
        fresh.install(1, w[later])
        got, want = slot_state(reused), slot_state(fresh)
        assert got.keys() == want.keys(), later
        assert all(torch.equal(got[k], want[k]) for k in want), later
        reused.clear(1)
        assert slot_state(reused) == {}


def test_reads_bf16_adapter_files(setup, tmp_path):
    # adapters are parsed with NumPy (no torch ops on the loader thread); bf16 files are widened exactly
    import shutil

    from safetensors.torch import load_file, save_file

    from graftlm.serve.adapters import read_adapter
    from graftlm.serve.model import Llama

    model_path, paths = setup
    shape = Llama(model_path, torch.float32, torch.device("cpu"), 16).shape
    bf16 = shutil.copytree(paths["lora4"], tmp_path / "lora4_bf16")
    f = bf16 / "adapter_model.safetensors"
    save_file({k: v.bfloat16() for k, v in load_file(f).items()}, f)
    ours, ref = read_adapter(bf16, shape), read_adapter(paths["lora4"], shape)
    for module, (a, b) in ref.lora.items():
        assert torch.equal(ours.lora[module][0], a.bfloat16().float())
        assert torch.allclose(ours.lora[module][1], b, rtol=1e-2, atol=1e-6)
