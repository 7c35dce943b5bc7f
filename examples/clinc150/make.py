"""Regenerate the CLINC150 intent-classification sample (train.jsonl, test.jsonl) from the dataset.

    python examples/clinc150/make.py [--source /work/shared/data/clinc150] [--out examples/clinc150]

Eight banking intents; 25 training examples each from CLINC150's train split and 10 test examples
each from its test split, picked with a fixed seed. Each example is a chat: a system prompt listing
the allowed labels, the user's query, and the intent label as the assistant's answer. Only this
script reads the source data; graftlm itself uses the generated files.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

INTENTS = ["balance", "transfer", "freeze_account", "pin_change", "pay_bill", "interest_rate",
           "report_fraud", "transactions"]
TRAIN_PER_INTENT, TEST_PER_INTENT, SEED = 25, 10, 150
SYSTEM = ("You classify banking customer requests. Answer with exactly one intent label from this "
          "list and nothing else: " + ", ".join(INTENTS) + ".")


def sample(rows: list, per_intent: int, rng: random.Random) -> list[tuple[str, str]]:
    """per_intent queries of each intent, interleaved by intent so every prefix is balanced."""
    by_intent = {intent: [text for text, label in rows if label == intent] for intent in INTENTS}
    picked = {intent: rng.sample(texts, per_intent) for intent, texts in by_intent.items()}
    return [(picked[intent][i], intent) for i in range(per_intent) for intent in INTENTS]


def write_chat(path: Path, pairs: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for text, intent in pairs:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                        {"role": "assistant", "content": intent}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data/clinc150"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    data = json.loads((args.source / "data_small.json").read_text())
    domains = json.loads((args.source / "domains.json").read_text())
    assert set(INTENTS) <= set(domains["banking"]), "intents must come from the banking domain"
    rng = random.Random(SEED)
    write_chat(args.out / "train.jsonl", sample(data["train"], TRAIN_PER_INTENT, rng))
    write_chat(args.out / "test.jsonl", sample(data["test"], TEST_PER_INTENT, rng))
    shutil.copyfile(args.source / "LICENSE", args.out / "LICENSE")
    print(f"wrote {len(INTENTS) * TRAIN_PER_INTENT} train and {len(INTENTS) * TEST_PER_INTENT} test examples to {args.out}")


if __name__ == "__main__":
    main()
