"""Adapters by name: registered paths, a bounded pool of resident slots with LRU eviction, and loads
that happen off the engine thread.

Disk → CPU (``read_adapter``) runs in a background thread; CPU → device slot (``AdapterPool.install``)
is a short copy done by the engine thread between steps, so loading never stalls the running batch.
Evicted adapters stay in CPU memory (bounded, LRU) before they are dropped and re-read from disk.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from graftlm.errors import NotFound

from .adapters import AdapterPool, AdapterWeights, read_adapter, read_adapter_config


class AdapterCache:
    def __init__(self, pool: AdapterPool, max_cpu_adapters: int, on_loaded=lambda: None):
        self.pool = pool
        self.max_cpu = max_cpu_adapters
        self.paths: dict[str, Path] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # name -> slot, least recently used first
        self.refs: Counter[str] = Counter()  # running rows per adapter
        self.cpu: OrderedDict[str, AdapterWeights] = OrderedDict()
        self.loading: dict[str, Future] = {}  # at most one load per adapter at a time
        self.free_slots = list(range(pool.slots, 0, -1))
        self._lock = threading.Lock()
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="graft-adapter-load")
        self._on_loaded = on_loaded
        self.loads = 0  # disk reads, for tests and metrics
        self.evictions = 0  # resident adapters dropped from their slot for another (LRU), for metrics

    def register(self, name: str, path: str | Path) -> None:
        read_adapter_config(path, self.pool.shape)  # fail now on an unsupported adapter, not at first request
        with self._lock:
            if self.paths.get(name) not in (None, Path(path)):
                self._drop(name)
            self.paths[name] = Path(path)

    def unregister(self, name: str) -> None:
        with self._lock:
            self.paths.pop(name, None)
            self._drop(name)

    def _drop(self, name: str) -> None:
        self.cpu.pop(name, None)
        if name in self.resident and not self.refs[name]:
            self.pool.clear(self.resident[name])
            self.free_slots.append(self.resident.pop(name))

    def check(self, name: str) -> None:
        with self._lock:
            if name not in self.paths:
                raise NotFound(f"adapter {name!r} is not registered", param="model")

    # --- engine thread only below ---------------------------------------------------------------

    def acquire(self, name: str) -> int | None:
        """The slot of a resident adapter (taking a reference), or None while it is still loading.

        Raises the load error (or NotFound) when the adapter cannot be served.
        """
        with self._lock:
            if name not in self.paths:
                raise NotFound(f"adapter {name!r} is not registered", param="model")
            if name in self.cpu:
                self.cpu.move_to_end(name)  # CPU tier is LRU too: a used adapter is evicted last
            if name in self.resident:
                self.resident.move_to_end(name)
                self.refs[name] += 1
                return self.resident[name]
            weights = self.cpu.get(name)
            if weights is None:
                self._start_load(name)
                return None
            slot = self._free_slot()
            if slot is None:
                return None  # every slot is used by running rows; wait for one to finish
            self.pool.install(slot, weights)
            self.resident[name] = slot
            self.refs[name] += 1
            return slot

    def release(self, name: str) -> None:
        with self._lock:
            self.refs[name] -= 1
            if name not in self.paths and not self.refs[name]:
                self._drop(name)  # unregistered while running

    def _free_slot(self) -> int | None:
        if self.free_slots:
            return self.free_slots.pop()
        for name, slot in self.resident.items():  # least recently used first
            if not self.refs[name]:
                del self.resident[name]
                self.pool.clear(slot)
                self.evictions += 1
                return slot
        return None

    def _start_load(self, name: str) -> None:
        fut = self.loading.get(name)
        if fut is not None:
            if fut.done() and fut.exception() is not None:
                del self.loading[name]
                raise fut.exception()
            return
        path = self.paths[name]
        self.loading[name] = self._loader.submit(self._load, name, path)

    def _load(self, name: str, path: Path) -> None:
        try:
            weights = read_adapter(path, self.pool.shape)
        finally:
            self._on_loaded()  # wake the engine either way: requests wait on this load or fail with it
        with self._lock:
            self.loads += 1
            if self.paths.get(name) == path:
                self.cpu[name] = weights
                self.cpu.move_to_end(name)
                while len(self.cpu) > self.max_cpu:
                    self.cpu.popitem(last=False)
            self.loading.pop(name, None)
        self._on_loaded()

    def load_now(self, name: str) -> None:
        """Block until the adapter is in CPU memory (for synchronous callers such as ``Engine.logits``)."""
        with self._lock:
            if name not in self.paths:
                raise NotFound(f"adapter {name!r} is not registered", param="model")
            if name in self.resident or name in self.cpu:
                return
            self._start_load(name)
            fut = self.loading.get(name)
        if fut is not None:
            fut.result()

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
