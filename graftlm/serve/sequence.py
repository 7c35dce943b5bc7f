"""One request's state, its incremental detokenizer, and the handle a caller streams from."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field

import torch

from .sampler import SamplingParams, TokenLogprob

_ids = itertools.count()


@dataclass
class Delta:
    """What one engine step added to a request; the last one has finish_reason set."""
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


@dataclass
class Output:
    request_id: int
    adapter: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]  # includes the EOS token when the model stopped on one
    text: str  # EOS and stop strings excluded
    finish_reason: str | None
    logprobs: list[TokenLogprob | None]
    arrival_s: float = 0.0
    token_times_s: list[float] = field(default_factory=list)  # wall clock at each emitted token

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] - self.arrival_s if self.token_times_s else None


class RequestHandle:
    """Thread-safe stream of a request's deltas.

    ``for d in handle`` blocks a thread; ``async for d in handle`` awaits on the caller's event loop (the
    engine thread wakes it with ``call_soon_threadsafe``, no executor thread per request).
    """

    def __init__(self, seq: Sequence, on_cancel):
        self.seq = seq
        self.request_id = seq.request_id
        self._on_cancel = on_cancel
        self._items: list[Delta | BaseException] = []
        self._cond = threading.Condition()
        self._sinks: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    def _push(self, item: Delta | BaseException) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            sinks = list(self._sinks)
        for loop, q in sinks:
            loop.call_soon_threadsafe(q.put_nowait, item)

    @property
    def done(self) -> bool:
        with self._cond:
            return bool(self._items) and _is_last(self._items[-1])

    def cancel(self) -> None:
        """Stop generating and free the request's batch row before the next engine step."""
        self._on_cancel(self.seq)

    def __iter__(self):
        i = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(self._items) > i)
                item = self._items[i]
            i += 1
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason:
                return

    async def __aiter__(self):
        q: asyncio.Queue = asyncio.Queue()
        with self._cond:
            backlog = list(self._items)
            self._sinks.append((asyncio.get_running_loop(), q))
        for item in backlog:
            q.put_nowait(item)
        while True:
            item = await q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason:
                return

    def result(self, timeout: float | None = None) -> Output:
        with self._cond:
            if not self._cond.wait_for(lambda: self._items and _is_last(self._items[-1]), timeout):
                raise TimeoutError(f"request {self.request_id} still running")
            last = self._items[-1]
        if isinstance(last, BaseException):
            raise last
        return self.seq.output()


def _is_last(item) -> bool:
    return isinstance(item, BaseException) or item.finish_reason is not None


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
        self.finish_reason: str | None = None
        self.cancelled = False
        self.arrival_s = time.perf_counter()
        self.token_times_s: list[float] = []
        self.text = ""
        self._emitted = 0
        self._holdback = max((len(s) for s in params.stop), default=1) - 1
        self._detok = Detokenizer(tokenizer, self.prompt_ids)
        self.handle: RequestHandle | None = None
        self.matcher = params.grammar.matcher() if params.grammar is not None else None  # per-row grammar state

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1]

    def append(self, token: int, logprob: TokenLogprob | None, is_eos: bool, max_len: int) -> None:
        """Record a sampled token, update text and finish state, and push a delta to the handle."""
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
        if self.handle:
            self.handle._push(Delta(delta, [token], [logprob], self.finish_reason))

    def finish(self, reason: str) -> None:
        self.finish_reason = reason
        if self.handle:
            self.handle._push(Delta(self.text[self._emitted:], [], [], reason))
        self._emitted = len(self.text)

    def fail(self, error: BaseException) -> None:
        self.finish_reason = "error"
        if self.handle:
            self.handle._push(error)

    def output(self) -> Output:
        return Output(self.request_id, self.adapter, self.prompt_ids, list(self.output_ids), self.text,
                      self.finish_reason, list(self.logprobs), self.arrival_s, list(self.token_times_s))


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character and keeps word-boundary spaces right."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-5:])  # a little prompt context so the first word's leading space is right
        self.prefix, self.read = 0, len(self.ids)

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(prefix_text):]
