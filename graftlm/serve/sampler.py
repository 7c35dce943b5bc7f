"""Sampling parameters and the sampler: greedy rows in one argmax, others per row with their own generator."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from graftlm.errors import GraftError

GREEDY_BELOW = 1e-5  # temperatures below this sample the argmax (p(best) rounds to 1 for any real logits gap)
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed takes


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
    presence_penalty: float = 0.0  # OpenAI's: minus this from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often the token was generated
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    grammar: object | None = None  # a compiled grammar (serve.grammar): every token must keep the text valid

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [(self.max_tokens >= 1, "max_tokens", "must be >= 1"),
                  (math.isfinite(self.temperature) and self.temperature >= 0, "temperature",
                   "must be a finite number >= 0"),
                  (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
                  (self.top_k >= 0, "top_k", "must be >= 0"),
                  (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "must be between 0 and 20"),
                  (all(self.stop), "stop", "stop strings must be non-empty"),
                  (self.seed is None or SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], "seed",
                   f"must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}"),
                  (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be between -2 and 2"),
                  (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be between -2 and 2"),
                  (all(-100 <= b <= 100 for b in self.logit_bias.values()), "logit_bias",
                   "biases must be between -100 and 100")]
        for ok, name, why in checks:
            if not ok:
                raise GraftError(f"{name} {why}", param=name)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


def is_greedy(p: SamplingParams) -> bool:
    """Temperature 0 (or below GREEDY_BELOW, where sampling is argmax in all but name), or top_k 1."""
    return p.temperature < GREEDY_BELOW or p.top_k == 1


def adjusts(p: SamplingParams) -> bool:
    """Whether the row's logits are changed before sampling (penalties, biases)."""
    return bool(p.presence_penalty or p.frequency_penalty or p.logit_bias)


def adjust_logits(logits: torch.Tensor, params: list[SamplingParams], histories: list[list[int]]) -> None:
    """OpenAI's penalties and logit_bias, in place on fp32 logits [B, V]; ``histories`` are the tokens each
    row has generated so far (the prompt is not penalized, as in OpenAI's and vLLM's definition)."""
    vocab = logits.shape[-1]
    for row, (p, history) in enumerate(zip(params, histories)):
        if (p.presence_penalty or p.frequency_penalty) and history:
            counts = torch.bincount(torch.tensor(history, device=logits.device), minlength=vocab)[:vocab]
            counts = counts.to(logits.dtype)
            logits[row] -= counts * p.frequency_penalty + (counts > 0).to(logits.dtype) * p.presence_penalty
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=logits.device)
            logits[row, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device, dtype=logits.dtype)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           raw: torch.Tensor | None = None) -> tuple[list[int], list[TokenLogprob | None]]:
    """Choose one token per row of fp32 logits [B, V] (already penalized, biased and masked by a grammar);
    logprobs are of the model's own distribution, ``raw`` (the logits before those changes) when given."""
    raw = logits if raw is None else raw
    tokens = logits.argmax(dim=-1)
    for row, p in enumerate(params):
        if not is_greedy(p):
            tokens[row] = sample_row(logits[row], p, generators[row])
    chosen = tokens.tolist()
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    logprobs: list[TokenLogprob | None] = [None] * len(params)
    if want:
        lp = torch.log_softmax(raw[want].float(), dim=-1)
        n = max(params[i].logprobs for i in want)
        top_v, top_i = lp.topk(max(n, 1), dim=-1)
        for j, i in enumerate(want):
            k = params[i].logprobs
            logprobs[i] = TokenLogprob(chosen[i], float(lp[j, chosen[i]]),
                                       list(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist())))
    return chosen, logprobs


def sample_row(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Sample one token from one row of logits [V], safe for every temperature/top_p/top_k the params admit.

    In float64 and relative to the row's maximum, so dividing by a tiny temperature gives 0 for the best
    token and -inf (never nan) for the rest; the best token always survives top-k and top-p, so the
    distribution handed to multinomial is never empty or nan. A row whose logits are not finite falls
    back to its argmax.
    """
    x = logits.double().nan_to_num(nan=-math.inf)  # a nan logit is never chosen (argmax would pick it)
    best = int(x.argmax())
    if not torch.isfinite(x[best]):  # +inf: that token; every logit -inf or nan: nothing better to do
        return torch.tensor(best)
    x = (x - x[best]) / p.temperature
    if p.top_k and p.top_k < x.numel():
        kth = x.topk(p.top_k).values[-1]
        x = x.masked_fill(x < kth, -math.inf)
    if p.top_p < 1:
        sorted_x, order = x.sort(descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs >= p.top_p  # keep the smallest prefix reaching top_p
        drop[0] = False  # the best token, even when top_p is below every probability
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), -math.inf)
    probs = x.softmax(-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        return torch.tensor(best)
    return torch.multinomial(probs, 1, generator=generator)[0]
