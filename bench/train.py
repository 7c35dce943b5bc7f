"""Training throughput: graftlm vs TRL SFTTrainer (defaults) vs plain PEFT + HF Trainer, same everything.

Same base model, LoRA config, examples, batch size and number of optimizer steps; prints tokens/s
(non-padding input tokens per second of training), the ratio to TRL, and MFU against the matmul
peak measured here. Model FLOPs per token = 4 x non-embedding parameters (LoRA: forward + input
gradients; frozen weights get no weight gradients), the same formula for every contender.

    python bench/train.py                                   # random SmolLM2-135M-shaped Llama
    python bench/train.py --model-path ~/.graft/models/smollm2-135m-instruct --steps 6
    python bench/train.py --ranks 2 --layers 4 --steps 8   # graftlm on 2 gloo ranks (1 thread each) / 1 rank

``--ranks N`` compares the same graftlm LoRA run on 1 process with N threads against N torchrun ranks (DDP, gloo)
with 1 thread each, the machine's cores split either way: tokens/s between the first and the last metrics event
(steps 2 to the last: start-up and the first step excluded), and the ratio. On one CPU this measures the price of distribution
(gradient all-reduce, lockstep padding, duplicated data work), not a speed-up: ranks pay off when each has its
own device, or when a model does not fit one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from graftlm.testing.models import build_smollm_shaped_llama
from workloads import chat_examples, cpu_name


def matmul_peak(dtype, n=1024, reps=10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench_graftlm(model_path, examples, args, out) -> tuple[float, int]:
    from graftlm.train.loop import train
    marks = {}

    def on_event(e):
        msg = e.get("message", "")
        if msg.startswith("trainable parameters"):
            marks["start"] = time.perf_counter()
        if msg.startswith("training finished"):
            marks["end"] = time.perf_counter()
    r = train({"training_method": "lora", "max_steps": args.steps, "batch_size": args.batch,
               "log_model_metrics_interval_in_steps": 0, "warmup_ratio": 0.0}, model_path, examples, None, out,
              on_event=on_event)
    return marks["end"] - marks["start"], r.trained_tokens


def _lora():
    from peft import LoraConfig

    from graftlm.train.methods.lora import LLAMA_LINEAR_MODULES
    return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=8, lora_dropout=0.1, target_modules=LLAMA_LINEAR_MODULES)


def bench_trl(model_path, examples, args, out) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    ds = Dataset.from_list([{"messages": [{"role": m["role"], "content": m["content"]} for m in e["messages"]]}
                            for e in examples])
    cfg = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps,
                    report_to="none", save_strategy="no", logging_steps=1000, use_cpu=True, dataloader_num_workers=0,
                    disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=_lora())
    tokens = sum(len(x) for x in trainer.train_dataset[: args.steps * args.batch]["input_ids"])
    t = time.perf_counter()
    trainer.train()
    print(f"trl precision: bf16={cfg.bf16} fp16={cfg.fp16}")
    return time.perf_counter() - t, tokens


def bench_hf_trainer(model_path, examples, args, out) -> tuple[float, int]:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    from graftlm.data.render import encode_example
    tok = AutoTokenizer.from_pretrained(model_path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), _lora())
    rows = [encode_example(tok, e) for e in examples]
    from graftlm.device import cpu_has_bf16
    bf16 = cpu_has_bf16()  # the same precision choice as graftlm, so only the loop differs
    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps,
                              report_to="none", save_strategy="no", logging_steps=1000, use_cpu=True, bf16=bf16,
                              learning_rate=2e-4, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_list(rows),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    tokens = sum(len(r["input_ids"]) for r in rows[: args.steps * args.batch])
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t, tokens


def launch_ranks(model_path, examples, args, out: Path, ranks: int) -> tuple[float, int]:
    """tokens/s of graftlm LoRA on ``ranks`` processes (1: plain process with args.threads threads)."""
    import json
    import subprocess
    import sys
    spec = {"config": {"training_method": "lora", "max_steps": args.steps, "batch_size": args.batch,
                       "log_model_metrics_interval_in_steps": 1, "warmup_ratio": 0.0, "lora_dropout": 0.0,
                       "seed": 1},
            "base_model_path": str(model_path), "train_examples": examples, "out_dir": str(out),
            "events": str(out) + ".jsonl", "threads": max(1, args.threads // ranks)}
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "GRAFT_DTYPE": os.environ.get("GRAFT_DTYPE", "float32")}
    cmd = ([sys.executable, "-m", "graftlm.train.launch", str(path)] if ranks == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
            "-m", "graftlm.train.launch", str(path)])
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in open(str(out) + ".jsonl")]
    metrics = [e for e in metrics if e["type"] == "metrics"]
    first, last = metrics[0], metrics[-1]
    losses = [round(e["data"]["train_loss"], 5) for e in metrics]
    print(f"  {ranks} rank(s): losses {losses}")
    return last["time"] - first["time"], last["data"]["trained_tokens"] - first["data"]["trained_tokens"]


def bench_ranks(model_path, args, work: Path) -> None:
    examples = chat_examples(args.steps * args.batch)
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; LoRA, {args.steps} steps of {args.batch} examples")
    if args.ranks_first:  # the shared machine's load drifts: run the other order too
        many = launch_ranks(model_path, examples, args, work / "many", args.ranks)
        one = launch_ranks(model_path, examples, args, work / "one", 1)
    else:
        one = launch_ranks(model_path, examples, args, work / "one", 1)
        many = launch_ranks(model_path, examples, args, work / "many", args.ranks)
    t1, tn = one[1] / one[0], many[1] / many[0]
    print(f"1 rank x {args.threads} threads: {t1:7.1f} tokens/s")
    print(f"{args.ranks} ranks x {max(1, args.threads // args.ranks)} thread(s) (DDP, gloo): {tn:7.1f} tokens/s")
    print(f"ratio {args.ranks} ranks / 1 rank = {tn / t1:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--layers", type=int, default=30, help="random model depth (without --model-path)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--only", default="graftlm,hf_trainer,trl")
    ap.add_argument("--ranks", type=int, default=0, help="compare graftlm on N torchrun ranks with 1 process")
    ap.add_argument("--ranks-first", action="store_true", help="with --ranks: run the N ranks before 1 process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_path = (Path(args.model_path).expanduser() if args.model_path else
                  build_smollm_shaped_llama(work / "model", layers=args.layers, vocab_size=49152))
    if args.ranks:
        return bench_ranks(model_path, args, work)
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(model_path)
    h, kv_dim = c.hidden_size, c.hidden_size * c.num_key_value_heads // c.num_attention_heads
    non_embed = c.num_hidden_layers * (2 * h * h + 2 * h * kv_dim + 3 * h * c.intermediate_size)
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"model {model_path.name}: {c.num_hidden_layers} layers, {non_embed / 1e6:.1f}M non-embedding params; "
          f"threads {args.threads}; matmul peak bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f}")
    examples = chat_examples(args.steps * args.batch)
    contenders = {"graftlm": bench_graftlm, "hf_trainer": bench_hf_trainer, "trl": bench_trl}
    results = {}
    for name in args.only.split(","):
        secs, tokens = contenders[name](str(model_path), examples, args, work / name)
        results[name] = tokens / secs
        from graftlm.device import training_dtype
        dtype = "bf16" if training_dtype(torch.device("cpu")) == torch.bfloat16 else "fp32"
        peak = peaks[dtype]
        print(f"{name:11s} {tokens:6d} tokens in {secs:6.1f}s = {results[name]:7.1f} tokens/s, "
              f"MFU {4 * non_embed * results[name] / peak:.1%} of measured {dtype} peak", flush=True)
    if "trl" in results:
        for name, tps in results.items():
            print(f"ratio {name} / trl = {tps / results['trl']:.2f}x")


if __name__ == "__main__":
    main()
