"""The customization ladder on CLINC150 (8 banking intents) with the real base model, embedded.

    python bench/ladder.py [--max-eval 80] [--duration 2ep] [--out bench/out/ladder-clinc150]

Baseline: the zero-shot rung of the same run; every other rung is compared with it (and with each other)
on the same eval examples.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="examples/clinc150/train.jsonl")
    ap.add_argument("--eval", default="examples/clinc150/test.jsonl")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--methods", default="tfew,lora")
    ap.add_argument("--max-eval", type=int, default=None)
    ap.add_argument("--duration", default="2ep")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--few-shot-k", type=int, default=8)
    ap.add_argument("--out", default="bench/out/ladder-clinc150")
    args = ap.parse_args()
    from graftlm.evals.ladder import run_ladder

    extra = {"learning_rate": args.lr} if args.lr else {}
    run_ladder(args.train, args.eval, args.model, methods=tuple(m for m in args.methods.split(",") if m), out_dir=args.out,
               few_shot_k=args.few_shot_k, rag_k=args.few_shot_k, max_eval=args.max_eval,
               training_duration=args.duration, training_batch_size=args.batch_size, max_tokens=8, **extra)


if __name__ == "__main__":
    main()
