"""Serving benchmark: many adapters in one batch vs the base model alone, a naive PEFT server, HF generate.

    python bench/serve.py [--model-path ~/.graft/models/smollm2-135m-instruct] [--dtype float32]

Without --model-path a random Llama of SmolLM2-135M's shape (tiny vocabulary) is built. One run, same
prompts and output lengths for every contender; ratios are printed against baselines measured here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from graftlm.serve import Engine, SamplingParams
from graftlm.serve.adapters import read_adapter
from graftlm.serve.testing import make_peft_adapters


def build_random_llama(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from graftlm.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run_engine(engine, prompts, adapters, new_tokens):
    sp = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    outs = engine.generate([(p, sp, a) for p, a in zip(prompts, adapters)])
    return sum(o.completion_tokens for o in outs) / (time.perf_counter() - t0)


def latency(engine, prompts, adapters, new_tokens, concurrency):
    sp = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    engine.start()
    try:
        handles = [engine.submit(p, sp, a) for p, a in list(zip(prompts, adapters))[:concurrency]]
        outs = [h.result() for h in handles]
    finally:
        engine._stopping = True
        engine._thread.join()
        engine._thread = None
    ttft = [o.ttft_s for o in outs]
    itl = [b - a for o in outs for a, b in zip(o.token_times_s, o.token_times_s[1:])]
    return ttft, itl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", type=Path)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--naive-requests", type=int, default=4, help="requests timed for the set_adapter server")
    args = ap.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    model_path = args.model_path.expanduser() if args.model_path else build_random_llama(tmp / "model")
    half = args.batch // 2
    lora = make_peft_adapters(model_path, [tmp / f"lora{i}" for i in range(half)], "lora", r=8, scale=0.05)
    ia3 = make_peft_adapters(model_path, [tmp / f"ia3_{i}" for i in range(half)], "ia3", scale=0.05)
    names = {p.name: p for p in lora + ia3}

    vocab = 300
    prompts = [torch.randint(3, vocab, (args.prompt_tokens,)).tolist() for _ in range(args.batch)]
    mixed = [list(names)[i % len(names)] for i in range(args.batch)]
    base = [None] * args.batch
    print(f"model {model_path}  dtype {args.dtype}  batch {args.batch}  prompt {args.prompt_tokens}  "
          f"new tokens {args.new_tokens}  torch threads {torch.get_num_threads()}")

    engine = Engine(model_path, dtype=dtype, max_batch_size=args.batch, max_seq_len=256,
                    max_adapters=len(names), max_queue=256)
    for n, p in names.items():
        engine.register_adapter(n, p)
    run_engine(engine, prompts[:4], mixed[:4], 4)  # warm up
    run_engine(engine, prompts, mixed, 2)  # make all adapters resident
    base_tps = run_engine(engine, prompts, base, args.new_tokens)
    mixed_tps = run_engine(engine, prompts, mixed, args.new_tokens)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        hf.generate(input_ids=ids[:2], max_new_tokens=2, do_sample=False)
        t0 = time.perf_counter()
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        hf_tps = args.batch * args.new_tokens / (time.perf_counter() - t0)

        peft = PeftModel.from_pretrained(hf, lora[0], adapter_name=lora[0].name)
        for n in mixed[: args.naive_requests]:
            if n not in peft.peft_config:
                peft.load_adapter(names[n], adapter_name=n)
        t0 = time.perf_counter()
        for p, n in list(zip(prompts, mixed))[: args.naive_requests]:
            peft.set_adapter(n)
            x = torch.tensor([p])
            peft.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        naive_tps = args.naive_requests * args.new_tokens / (time.perf_counter() - t0)

    print(f"\ntokens/s (batch {args.batch}, {args.new_tokens} new tokens, prefill included)")
    print(f"  graftlm base only                 {base_tps:8.1f}")
    print(f"  graftlm {len(names)} adapters mixed          {mixed_tps:8.1f}")
    print(f"  HF generate base only             {hf_tps:8.1f}")
    print(f"  PEFT set_adapter per request      {naive_tps:8.1f}  (timed on {args.naive_requests} requests)")
    print(f"  mixed / graftlm base    {mixed_tps / base_tps:6.2f}   (goal >= 0.85)")
    print(f"  mixed / naive PEFT      {mixed_tps / naive_tps:6.1f}x  (goal >= 10x)")
    print(f"  mixed / HF base         {mixed_tps / hf_tps:6.2f}")
    print(f"  graftlm base / HF base  {base_tps / hf_tps:6.2f}")

    print("\nlatency, mixed adapters (ms)      TTFT p50   TTFT p99   ITL p50   ITL p99")
    for c in (1, 8, args.batch):
        ttft, itl = latency(engine, prompts, mixed, args.new_tokens, c)
        print(f"  {c:3d} concurrent               {1e3 * pct(ttft, .5):9.1f}  {1e3 * pct(ttft, .99):9.1f}"
              f"  {1e3 * pct(itl, .5):8.1f}  {1e3 * pct(itl, .99):8.1f}")

    print("\nadapter load (disk -> CPU -> device slot), median of 5")
    for kind, path in (("T-Few (IA)3", ia3[0]), ("LoRA r=8", lora[0])):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            engine.pool.install(1, read_adapter(path, engine.model.shape))
            times.append(time.perf_counter() - t0)
        goal = 20 if kind.startswith("T") else 100
        print(f"  {kind:12s} {1e3 * statistics.median(times):7.2f} ms   (goal < {goal} ms)")


if __name__ == "__main__":
    main()
