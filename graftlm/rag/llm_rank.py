"""An LLM as a pointwise ranker: p(yes) for "is this passage relevant?", read off one engine.logits batch.

``search(..., rerank=True, ranker="llm:<model>")`` uses it for any hosted model name (base, custom, endpoint).
"""

from __future__ import annotations

from typing import Callable

import torch

from graftlm.data.render import render_prompt

PROMPT = ("Is this passage relevant to the question? Answer yes or no.\n\n"
          "Question: {query}\n\nPassage: {text}")
BATCH = 8
MAX_PASSAGE_TOKENS = 384


def answer_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """First token of each spelling ("yes", "Yes", " yes", ...), deduplicated."""
    ids = []
    for w in words:
        for variant in (w, w.capitalize(), " " + w, " " + w.capitalize()):
            tok = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if tok and tok[0] not in ids:
                ids.append(tok[0])
    return ids


def yes_probabilities(target, prompts: list[str], *, batch: int = BATCH) -> list[float]:
    """p(yes) / (p(yes) + p(no)) after each prompt (as a user turn), all spellings of each pooled."""
    tokenizer = target.engine.tokenizer
    yes, no = answer_token_ids(tokenizer, ("yes",)), answer_token_ids(tokenizer, ("no",))
    out: list[float] = []
    for lo in range(0, len(prompts), batch):
        rows = [(render_prompt(tokenizer, [{"role": "user", "content": p}])[-(target.engine.max_seq_len - 1):],
                 target.adapter) for p in prompts[lo:lo + batch]]
        lp = torch.log_softmax(target.engine.logits(rows).float(), dim=-1)
        p_yes, p_no = torch.logsumexp(lp[:, yes], dim=-1), torch.logsumexp(lp[:, no], dim=-1)
        out += torch.sigmoid(p_yes - p_no).tolist()
    return out


def _clip(tokenizer, text: str) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= MAX_PASSAGE_TOKENS else tokenizer.decode(ids[:MAX_PASSAGE_TOKENS])


def llm_ranker(model: str) -> Callable[[str, list[str]], list[float]]:
    """A ranker score_fn(query, texts) -> p(yes) per passage, batched on the hosted ``model``."""
    from graftlm.clusters.hosting import get_runtime

    def score(query: str, texts: list[str]) -> list[float]:
        target = get_runtime().resolve(model)
        tok = target.engine.tokenizer
        return yes_probabilities(target, [PROMPT.format(query=query, text=_clip(tok, t)) for t in texts])

    score.ranker_name = f"llm:{model}"
    return score

