"""The serving runtime inside `graft serve`: one engine per hosting cluster (one copy of the base
weights), every active endpoint's adapter registered on it by name, requests routed by model name.

`model` in a request may be an endpoint name or id, a custom model id, or a base model id. Requests
that name a model directly share one engine per base model: a hosting cluster's engine when one runs,
and a cluster adopts the per-base engine rather than load its base weights a second time. A
full-weights (vanilla) custom model gets an engine of its own, since it has no base to share. Deleting
a cluster stops its engine; an engine whose loop failed is replaced by a fresh one on the next request.
A hosting cluster's units are replicas (GRAFT_REPLICAS=process, the default): U engine processes
(serve.remote.ReplicaSet), one per GPU where there are GPUs, on CPU each with cores / U threads (or
GRAFT_THREADS_PER_UNIT), requests routed by adapter affinity; PATCH unit_count adds or drains replicas. With
GRAFT_REPLICAS=inproc the cluster's engine is a thread in this process stepping on units × threads per unit.
Engines for direct model requests (no cluster) are threads in this process either way.
Endpoint changes reach this runtime through the store's listeners when made in this process, and through a
poll of the store (GRAFT_ENDPOINT_POLL_S) when another API process on the same database made them.
Deactivating an endpoint lets its running requests finish for GRAFT_DEACTIVATE_GRACE_S, fails the rest
and frees its adapter before it returns (unless requests naming the custom model directly still use it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from graftlm.clusters import clusters as cluster_store
from graftlm.clusters import endpoints as endpoint_store
from graftlm.clusters.model_files import unreadable_model_files
from graftlm.config import get_settings
from graftlm.errors import GraftError, NotFound
from graftlm.models.catalog import get_model, list_models, unknown_model

MAX_SEQ_LEN = 2048
log = logging.getLogger("graftlm.serve")


@dataclass
class Target:
    """Where a request goes: the engine, the adapter name on it (None = base rows), and for whom."""
    engine: object
    adapter: str | None
    model: dict
    endpoint: dict | None


class HostingRuntime:
    def __init__(self, max_batch_size: int = 32, max_queue: int | None = None):
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue or get_settings().max_queued_requests
        self.engines: dict[str, object] = {}
        self.inflight: dict[str, set] = defaultdict(set)  # endpoint id -> request handles
        self._lock = threading.Lock()
        self._closed = False
        self.warming: list[threading.Thread] = []  # endpoint warm-ups started (see warm)
        self.served: dict[str, dict] = {}  # endpoint id -> endpoint, for those this process has served
        self._stopped = threading.Event()
        endpoint_store.listeners.append(self.on_endpoint_change)
        cluster_store.listeners.append(self.on_cluster_change)
        self._poller = threading.Thread(target=self._poll_store, name="endpoint-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._closed = True
        self._stopped.set()
        for thread in self.warming:
            thread.join(timeout=60)
        if self.on_endpoint_change in endpoint_store.listeners:
            endpoint_store.listeners.remove(self.on_endpoint_change)
        if self.on_cluster_change in cluster_store.listeners:
            cluster_store.listeners.remove(self.on_cluster_change)
        with self._lock:
            engines, self.engines = list(self.engines.values()), {}
        for engine in engines:
            engine.stop()

    def engine(self, key: str, model_path: str, context_length: int | None, base_id: str | None = None):
        """The running engine for `key`, started on first use (loads the weights once).

        A cluster's engine adopts the engine already serving its base model directly (`base:<id>`), so
        the base weights are never loaded twice for one cluster.
        """
        threads = dtype = cluster = None
        if key.startswith("cluster:"):
            cluster = cluster_store.get_cluster(key.removeprefix("cluster:"))
            threads = cluster_threads(cluster["unit_count"])
            dtype = "float32" if cluster.get("deterministic") else None
        replicas = cluster is not None and get_settings().replicas == "process"
        with self._lock:
            engine = self.engines.get(key)
            if engine is None and base_id is not None and key.startswith("cluster:") and not replicas:
                shared = self.engines.get(f"base:{base_id}")
                if shared is not None and (dtype is None or str(shared.dtype) == f"torch.{dtype}"):
                    engine = self.engines[key] = self.engines.pop(f"base:{base_id}")
            if engine is not None and engine.error is not None:
                self._retire_failed(key, engine)
                engine = None
            if engine is None:
                if replicas:
                    engine = self._start_replicas(model_path, context_length, dtype, key, cluster["unit_count"])
                else:
                    engine = self._start_engine(model_path, context_length, dtype, key)
                self.engines[key] = engine
            if threads is not None and not replicas:
                engine.threads = threads
            return engine

    def _start_replicas(self, model_path: str, context_length: int | None, dtype: str | None, key: str,
                        units: int):
        from graftlm.serve.remote import ReplicaSet

        log.info("starting %d serving replica(s) for %s from %s ...", units, key, model_path)
        started = time.perf_counter()
        replicas = ReplicaSet(model_path, units=units, dtype=dtype, max_batch_size=self.max_batch_size,
                              max_queue=self.max_queue, max_seq_len=min(context_length or MAX_SEQ_LEN, MAX_SEQ_LEN),
                              kv_cache_bytes=get_settings().kv_cache_bytes, threads=replica_threads(units),
                              name=key, devices=replica_devices(), hang_s=get_settings().replica_hang_s,
                              ray_address=os.environ.get("GRAFT_RAY_ADDRESS") or None)
        log.info("%d serving replica(s) for %s up in %.2f s (%s, %s)", units, key, time.perf_counter() - started,
                 replicas.dtype, replicas.device)
        return replicas

    def _start_engine(self, model_path: str, context_length: int | None, dtype: str | None = None,
                      key: str = ""):
        from graftlm.serve.engine import Engine

        log.info("loading serving engine %s from %s ...", key, model_path)
        started = time.perf_counter()
        engine = Engine(model_path, dtype=dtype, max_batch_size=self.max_batch_size, max_queue=self.max_queue,
                        max_seq_len=min(context_length or MAX_SEQ_LEN, MAX_SEQ_LEN),
                        kv_cache_bytes=get_settings().kv_cache_bytes)
        engine.start()
        log.info("serving engine %s loaded in %.2f s (%s, %s)", key, time.perf_counter() - started,
                 str(engine.dtype).removeprefix("torch."), engine.device)
        return engine

    def _retire_failed(self, key: str, engine) -> None:
        """Drop an engine whose loop died (its requests already failed); the caller starts a fresh one."""
        log.warning("serving engine %s failed (%s: %s); starting a fresh one", key, type(engine.error).__name__,
                    engine.error)
        del self.engines[key]
        engine.stop()

    def resolve(self, name: str) -> Target:
        endpoint = endpoint_store.find_endpoint(name)
        if endpoint is not None:
            endpoint_store.require_active(endpoint)
            self.served[endpoint["id"]] = endpoint
            model = get_model(endpoint["model"])
        else:
            model = _get_model_or_endpoint_hint(name)
            endpoint_store.require_directly_servable(model)
        if model["kind"] == "custom" and model["adapter_type"] == "full":
            return Target(self.engine(f"full:{model['id']}", model["path"], model["context_length"]),
                          None, model, endpoint)
        base = get_model(model["parent"]) if model["kind"] == "custom" else model
        key = f"cluster:{endpoint['dedicated_ai_cluster_id']}" if endpoint else self._shared_key(base["id"])
        engine = self.engine(key, base["path"], base["context_length"], base["id"])
        adapter = None
        if model["kind"] == "custom":
            adapter = model["id"]
            if adapter not in engine.adapters.paths:
                self._register(engine, model)
        return Target(engine, adapter, model, endpoint)

    @staticmethod
    def _register(engine, model: dict) -> None:
        try:
            engine.register_adapter(model["id"], model["path"])
        except (GraftError, OSError, ValueError) as e:  # files gone or broken since the model was deployed
            raise unreadable_model_files(model, e, status_code=409) from e

    def _shared_key(self, base_id: str) -> str:
        """A direct model request reuses a hosting cluster's engine of the same base model if one runs
        (else the per-base engine, which the cluster adopts when its first endpoint request comes)."""
        for c in cluster_store.list_clusters("HOSTING"):
            if c["base_model"] == base_id and f"cluster:{c['id']}" in self.engines:
                return f"cluster:{c['id']}"
        return f"base:{base_id}"

    def on_cluster_change(self, cluster: dict, event: str) -> None:
        """Updated: its replicas (or threads) follow unit_count. Deleted: stop the cluster's engine (failing
        anything still queued on it) and free its weights."""
        if event == "updated":
            engine = self.engines.get(f"cluster:{cluster['id']}")
            if hasattr(engine, "resize"):
                engine.resize(cluster["unit_count"], threads=replica_threads(cluster["unit_count"]))
            elif engine is not None:
                engine.threads = cluster_threads(cluster["unit_count"])
            return
        if event != "deleted":
            return
        with self._lock:
            engine = self.engines.pop(f"cluster:{cluster['id']}", None)
        if engine is not None:
            engine.stop()

    def track(self, target: Target, handle) -> None:
        if target.endpoint:
            self.inflight[target.endpoint["id"]].add(handle)

    def untrack(self, target: Target, handle) -> None:
        if target.endpoint:
            self.inflight[target.endpoint["id"]].discard(handle)

    def warm(self, endpoint: dict) -> None:
        """Load the endpoint's engine and adapter now, so its first request does not pay for them (logged with
        the time it took). Runs on a background thread from on_endpoint_change; failures are logged, and the
        first request reports them as it would have anyway."""
        if self._closed:
            return
        started = time.perf_counter()
        try:
            target = self.resolve(endpoint["id"])
            if target.adapter is not None:
                target.engine.adapters.load_now(target.adapter)
        except Exception as e:  # noqa: BLE001 - warming is best effort; the first request reports the error
            log.warning("warming endpoint %s failed: %s: %s", endpoint["name"], type(e).__name__, e)
            return
        log.info("endpoint %s (%s) warm in %.2f s", endpoint["name"], endpoint["model"], time.perf_counter() - started)

    def on_endpoint_change(self, endpoint: dict, event: str) -> None:
        """Activated (created or reactivated): warm it in the background. Deactivated or deleted: stop serving
        it before returning. Updated: free adapters no endpoint of the cluster serves any more (rows running
        with them finish first)."""
        if event == "activated" and get_settings().warm_endpoints:
            thread = threading.Thread(target=self.warm, args=(endpoint,), name=f"warm-{endpoint['id']}", daemon=True)
            self.warming.append(thread)
            thread.start()
        if event in ("deactivated", "deleted"):
            self.served.pop(endpoint["id"], None)
            self._stop_serving(endpoint, event)
        elif event == "updated":
            engine = self.engines.get(f"cluster:{endpoint['dedicated_ai_cluster_id']}")
            for name in self._unserved_adapters(engine, endpoint):
                engine.unregister_adapter(name)

    def _poll_store(self) -> None:
        """Another API process on this database may deactivate or delete an endpoint this one serves: read
        the store every GRAFT_ENDPOINT_POLL_S and stop serving those as if the change had been made here."""
        while not self._stopped.wait(get_settings().endpoint_poll_s):
            for endpoint_id, seen in list(self.served.items()):
                try:
                    now = endpoint_store.find_endpoint(endpoint_id)
                except Exception as e:  # noqa: BLE001 - the store may be briefly unreachable; next poll
                    log.warning("endpoint poll failed: %s: %s", type(e).__name__, e)
                    break
                if now is not None and now["lifecycle_state"] == "ACTIVE":
                    continue
                if self.served.pop(endpoint_id, None) is not None:
                    event = "deleted" if now is None or now["lifecycle_state"] == "DELETED" else "deactivated"
                    log.info("endpoint %s was %s by another process; no longer serving it", seen["name"], event)
                    self._stop_serving(now or seen, event)

    def _stop_serving(self, endpoint: dict, event: str) -> None:
        """Let the endpoint's requests finish within the grace period, fail the rest, free its adapter."""
        grace = get_settings().deactivate_grace_s
        handles = list(self.inflight.pop(endpoint["id"], ()))
        wait_for_handles(handles, grace)
        engine = self.engines.get(f"cluster:{endpoint['dedicated_ai_cluster_id']}")
        if engine is None:
            return
        error = endpoint_store.EndpointInactive(
            f"endpoint {endpoint['name']} was {event} while this request ran, and it did not finish within the "
            f"{grace:g} s grace period", param="model", code="endpoint_inactive")
        engine.fail_requests(handles, error)
        for name in self._unserved_adapters(engine, endpoint):
            # requests that name the custom model directly, not through an endpoint, keep running
            engine.unregister_adapter_if_unused(name)

    @staticmethod
    def _unserved_adapters(engine, endpoint: dict) -> list[str]:
        """Adapters registered on the cluster's engine that no ACTIVE endpoint of the cluster serves."""
        if engine is None:
            return []
        served = {e["model"] for e in endpoint_store.list_endpoints(endpoint["dedicated_ai_cluster_id"])
                  if e["lifecycle_state"] == "ACTIVE"}
        return [name for name in list(engine.adapters.paths) if name not in served]


