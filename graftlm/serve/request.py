"""The caller's side of a request: the deltas it streams, its final output, and the handle it holds.

The engine is the only writer: it pushes a ``Delta`` after each step that added tokens, and closes the handle
once, when the request retires (``Engine._retire``), with the last delta or the error that ended it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Callable

from .sampler import TokenLogprob


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
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

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

    def __init__(self, request_id: int, on_cancel: Callable[[], None]):
        self.request_id = request_id
        self._on_cancel = on_cancel
        self._items: list[Delta | BaseException] = []
        self._output: Output | None = None
        self._cond = threading.Condition()
        self._sinks: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.listener: Callable[[Delta | BaseException], None] | None = None  # a replica forwards each item

    # --- the engine's side ---------------------------------------------------------------------

    def _push(self, item: Delta | BaseException) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
            sinks = list(self._sinks)
        for loop, q in sinks:
            loop.call_soon_threadsafe(q.put_nowait, item)
        if self.listener is not None:
            self.listener(item)

    def _close(self, last: Delta | BaseException, output: Output) -> None:
        """The request retired: ``last`` is its final delta (finish_reason set) or the error that ended it."""
        self._output = output
        self._push(last)

    # --- the caller's side ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        with self._cond:
            return bool(self._items) and _is_last(self._items[-1])

    @property
    def tokens_streamed(self) -> int:
        """Tokens pushed to this handle so far."""
        with self._cond:
            return sum(len(d.token_ids) for d in self._items if isinstance(d, Delta))

    def cancel(self) -> None:
        """Stop generating and free the request's batch row before the next engine step."""
        self._on_cancel()

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
        return self._output


def _is_last(item) -> bool:
    return isinstance(item, BaseException) or item.finish_reason is not None
