"""Serving benchmark: many adapters in one batch vs the base model alone, a naive PEFT server, HF generate.

    python bench/serve.py [--model-path ~/.graft/models/smollm2-135m-instruct] [--dtype float32,default]
                          [--sections decode,tokens,hf,naive,latency,long,load]

Without --model-path a random Llama of SmolLM2-135M's shape (tiny vocabulary) is built. One run per dtype,
same prompts and output lengths for every contender; ratios are printed against baselines measured in the
same run, and everything printed is also written to bench/results/serve_<cpu kind>.json (kind: amx,
avx512bf16, avx512 or avx2, from /proc/cpuinfo, so each kind of CPU keeps its own figures) with the CPU's
name, its relevant flags and the dtype of every run.

The decode step is timed for each LoRA layout the engine has (``layout``: the CPU kernel, one call per fused
group; ``bmm``: rows grouped by adapter, batched matmuls) on the same batch, interleaved.

The mixed batch is 32 requests over 32 adapters: 16 LoRA r=8 and 16 T-Few ((IA)³, PEFT defaults). LoRA is
measured twice: on all linear layers (the costlier case) and on PEFT's default targets for Llama (q, v).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from graftlm.serve import Engine, SamplingParams, default_dtype
from graftlm.serve.adapters import read_adapter
from graftlm.serve.model import read_shape
from graftlm.testing.adapters import make_peft_adapters
from graftlm.testing.models import build_smollm_shaped_llama
from workloads import cpu_flags, cpu_kind, cpu_name

RESULTS = Path(__file__).parent / "results"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def tokens_per_s(engine, prompts, adapters, new_tokens):
    t0 = time.perf_counter()
    outs = engine.generate([(p, greedy(new_tokens), a) for p, a in zip(prompts, adapters)])
    return sum(o.completion_tokens for o in outs) / (time.perf_counter() - t0)


def decode_step_ms(engine, prompts, batches: dict, reps=8):
    """Median time of one decode step per batch composition, compositions interleaved so that machine load
    hits them alike (the tokens/s figures include prefill and sampling)."""
    model, cache = engine.model, engine.cache
    slots, layout = {}, {}
    batches = {name: v if isinstance(v, tuple) else (v, engine.pool.lora_kernel) for name, v in batches.items()}
    default_layout = engine.pool.lora_kernel
    for name, (adapters, kernel) in batches.items():
        layout[name] = kernel
        for a in set(adapters) - {None}:
            engine.adapters.load_now(a)
        slots[name] = [0 if a is None else engine.adapters.acquire(a) for a in adapters]
    tokens = torch.tensor([p[-1] for p in prompts], device=engine.device)
    positions = torch.full((len(prompts),), len(prompts[0]), device=engine.device)
    blocks = [cache.allocate(len(prompts[0]) + 1) for _ in prompts]  # each row's KV blocks for this step
    table = cache.table(blocks, engine.device)
    times = {name: [] for name in batches}
    for rep in range(reps + 1):
        for name in batches:
            engine.pool.lora_kernel = layout[name]
            rows = engine.pool.rows(slots[name])
            t0 = time.perf_counter()
            model.decode(tokens, positions, rows, cache, table)
            if rep:  # the first round builds the gathered weights
                times[name].append(time.perf_counter() - t0)
    engine.pool.lora_kernel = default_layout
    for b in blocks:
        cache.free(b)
    for name, (adapters, _) in batches.items():
        for a in adapters:
            if a is not None:
                engine.adapters.release(a)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def long_context_ms(engine, contexts, rows, reps=5):
    """Median decode step (base rows) at long contexts: the paged kernel vs the gather fallback it replaced
    (each step copies every row's context out of its blocks), interleaved, on one cache with blocks shuffled
    as a long-running server leaves them."""
    from graftlm.serve.kv_cache import KVCache, kv_bytes_per_token

    model, s = engine.model, engine.model.shape
    if not model.paged_kernel:
        return {}
    per_token = kv_bytes_per_token(s.layers, s.kv_heads, s.head_dim, engine.dtype)
    budget = rows * (max(contexts) + 32) * per_token
    cache = KVCache(s.layers, s.kv_heads, s.head_dim, engine.dtype, engine.device, budget)
    random.Random(0).shuffle(cache.free_blocks)
    out = {}
    for ctx in contexts:
        blocks = [cache.allocate(ctx + 1) for _ in range(rows)]
        table = cache.table(blocks, engine.device)
        tokens = torch.randint(3, 300, (rows,), device=engine.device)
        positions = torch.full((rows,), ctx, device=engine.device)
        times = {"kernel": [], "gather": []}
        for rep in range(reps + 1):
            for path in times:
                model.paged_kernel = path == "kernel"
                t0 = time.perf_counter()
                model.decode(tokens, positions, None, cache, table)
                if rep:
                    times[path].append(time.perf_counter() - t0)
        model.paged_kernel = True
        for b in blocks:
            cache.free(b)
        out[ctx] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return out


def latency(engine, prompts, adapters, new_tokens, concurrency):
    engine.start()
    try:
        handles = [engine.submit(p, greedy(new_tokens), a) for p, a in list(zip(prompts, adapters))[:concurrency]]
        outs = [h.result() for h in handles]
    finally:
        engine._stopping = True
        engine._thread.join()
        engine._thread = None
    ttft = [o.ttft_s for o in outs]
    itl = [b - a for o in outs for a, b in zip(o.token_times_s, o.token_times_s[1:])]
    return ttft, itl


def load_ms(engine, path, reps=5):
    """Disk -> CPU (read_adapter, as the loader thread does) -> device slot (install), median."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine.pool.install(engine.pool.slots, read_adapter(path, engine.model.shape))
        times.append(time.perf_counter() - t0)
    engine.pool.clear(engine.pool.slots)
    return 1e3 * statistics.median(times)


def bench_dtype(args, dtype, model_path, adapters, prompts):
    res = {"dtype": str(dtype).removeprefix("torch.")}
    want = set(args.sections.split(","))
    n = args.batch
    mixed = {"all-linear": [p.name for p in adapters["lora"] + adapters["ia3"]][:n],
             "q,v": [p.name for p in adapters["lora_qv"] + adapters["ia3"]][:n]}
    base = [None] * n
    paths = {p.name: p for ps in adapters.values() for p in ps}
    from graftlm.serve.kv_cache import kv_bytes_per_token

    s = read_shape(json.loads((Path(model_path) / "config.json").read_text()))
    # positions up to the longest long-context run; KV for the main runs sized as for 256 tokens per row
    engine = Engine(model_path, dtype=dtype, max_batch_size=n, max_seq_len=max(256, max(args.long_contexts) + 1),
                    max_adapters=len(paths) + 1, max_queue=256,
                    kv_cache_bytes=n * 256 * kv_bytes_per_token(s.layers, s.kv_heads, s.head_dim, dtype))
    res["lora_layout"] = "kernel" if engine.pool.lora_kernel else "bmm"
    for name, p in paths.items():
        engine.register_adapter(name, p)
    tokens_per_s(engine, prompts[:4], mixed["all-linear"][:4], 4)  # warm up
    for m in mixed.values():
        tokens_per_s(engine, prompts, m, 2)  # make every adapter resident

    ratios = res["ratios"] = {}
    if "decode" in want:
        batches = {"base": base, **mixed}
        if engine.pool.lora_kernel:  # the layout it replaced, on the same batches
            batches.update({f"{k} (bmm)": (v, False) for k, v in mixed.items()})
        res["decode_step_ms"] = step = decode_step_ms(engine, prompts, batches)
        for k in batches:
            if k != "base":
                ratios[f"mixed/base decode step, LoRA {k}"] = step["base"] / step[k]
    tps = res["tokens_per_s"] = {}
    if "tokens" in want:
        tps["graftlm base"] = tokens_per_s(engine, prompts, base, args.new_tokens)
        for targets, m in mixed.items():
            tps[f"graftlm mixed, LoRA {targets}"] = tokens_per_s(engine, prompts, m, args.new_tokens)
        tps["graftlm base (again)"] = tokens_per_s(engine, prompts, base, args.new_tokens)
        base_tps = (tps["graftlm base"] + tps["graftlm base (again)"]) / 2
        for targets in mixed:
            ratios[f"mixed/base tokens/s, LoRA {targets}"] = tps[f"graftlm mixed, LoRA {targets}"] / base_tps

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor(prompts)
    naive_names = mixed["all-linear"][::max(1, n // args.naive_requests)][:args.naive_requests]
    with torch.inference_mode():
        if "hf" in want:
            hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
            hf.generate(input_ids=ids[:2], max_new_tokens=2, do_sample=False, pad_token_id=0)
            t0 = time.perf_counter()
            hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            tps["HF generate base only"] = n * args.new_tokens / (time.perf_counter() - t0)
            if "tokens" in want:  # the engine's base run again, right after HF's
                tps["graftlm base (after HF)"] = tokens_per_s(engine, prompts, base, args.new_tokens)
                ratios["graftlm base/HF generate base"] = (tps["graftlm base (again)"] + tps[
                    "graftlm base (after HF)"]) / 2 / tps["HF generate base only"]
                ratios["mixed (all-linear)/HF generate base"] = tps["graftlm mixed, LoRA all-linear"] / tps[
                    "HF generate base only"]

        if "naive" in want:
            # PEFT cannot hold LoRA and IA3 adapters in one model: the naive server keeps one per kind
            servers = {}
            for name in naive_names:
                kind = "ia3" if name.startswith("ia3") else "lora"
                if kind not in servers:
                    servers[kind] = PeftModel.from_pretrained(
                        AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval(), paths[name],
                        adapter_name=name)
                else:
                    servers[kind].load_adapter(paths[name], adapter_name=name)
            t0 = time.perf_counter()
            for i, name in enumerate(naive_names):  # one request at a time, set_adapter before each
                peft = servers["ia3" if name.startswith("ia3") else "lora"]
                peft.set_adapter(name)
                x = torch.tensor([prompts[i]])
                peft.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            naive_s = (time.perf_counter() - t0) / len(naive_names)
            # requests are served one after another, so 32 of them take 32x the measured per-request time
            tps["PEFT set_adapter server (extrapolated)"] = args.new_tokens / naive_s
            res["naive_server"] = {"requests_timed": len(naive_names), "s_per_request": naive_s,
                                   "extrapolated_s_for_batch": naive_s * n}
            if "tokens" in want:
                ratios["mixed (all-linear)/naive PEFT server"] = tps["graftlm mixed, LoRA all-linear"] / tps[
                    "PEFT set_adapter server (extrapolated)"]
    res["latency_ms"] = {}
    if "latency" in want:
        for c in sorted({1, 8, n}):
            ttft, itl = latency(engine, prompts, mixed["all-linear"], args.new_tokens, c)
            res["latency_ms"][c] = {"ttft_p50": 1e3 * pct(ttft, .5), "ttft_p99": 1e3 * pct(ttft, .99),
                                    "itl_p50": 1e3 * pct(itl, .5), "itl_p99": 1e3 * pct(itl, .99)}
    res["long_context_decode_step_ms"] = long_context_ms(engine, args.long_contexts, n) if "long" in want else {}
    if "load" in want:
        res["adapter_load_ms"] = {"T-Few (IA)3": load_ms(engine, adapters["ia3"][0]),
                                  "LoRA r=8 all-linear": load_ms(engine, adapters["lora"][0]),
                                  "LoRA r=8 q,v": load_ms(engine, adapters["lora_qv"][0])}
    engine.stop()
    return res


def report(res, args):
    print(f"\n=== dtype {res['dtype']}: batch {args.batch}, {args.new_tokens} new tokens, "
          f"prompt {args.prompt_tokens} tokens, torch threads {torch.get_num_threads()}")
    print("tokens/s (prefill included)")
    for k, v in res["tokens_per_s"].items():
        print(f"  {k:42s} {v:8.1f}")
    print("decode step, median ms: " + "  ".join(f"{k} {v:.1f}" for k, v in res.get("decode_step_ms", {}).items()))
    goals = {"mixed/base": "(goal >= 0.9; q,v 0.95)", "naive": "(goal >= 10x)", "base/HF": "(goal >= 1.5x)"}
    for k, v in res["ratios"].items():
        goal = next((g for key, g in goals.items() if k.startswith(key) or key in k), "")
        print(f"  {k:42s} {v:6.2f}  {goal}")
    nv = res.get("naive_server")
    if nv:
        print(f"  (naive server: {nv['requests_timed']} requests timed, {nv['s_per_request']:.2f} s each; "
              f"serving the batch one by one extrapolates to {nv['extrapolated_s_for_batch']:.0f} s)")
    if res["latency_ms"]:
        print("latency, mixed adapters (ms)   TTFT p50   TTFT p99   ITL p50   ITL p99")
    for c, m in res["latency_ms"].items():
        print(f"  {c:3d} concurrent            {m['ttft_p50']:9.1f}  {m['ttft_p99']:9.1f}  "
              f"{m['itl_p50']:8.1f}  {m['itl_p99']:8.1f}")
    if res["long_context_decode_step_ms"]:
        print(f"decode step at long contexts, {args.batch} base rows (ms)   paged kernel   gather fallback   ratio")
        for ctx, m in res["long_context_decode_step_ms"].items():
            print(f"  context {ctx:5d}                              {m['kernel']:9.1f}   {m['gather']:13.1f}"
                  f"   {m['gather'] / m['kernel']:5.2f}x")
    if res.get("adapter_load_ms"):
        print("adapter load (disk -> CPU -> device slot), median of 5")
    for k, v in res.get("adapter_load_ms", {}).items():
        goal = 20 if k.startswith("T") else 100
        print(f"  {k:22s} {v:7.2f} ms   (goal < {goal} ms)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", type=Path)
    ap.add_argument("--dtype", default="float32,default", help="comma-separated; 'default' = the engine's default")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--long-contexts", type=lambda v: [int(x) for x in v.split(",")], default=[64, 512, 1024],
                    help="contexts for the paged-kernel vs gather decode step")
    ap.add_argument("--naive-requests", type=int, default=8, help="requests timed for the set_adapter server")
    ap.add_argument("--sections", default="decode,tokens,hf,naive,latency,long,load",
                    help="what to measure (a loaded machine may not give time for all of it)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results/serve_<kind>.json)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"serve_{cpu_kind()}.json"
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    model_path = args.model_path.expanduser() if args.model_path else build_smollm_shaped_llama(tmp / "model")
    half = args.batch // 2
    adapters = {
        "lora": make_peft_adapters(model_path, [tmp / f"lora{i}" for i in range(half)], "lora", r=8, scale=0.05),
        "lora_qv": make_peft_adapters(model_path, [tmp / f"lora_qv{i}" for i in range(half)], "lora", r=8,
                                      target_modules=["q_proj", "v_proj"], scale=0.05),
        "ia3": make_peft_adapters(model_path, [tmp / f"ia3_{i}" for i in range(half)], "ia3", scale=0.05),
    }
    prompts = [torch.randint(3, 300, (args.prompt_tokens,)).tolist() for _ in range(args.batch)]
    dtypes = []
    for d in args.dtype.split(","):
        dt = default_dtype(torch.device("cpu")) if d == "default" else getattr(torch, d)
        if dt not in dtypes:
            dtypes.append(dt)
    print(f"model {model_path}  dtypes {[str(d) for d in dtypes]}  engine default "
          f"{default_dtype(torch.device('cpu'))}")
    print(f"CPU {cpu_name()} ({cpu_kind()}; flags {' '.join(cpu_flags())}), load average {os.getloadavg()[0]:.1f}")
    results = {"cpu": cpu_name(), "cpu_kind": cpu_kind(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
               "load_average_at_start": os.getloadavg()[0], "sections": args.sections, "model": str(model_path), "batch": args.batch, "new_tokens": args.new_tokens,
               "prompt_tokens": args.prompt_tokens, "torch_threads": torch.get_num_threads(),
               "default_dtype": str(default_dtype(torch.device("cpu"))).removeprefix("torch."), "runs": []}
    for dt in dtypes:
        res = bench_dtype(args, dt, model_path, adapters, prompts)
        report(res, args)
        results["runs"].append(res)
        results["load_average_at_end"] = os.getloadavg()[0]
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