def _get_model_or_endpoint_hint(name: str) -> dict:
    """get_model, whose not-found error also names the endpoints (a typo'd endpoint name is the usual case)."""
    try:
        return get_model(name)
    except NotFound:
        models = [(m["id"], m["kind"]) for m in list_models()]
        endpoints = [e["name"] for e in endpoint_store.list_endpoints()]
        raise unknown_model(name, models, endpoints) from None


def cluster_threads(unit_count: int) -> int:
    """CPU threads a hosting cluster of ``unit_count`` units runs its engine on."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, unit_count * (get_settings().threads_per_unit or cores)))


def replica_threads(units: int) -> int | None:
    """CPU threads each of a cluster's ``units`` replicas steps on (None on a GPU: torch's default)."""
    if replica_devices():
        return None
    return max(1, cluster_threads(units) // units)


def replica_devices() -> list[str] | None:
    """One GPU per replica (round robin) where there are GPUs and serving is not pinned to the CPU."""
    import torch

    if get_settings().device == "cpu" or not torch.cuda.is_available():
        return None
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def wait_for_handles(handles: list, timeout: float) -> None:
    """Wait until every request is done or ``timeout`` seconds have passed, whichever comes first."""
    deadline = time.monotonic() + timeout
    for handle in handles:
        with contextlib.suppress(Exception):  # a request's own error is its caller's to report
            handle.result(timeout=max(0.0, deadline - time.monotonic()))


_runtime: HostingRuntime | None = None


def get_runtime() -> HostingRuntime:
    global _runtime
    if _runtime is None:
        _runtime = HostingRuntime()
    return _runtime


def current_runtime() -> HostingRuntime | None:
    """The runtime if one was started (metrics read it without starting one)."""
    return _runtime


def shutdown_runtime() -> None:
    global _runtime
    if _runtime is not None:
        _runtime.close()
        _runtime = None
