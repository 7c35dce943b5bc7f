"""Prefix caching and grammar overhead, each as a ratio against its baseline measured in the same run.

    python bench/prefix_grammar.py [--layers 4] [--requests 32]

1. Prefix cache: ``--requests`` concurrent requests sharing a 20-shot few-shot prompt (the ladder's few-shot
   rung: 20 examples of ~24 tokens, then each request's own question), submitted at once to an engine with
   the cache on and one with it off: TTFT p50 and total time, on ÷ off. Totals are CPU seconds of this process
   (the machine is shared; wall-clock totals swung 2x between runs), TTFT is wall-clock.
1b. The miss cost: unique prompts of the same length (the cache must cost nothing when it misses). One warmed
   engine with the cache on and one with it off serve ``--rounds`` rounds of fresh unique prompts (never a hit),
   alternating which goes first; throughput on ÷ off is total off CPU ÷ total on CPU (and the median of the
   per-round ratios). The cache's own bookkeeping for one burst (block hashes, allocation, registration, free,
   LRU eviction) is timed apart on a KV cache of the same size.
2. Grammar overhead: decode tokens/s with a json_schema on every row ÷ the same rows free (each row is forced to
   64 tokens: a string of at least 300 characters, so neither finishes early).

A random Llama of SmolLM2-135M's width (``--layers`` deep, 49,152-row LM head) with the tiny test tokenizer;
every engine is warmed up first, and each figure is the faster of two runs. Results also go to bench/results/prefix_grammar.json.
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

from graftlm.serve import Engine, SamplingParams
from graftlm.testing.models import build_smollm_shaped_llama
from workloads import cpu_name

RESULTS = Path(__file__).parent / "results" / "prefix_grammar.json"
REPS = 2


def run(engine, prompts, params):
    """(TTFT p50 in wall seconds, total CPU seconds of this process, outputs). The machine is shared: CPU
    seconds are what this work cost, wall seconds also count the other tenants'."""
    t0 = time.process_time()
    outs = engine.generate([(p, params, None) for p in prompts])
    total = time.process_time() - t0
    return statistics.median(o.ttft_s for o in outs), total, outs


def unique_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 380) for _ in range(length - 1)] for _ in range(n)]


def bookkeeping_ms(cache, prompts: list[list[int]], max_tokens: int, reps: int = 20) -> float:
    """CPU milliseconds the prefix cache's own work takes for one burst of ``prompts`` on a cache like ``cache``
    (its size, caching on): chain hashes, allocation (LRU eviction once it is full), registration, free."""
    from graftlm.serve.kv_cache import KVCache

    kv = KVCache(1, 1, 1, torch.float32, torch.device("cpu"), budget_bytes=2 * 4 * cache.block_size * cache.num_blocks,
                 block_size=cache.block_size, prefix_caching=True)
    assert kv.num_blocks == cache.num_blocks
    t0 = time.process_time()
    for r in range(reps):
        held = []
        for p in prompts:
            p = [r + 2] + p[1:]  # a new first token each burst: every block misses
            hashes = kv.prefix_hashes(p, None)
            blocks, _ = kv.allocate_prefix(len(p) + max_tokens, hashes)
            kv.register(blocks, hashes)
            held.append(blocks)
        for blocks in held:
            kv.free(blocks)
    return 1000 * (time.process_time() - t0) / reps


