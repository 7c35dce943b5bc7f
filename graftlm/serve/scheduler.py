"""Who runs next: a bounded FIFO of waiting requests, a dense list of running ones (index = cache row).

Between decode steps, finished or cancelled sequences leave (the last row moves into the hole so rows
stay 0..B-1) and waiting ones join, as long as there is a free row, their adapter is resident and the
step's prefill token budget allows.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from graftlm.errors import GraftError

from .adapter_cache import AdapterCache
from .kv_cache import KVCache
from .sequence import Sequence


class QueueFull(GraftError):
    """The engine's waiting queue is full; retry after ``retry_after`` whole seconds (HTTP 429).

    Retry-After is an integer number of seconds (RFC 9110 delay-seconds), so it is rounded up here.
    """
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: float = 1):
        super().__init__(message, code="queue_full")
        self.retry_after = max(1, math.ceil(retry_after))


class Scheduler:
    def __init__(self, cache: KVCache, adapters: AdapterCache, max_queue: int, max_prefill_tokens: int):
        self.cache, self.adapters = cache, adapters
        self.max_queue, self.max_prefill_tokens = max_queue, max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Lock()  # guards `waiting` against submitting threads

    def add(self, seq: Sequence, bounded: bool = True) -> None:
        with self._lock:
            if bounded and len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the engine queue is full ({self.max_queue} requests waiting)")
            self.waiting.append(seq)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free rows (FIFO, skipping those whose adapter is still loading)."""
        new, budget, keep = [], self.max_prefill_tokens, deque()
        with self._lock:
            while self.waiting:
                seq = self.waiting.popleft()
                if seq.cancelled:
                    seq.finish("cancelled")
                    continue
                full = len(self.running) + len(new) >= self.cache.max_batch
                if full or (new and len(seq.prompt_ids) > budget):
                    keep.append(seq)
                    continue
                if seq.adapter is not None:
                    try:
                        slot = self.adapters.acquire(seq.adapter)
                    except Exception as e:  # noqa: BLE001 - the load error belongs to this request
                        seq.fail(e)
                        continue
                    if slot is None:
                        keep.append(seq)
                        continue
                    seq.slot = slot
                budget -= len(seq.prompt_ids)
                new.append(seq)
            self.waiting = keep
        self.running.extend(new)
        return new

    def drain(self) -> list[Sequence]:
        """Remove and return every running and waiting sequence (the engine is going away)."""
        with self._lock:
            running, waiting = list(self.running), list(self.waiting)
            self.running.clear()
            self.waiting.clear()
        for seq in running:
            if seq.adapter is not None:
                self.adapters.release(seq.adapter)
        return running + waiting

    def retire(self, finished: list[Sequence]) -> None:
        """Remove finished rows, highest row first, filling each hole with the current last row."""
        rows = sorted((self.running.index(s) for s in finished), reverse=True)
        for row in rows:
            seq, last = self.running[row], self.running[-1]
            if seq is not last:
                self.cache.move_row(len(self.running) - 1, row, len(last) - 1)
                self.running[row] = last
            self.running.pop()
            if seq.adapter is not None:
                self.adapters.release(seq.adapter)
