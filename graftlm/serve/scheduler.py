"""Who runs next: a bounded FIFO of waiting requests, a list of running ones (index = batch row).

Between decode steps, ended sequences leave (the engine retires them; ``remove`` frees their KV blocks) and
waiting ones join, as long as there is a free row, the KV cache has room for their prompt + max_tokens, their adapter
is resident and the step's prefill token budget allows. A request that does not fit the KV cache yet
holds back the ones behind it, so long requests are not starved by short ones.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from graftlm.errors import Conflict, GraftError

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
    def __init__(self, cache: KVCache, adapters: AdapterCache, max_batch: int, max_queue: int,
                 max_prefill_tokens: int):
        self.cache, self.adapters = cache, adapters
        self.max_batch, self.max_queue, self.max_prefill_tokens = max_batch, max_queue, max_prefill_tokens
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

    def admit(self) -> tuple[list[Sequence], list[Sequence]]:
        """Move waiting sequences into the batch (FIFO, skipping those whose adapter is still loading).

        Returns (admitted, failed): a sequence whose adapter could not be loaded has failed and leaves the
        queue; the engine retires it. A cancelled one stays until the engine retires it at the next step."""
        new, failed, budget, keep, kv_full = [], [], self.max_prefill_tokens, deque(), False
        prefilling: set[int] = set()  # first block hashes of the prompts admitted in this step
        with self._lock:
            while self.waiting:
                seq = self.waiting.popleft()
                if seq.cancelled:
                    keep.append(seq)
                    continue
                if seq.prefix_hashes and seq.prefix_hashes[0] in prefilling and \
                        seq.prefix_hashes[0] not in self.cache.cached:
                    keep.append(seq)  # its prefix is being prefilled this step: next step it is cached
                    continue
                kv_full = kv_full or not self.cache.can_allocate(seq.kv_tokens, seq.prefix_hashes)
                rows_full = len(self.running) + len(new) >= self.max_batch
                to_compute = len(seq.prompt_ids) - self.cache.cached_prefix_tokens(seq.prefix_hashes)
                if kv_full or rows_full or (new and to_compute > budget) or not self._take_adapter(seq):
                    (failed if seq.ended else keep).append(seq)  # (failed: its adapter's load error)
                    continue
                seq.blocks, seq.cached_tokens = self.cache.allocate_prefix(seq.kv_tokens, seq.prefix_hashes)
                budget -= len(seq.prompt_ids) - seq.cached_tokens
                new.append(seq)
                if seq.prefix_hashes:
                    prefilling.add(seq.prefix_hashes[0])
            self.waiting = keep
        self.running.extend(new)
        return new, failed

    def _take_adapter(self, seq: Sequence) -> bool:
        """Acquire the sequence's adapter slot; False while it loads (or when its load failed: seq failed)."""
        if seq.adapter is None:
            return True
        try:
            slot = self.adapters.acquire(seq.adapter)
        except Exception as e:  # noqa: BLE001 - the load error belongs to this request
            seq.fail(adapter_load_error(seq.adapter, e))
            return False
        if slot is None:
            return False
        seq.slot = slot
        return True

    def live(self) -> list[Sequence]:
        """Every running and waiting sequence."""
        with self._lock:
            return self.running + list(self.waiting)

    def remove(self, seqs: list[Sequence]) -> None:
        """Take sequences out of the queue or the batch, giving back their KV blocks and adapter references
        (only ``Engine._retire`` calls this)."""
        gone = set(seqs)
        with self._lock:
            self.waiting = deque(s for s in self.waiting if s not in gone)
        leaving = [s for s in self.running if s in gone]
        self.running = [s for s in self.running if s not in gone]
        for seq in leaving:
            self.cache.free(seq.blocks)
            seq.blocks = []
            if seq.adapter is not None:
                self.adapters.release(seq.adapter)


def adapter_load_error(name: str, error: Exception) -> GraftError:
    """A clear error for a request whose adapter files could not be read (not a bare OSError, not a 500)."""
    if isinstance(error, GraftError):
        return error
    wrapped = Conflict(f"the adapter files of {name} cannot be read ({type(error).__name__}: {error}); "
                       f"restore them or deploy the model again", param="model", code="model_files_unreadable")
    wrapped.__cause__ = error
    return wrapped
