"""How retrieved passages become an answer: stuff, RAG-Sequence, RAG-Token, iterative.

Every mode takes a Target (engine + adapter) and prompts that are already token ids; graftlm.rag.generate
builds the prompts and the citations. Notation follows Lewis et al. 2020: p(d) is the retrieval
probability of passage d (a temperature-scaled softmax over the retrieval scores min-max normalized to
[0, 1], see ``retrieval_logprobs``), p(y | d) the generator's probability.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from graftlm.serve.sampler import SamplingParams

RAG_MODES = ("stuff", "sequence", "token", "iterative")
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    details: dict = field(default_factory=dict)  # per-mode scores, returned under "rag" in the response


RETRIEVAL_TEMPERATURE = 0.5


def normalized_scores(scores: list[float]) -> torch.Tensor:
    """Scores min-max scaled to [0, 1] (best 1, worst 0; all equal -> all 0).

    Retrieval scores come on very different scales: RRF ~1/60 (a raw softmax would be uniform), cosine in
    [-1, 1], BM25 unbounded (a raw softmax would put all weight on one passage)."""
    s = torch.tensor(scores, dtype=torch.float64)
    spread = s.max() - s.min() if len(s) else s.new_zeros(())
    return (s - s.min()) / spread if spread > 0 else torch.zeros_like(s)


def retrieval_logprobs(scores: list[float], temperature: float = RETRIEVAL_TEMPERATURE) -> list[float]:
    """log p(d) = log softmax(normalized score / temperature): at 0.5 the best passage weighs e^2 ≈ 7.4x
    the worst, whatever the scorer's scale."""
    return torch.log_softmax(normalized_scores(scores) / temperature, dim=0).tolist()


# stuff ---------------------------------------------------------------------------------------------

def stuff(target, prompt_ids: list[int], params: SamplingParams) -> Answer:
    out = target.engine.generate([(prompt_ids, params, target.adapter)])[0]
    return Answer(out.text, out.finish_reason or "stop", out.prompt_tokens, out.completion_tokens)


# RAG-Sequence --------------------------------------------------------------------------------------

def sequence(target, prompts: list[list[int]], doc_logprobs: list[float], params: SamplingParams) -> Answer:
    """One answer per passage (one batch), scored log p(d) + Σ_t log p(y_t | d, y_<t).

    "Fast decoding": an answer's marginal Σ_d p(d) p(y | d) counts only the passages whose own
    decoding produced it (identical texts pool their probability); the best marginal wins.
    """
    params = SamplingParams(**{**params.__dict__, "logprobs": 0})
    outs = target.engine.generate([(p, params, target.adapter) for p in prompts])
    candidates, marginal = [], {}
    for d, (out, lp_d) in enumerate(zip(outs, doc_logprobs)):
        answer_lp = sum(item.logprob for item in out.logprobs if item is not None)
        candidates.append({"passage": d + 1, "text": out.text, "retrieval_logprob": lp_d,
                           "answer_logprob": answer_lp, "score": lp_d + answer_lp})
        marginal[out.text] = _logaddexp(marginal.get(out.text, -math.inf), lp_d + answer_lp)
    best_text = max(marginal, key=marginal.get)
    chosen = next(d for d, c in enumerate(candidates) if c["text"] == best_text)
    out = outs[chosen]
    return Answer(out.text, out.finish_reason or "stop", sum(o.prompt_tokens for o in outs),
                  sum(o.completion_tokens for o in outs),
                  {"candidates": candidates, "chosen": chosen, "marginal_logprob": marginal[best_text]})


def _logaddexp(a: float, b: float) -> float:
    return b if a == -math.inf else max(a, b) + math.log1p(math.exp(-abs(a - b)))


# RAG-Token -----------------------------------------------------------------------------------------

def mixture_logprobs(logits: torch.Tensor, doc_logprobs: list[float]) -> torch.Tensor:
    """log Σ_d p(d) p(y | d): logits [k, vocab] (one row per passage) -> [vocab]."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return torch.logsumexp(lp + torch.tensor(doc_logprobs, dtype=torch.float64)[:, None], dim=0)


def token(target, prompts: list[list[int]], doc_logprobs: list[float], params: SamplingParams) -> Answer:
    """Each step mixes the k passages' next-token distributions (one engine.logits batch, k rows)."""
    engine, tokenizer = target.engine, target.engine.tokenizer
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    out_ids: list[int] = []
    total_lp, finish, text = 0.0, "length", ""
    prompt_tokens = 0
    for _ in range(params.max_tokens):
        if max(len(p) for p in prompts) + len(out_ids) >= engine.max_seq_len:
            break
        rows = [(p + out_ids, target.adapter) for p in prompts]
        prompt_tokens += sum(len(p) for p, _ in rows)
        mix = mixture_logprobs(engine.logits(rows).float().cpu(), doc_logprobs)
        if params.temperature > 0:
            next_id = int(torch.multinomial(torch.softmax(mix / params.temperature, -1), 1, generator=generator))
        else:
            next_id = int(mix.argmax())
        total_lp += float(mix[next_id])
        if next_id in engine.eos_ids and not params.ignore_eos:
            finish = "stop"
            break
        out_ids.append(next_id)
        text = tokenizer.decode(out_ids, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
            break
    return Answer(text, finish, prompt_tokens, len(out_ids),
                  {"mixture_logprob": total_lp, "retrieval_logprobs": doc_logprobs})


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


# iterative -----------------------------------------------------------------------------------------

def iterative(target, build_prompt: Callable[[str], list[int]], params: SamplingParams, *,
              step_tokens: int = 48, max_rounds: int = 8) -> Answer:
    """Generate a sentence, retrieve again with question + answer so far, continue.

    ``build_prompt(answer_so_far)`` retrieves (the question with the answer so far appended), renders the passages seen so far and returns prompt ids that end with the answer
    so far as the start of the assistant turn.
    """
    tokenizer = target.engine.tokenizer
    text, finish, prompt_tokens, completion_tokens, rounds = "", "length", 0, 0, []
    for _ in range(max_rounds):
        left = params.max_tokens - completion_tokens
        if left < 1:
            break
        prompt = build_prompt(text)
        step = SamplingParams(**{**params.__dict__, "max_tokens": min(step_tokens, left),
                                 "logprobs": None})
        step.max_tokens = max(1, min(step.max_tokens, target.engine.max_seq_len - len(prompt) - 1))
        out = target.engine.generate([(prompt, step, target.adapter)])[0]
        prompt_tokens += out.prompt_tokens
        piece, done = out.text, out.finish_reason == "stop"
        end = _SENTENCE_END.search(piece)
        if end and not done and end.end() < len(piece.rstrip()):
            piece = piece[:end.end()]
        if piece != out.text:  # cut at a sentence end: count the tokens kept (re-tokenizing may differ)
            used = min(out.completion_tokens, len(tokenizer(piece, add_special_tokens=False)["input_ids"]))
        else:
            used = out.completion_tokens
        completion_tokens += used
        text += piece
        rounds.append(piece)
        if done or not piece:
            finish = "stop"
            break
    return Answer(text, finish, prompt_tokens, completion_tokens, {"rounds": len(rounds), "parts": rounds})
