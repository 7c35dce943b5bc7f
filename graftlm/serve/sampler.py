"""Sampling parameters and the sampler: greedy rows in one argmax, others per row with their own generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from graftlm.errors import GraftError


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: list[str] = field(default_factory=list)  # strings, matched on decoded text, not returned
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: none; 0: the chosen token's; n: also the top n
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [(self.max_tokens >= 1, "max_tokens", "must be >= 1"),
                  (self.temperature >= 0, "temperature", "must be >= 0"),
                  (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
                  (self.top_k >= 0, "top_k", "must be >= 0"),
                  (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "must be between 0 and 20"),
                  (all(self.stop), "stop", "stop strings must be non-empty")]
        for ok, name, why in checks:
            if not ok:
                raise GraftError(f"{name} {why}", param=name)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> tuple[list[int], list[TokenLogprob | None]]:
    """Choose one token per row of fp32 logits [B, V]; logprobs are of the model's own distribution."""
    tokens = logits.argmax(dim=-1)
    for row, p in enumerate(params):
        if p.temperature > 0:
            tokens[row] = _sample_row(logits[row], p, generators[row])
    chosen = tokens.tolist()
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    logprobs: list[TokenLogprob | None] = [None] * len(params)
    if want:
        lp = torch.log_softmax(logits[want], dim=-1)
        n = max(params[i].logprobs for i in want)
        top_v, top_i = lp.topk(max(n, 1), dim=-1)
        for j, i in enumerate(want):
            k = params[i].logprobs
            logprobs[i] = TokenLogprob(chosen[i], float(lp[j, chosen[i]]),
                                       list(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist())))
    return chosen, logprobs


def _sample_row(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.numel():
        kth = logits.topk(p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[0]
