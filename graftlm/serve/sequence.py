"""One request's state inside the engine: its tokens, text, finish state and KV blocks.

A sequence records how it ended (``final``: its last delta, or the error) but tells nobody: the engine
publishes its deltas to the caller's handle and retires it in one place (``Engine._retire``).
"""

from __future__ import annotations

import itertools
import time

import torch

from .detokenizer import Detokenizer
from .request import Delta, Output, RequestHandle
from .sampler import SamplingParams, TokenLogprob

_ids = itertools.count()


class Sequence:
    def __init__(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None, tokenizer,
                 generator: torch.Generator | None):
        self.request_id = next(_ids)
        self.prompt_ids = list(prompt_ids)
        self.params, self.adapter, self.generator = params, adapter, generator
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob | None] = []
        self.slot = 0  # adapter slot while running
        self.kv_tokens = len(self.prompt_ids) + params.max_tokens  # KV slots reserved; the engine caps it
        self.blocks: list[int] = []  # KV cache blocks while running
        self.prefix_hashes: list[int] = []  # of the prompt's reusable full blocks (prefix caching on)
        self.cached_tokens = 0  # leading prompt tokens whose K/V came from the prefix cache
        self.finish_reason: str | None = None
        self.cancelled = False
        self.arrival_s = time.perf_counter()
        self.token_times_s: list[float] = []
        self.text = ""
        self._emitted = 0
        self._holdback = max((len(s) for s in params.stop), default=1) - 1
        self._detok = Detokenizer(tokenizer, self.prompt_ids)
        self.handle: RequestHandle | None = None  # the caller's; only the engine writes to it
        self.pending: Delta | None = None  # the delta of the last step, until the engine publishes it
        self.final: Delta | BaseException | None = None  # how it ended: the last delta or the error
        self.retired = False
        self.matcher = params.grammar.matcher() if params.grammar is not None else None  # per-row grammar state

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1]

    @property
    def ended(self) -> bool:
        return self.final is not None

    def append(self, token: int, logprob: TokenLogprob | None, is_eos: bool, max_len: int) -> None:
        """Record a sampled token and update text and finish state; the step's delta is ``pending``, or
        ``final`` when the token ended the sequence."""
        self.output_ids.append(token)
        self.logprobs.append(logprob)
        self.token_times_s.append(time.perf_counter())
        p = self.params
        if is_eos:
            self.finish_reason = "stop"
        else:
            before = len(self.text)
            self.text += self._detok.add(token)
            for s in p.stop:
                at = self.text.find(s, max(0, before - len(s) + 1))
                if at >= 0:
                    self.text, self.finish_reason = self.text[:at], "stop"
        if self.finish_reason is None and (len(self.output_ids) >= p.max_tokens or len(self) >= max_len):
            self.finish_reason = "length"
        hit_stop_string = self.finish_reason == "stop" and not is_eos
        if self.finish_reason and not hit_stop_string:
            self.text += self._detok.flush()
        end = len(self.text) if self.finish_reason else len(self.text) - self._holdback
        delta, self._emitted = self.text[self._emitted:max(end, self._emitted)], max(end, self._emitted)
        delta = Delta(delta, [token], [logprob], self.finish_reason)
        if self.finish_reason:
            self.final = delta
        else:
            self.pending = delta

    def end(self, reason: str) -> None:
        """End without a new token (cancelled): the last delta carries the text held back so far."""
        if self.final is None:
            self.finish_reason = reason
            self.final = Delta(self.text[self._emitted:], [], [], reason)
            self._emitted = len(self.text)

    def fail(self, error: BaseException) -> None:
        """End with ``error``, unless the sequence already ended (a complete answer is kept)."""
        if self.final is None:
            self.finish_reason, self.final = "error", error

    def output(self) -> Output:
        return Output(self.request_id, self.adapter, self.prompt_ids, list(self.output_ids), self.text,
                      self.finish_reason, list(self.logprobs), self.arrival_s, list(self.token_times_s),
                      self.cached_tokens)
