"""Prompt strategies for the ladder: few-shot examples trimmed to fit (RAG prompts: graftlm.rag.generate)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from graftlm.errors import GraftError


def load_examples(path: str | Path, max_examples: int | None = None) -> list[dict]:
    """Eval/train JSONL → [{"id", "messages" (prompt, ending with the user turn), "reference"}].

    Chat lines end with the expected assistant message; {"prompt","completion"} lines become one user turn.
    """
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "messages" in obj:
                msgs = obj["messages"]
                if not msgs or msgs[-1].get("role") != "assistant":
                    raise GraftError(f"{path} line {n}: the last message must be the expected assistant answer",
                                     param="messages")
                prompt, ref = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]], msgs[-1]["content"]
            elif "prompt" in obj and "completion" in obj:
                prompt, ref = [{"role": "user", "content": obj["prompt"]}], obj["completion"]
            else:
                raise GraftError(f"{path} line {n}: expected \"messages\" or \"prompt\"+\"completion\"", param="line")
            out.append({"id": obj.get("id", n), "messages": prompt, "reference": ref,
                        **({"source": obj["source"]} if "source" in obj else {})})
            if max_examples and len(out) >= max_examples:
                break
    return out


def question(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def with_shots(messages: list[dict], shots: list[dict]) -> list[dict]:
    """Insert (user, assistant) demonstration turns after any system prompt."""
    head = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    demo = [t for s in shots for t in ({"role": "user", "content": question(s["messages"])},
                                      {"role": "assistant", "content": s["reference"]})]
    return head + demo + rest


def fit(build, items: list, count_tokens, budget: int) -> list[dict]:
    """The prompt ``build(items[:k])`` with the largest k whose token count fits ``budget``."""
    for k in range(len(items), -1, -1):
        msgs = build(items[:k])
        if k == 0 or count_tokens(msgs) <= budget:
            return msgs
    return build([])


class ExampleIndex:
    """Nearest training examples by embedding similarity of the user turn (or random, seeded)."""

    def __init__(self, examples: list[dict], embedding_model: str | None = None):
        from graftlm.rag.embeddings import embed

        self.examples, self.model = examples, embedding_model
        self.vectors = embed([question(e["messages"]) for e in examples], embedding_model) if examples else None

    def nearest(self, queries: list[str], k: int) -> list[list[dict]]:
        from graftlm.rag.embeddings import embed

        if not self.examples or k <= 0:
            return [[] for _ in queries]
        sims = embed(queries, self.model) @ self.vectors.T
        return [[self.examples[j] for j in row.argsort()[::-1][:k]] for row in sims]

    def random(self, n: int, k: int, seed: int = 0) -> list[list[dict]]:
        rng = random.Random(seed)
        return [rng.sample(self.examples, min(k, len(self.examples))) for _ in range(n)]