def miss_cost(engine, warmed, off, params, length: int, args) -> dict:
    """Unique prompts, cache on vs off, alternating rounds on two warmed engines (see the module docstring)."""
    on = warmed(engine(True))
    cpu = {"on": [], "off": []}
    for r in range(args.rounds):
        prompts = unique_prompts(args.requests, length, seed=1000 + r)
        for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
            _, total, outs = run(on if name == "on" else off, prompts, params)
            assert all(o.cached_tokens == 0 for o in outs)  # a miss, every one
            cpu[name].append(total)
    ratios = sorted(b / a for a, b in zip(cpu["on"], cpu["off"]))
    own = bookkeeping_ms(on.cache, unique_prompts(args.requests, length, seed=999), params.max_tokens)
    out = {"rounds": args.rounds, "total_s": {k: sum(v) for k, v in cpu.items()}, "per_round_s": cpu,
           "throughput_on_over_off": sum(cpu["off"]) / sum(cpu["on"]),
           "median_round_ratio": statistics.median(ratios), "round_ratio_range": [ratios[0], ratios[-1]],
           "bookkeeping_ms_per_burst": own,
           "bookkeeping_share_of_on": own / 1000 / (sum(cpu["on"]) / args.rounds)}
    print(f"unique prompts, {args.rounds} alternating rounds: total CPU on {out['total_s']['on']:.2f}s off "
          f"{out['total_s']['off']:.2f}s (throughput on/off {out['throughput_on_over_off']:.3f}x, per-round median "
          f"{out['median_round_ratio']:.3f}x, range {ratios[0]:.3f}-{ratios[-1]:.3f}); the cache's own bookkeeping "
          f"{own:.2f} ms per burst ({100 * out['bookkeeping_share_of_on']:.3f}% of a burst's CPU)")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6, help="alternating on/off rounds of the miss-cost measurement")
    ap.add_argument("--sections", default="fewshot,unique,grammar")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    rng = random.Random(0)
    tmp = Path(tempfile.mkdtemp())
    model = build_smollm_shaped_llama(tmp / "model", layers=args.layers, vocab_size=49152)

    def engine(prefix_cache):
        return Engine(model, dtype=torch.float32, device="cpu", max_seq_len=1024, max_batch_size=args.requests,
                      prefix_cache=prefix_cache)

    shots = [[rng.randrange(3, 380) for _ in range(24)] for _ in range(20)]
    shared = [1] + [t for shot in shots for t in shot]
    fewshot = [shared + [rng.randrange(3, 380) for _ in range(16)] for _ in range(args.requests)]
    unique = [[1] + [rng.randrange(3, 380) for _ in range(len(fewshot[0]) - 1)] for _ in range(args.requests)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    def warmed(e):  # warm up (kernel build, allocator) on prompts of another prefix
        e.generate([([2] + p[1:], params, None) for p in unique[:4]])
        return e

    off = warmed(engine(False))
    report = {"cpu": f"{cpu_name()}, {os.cpu_count()} cores, fp32", "layers": args.layers,
              "requests": args.requests, "prompt_tokens": len(fewshot[0]), "shared_prefix_tokens": len(shared),
              "load_average_at_start": os.getloadavg()}

    def best(e, prompts, fresh):
        """The faster of REPS runs; with the cache on, each on a fresh engine (a second run on the same one would
        find the first run's blocks)."""
        return min((run(fresh() if fresh else e, prompts, params) for _ in range(REPS)), key=lambda r: r[1])

    if "fewshot" in sections:
        fewshot_section(report, best, off, fewshot, engine, warmed, args)
    if "unique" in sections:
        report["unique"] = miss_cost(engine, warmed, off, params, len(fewshot[0]), args)
    if "grammar" in sections:
        grammar_section(report, off, unique)
    report["load_average_at_end"] = os.getloadavg()
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(old | report, indent=2))  # the sections not run keep their last figures


def fewshot_section(report, best, off, fewshot, engine, warmed, args):
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    ttft_off, total_off, _ = best(off, fewshot, None)
    ttft_on, total_on, outs = best(None, fewshot, lambda: warmed(engine(True)))
    report["fewshot"] = {"ttft_p50_s": {"on": ttft_on, "off": ttft_off}, "total_s": {"on": total_on, "off": total_off},
                         "ttft_ratio_off_over_on": ttft_off / ttft_on, "total_ratio_off_over_on": total_off / total_on,
                         "cached_tokens_mean": statistics.mean(o.cached_tokens for o in outs)}
    print(f"20-shot prompt x {args.requests}: TTFT p50 on {ttft_on:.2f}s off {ttft_off:.2f}s "
          f"({ttft_off / ttft_on:.1f}x lower); total CPU on {total_on:.2f}s off {total_off:.2f}s "
          f"({total_off / total_on:.1f}x); mean cached tokens {report['fewshot']['cached_tokens_mean']:.0f}")


def grammar_section(report, off, unique):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "minLength": 300, "maxLength": 400}},
              "required": ["answer"], "additionalProperties": False}
    grammar = off.grammars.json_schema(schema)
    short = [p[-40:] for p in unique]
    n = 64
    free = SamplingParams(max_tokens=n, temperature=1.0, seed=0, ignore_eos=True)
    constrained = SamplingParams(max_tokens=n, temperature=1.0, seed=0, grammar=grammar)
    rates = {"free": [], "grammar": []}
    for _ in range(2):  # interleaved, so machine load hits both alike
        for name, p in (("free", free), ("grammar", constrained)):
            t0 = time.process_time()
            outs = off.generate([(q, p, None) for q in short])
            rates[name].append(sum(o.completion_tokens for o in outs) / (time.process_time() - t0))
    best = {k: max(v) for k, v in rates.items()}
    report["grammar"] = {"tokens_per_s": best, "ratio_grammar_over_free": best["grammar"] / best["free"]}
    print(f"decode with a json_schema on every row: {best['grammar']:.0f} vs free {best['free']:.0f} tokens/CPU-s "
          f"({best['grammar'] / best['free']:.2f}x)")


if __name__ == "__main__":
    main()
