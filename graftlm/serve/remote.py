"""Engine replicas seen from the API process: ``ReplicaSet`` is what an ``Engine`` is to its callers.

A hosting cluster of U units runs U replica processes (``serve.replica``), each with its own copy of the base
weights, KV cache, adapter slots and scheduler. The API process keeps HTTP, auth, tokenization (prompts are
sent as token ids; replicas detokenize, as the stop strings need the text) and routing:

- a base-model row goes to the least-loaded replica; a row for adapter X to the least-loaded replica that
  already has X, and only when every holder is overloaded (``overload`` requests in flight, the batch size)
  or none has X is X loaded on another replica (``pick``);
- ``submit`` waits for the replica's ack, so a full queue is still a 429 and a bad request still a 400; a
  replica's full queue sends the request to the next replica before it is a 429;
- a replica whose process ended (kill -9) or whose heartbeat or step loop stalled for ``hang_s`` (hung) is
  killed and replaced; its requests that have streamed nothing yet are sent to another replica, the others
  fail with 503 ``engine_unavailable``;
- ``resize(units)`` adds replicas, or drains the highest ones (no new rows; they stop once their requests
  have finished).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from graftlm.errors import NotFound

from .engine import Engine, EngineUnavailable, eos_token_ids
from .model import read_shape
from .request import RequestHandle
from .scheduler import QueueFull
from .wire import GrammarSpecs, decode_delta, decode_error, decode_output, encode_params, pack, unpack

log = logging.getLogger("graftlm.serve")
START_TIMEOUT_S = 600.0
ACK_TIMEOUT_S = 300.0
MAX_START_FAILURES = 3  # replicas in a row that die before serving: stop replacing them (broken model files)  # a submit that compiles a new grammar on a loaded CPU can take a while


def pick(replicas: list, adapter: str | None, overload: int):
    """The replica a row goes to (see the module doc). Each replica has ``load`` (requests in flight),
    ``adapters`` (the names registered on it) and ``slot``; ties go to fewer adapters, then the lower slot."""
    if not replicas:
        return None

    def order(r):
        return (r.load, len(r.adapters), r.slot)
    if adapter is None:
        return min(replicas, key=order)
    holders = [r for r in replicas if adapter in r.adapters]
    ready = [r for r in holders if r.load < overload]
    if ready:
        return min(ready, key=order)
    others = [r for r in replicas if adapter not in r.adapters]
    if others and (not holders or min(r.load for r in others) < min(r.load for r in holders)):
        return min(others, key=order)
    return min(holders, key=order)


@dataclass
class Record:
    """One request in flight: where it runs, what to resend if its replica dies before any token."""
    handle: RequestHandle
    replica: Replica
    message: list
    adapter: str | None
    acked: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    returned: bool = False  # submit() gave the handle to its caller: a later refusal (on a resend) closes it


class Replica:
    """One replica process and the API side of its two sockets (commands out, events in)."""

    def __init__(self, owner: ReplicaSet, slot: int, threads: int | None):
        import zmq

        self.owner, self.slot, self.threads = owner, slot, threads
        self.state = "starting"  # → ready → (draining) → dead
        self.killed = False  # the watcher killed it (hung, or never started); its death is being awaited
        self.adapters: set[str] = set()
        self.records: dict[int, Record] = {}
        self.stats: dict = {}
        self.info: dict = {}
        self.ready = threading.Event()
        self.started = self.last_beat = time.monotonic()
        self._dir = tempfile.mkdtemp(prefix="graft-rep-")
        ctx = zmq.Context.instance()
        self.commands = ctx.socket(zmq.PUSH)
        self.commands.setsockopt(zmq.LINGER, 0)
        self.events = ctx.socket(zmq.PULL)
        self.events.setsockopt(zmq.LINGER, 0)
        o = owner
        if o.ray_address is None:  # a local process: ipc:// sockets in a private directory
            commands, events = f"ipc://{self._dir}/c", f"ipc://{self._dir}/e"
            self.commands.bind(commands)
            self.events.bind(events)
        else:  # a Ray actor, maybe on another machine: TCP on this node's address
            host = ray_node_ip()
            commands = f"tcp://{host}:{self.commands.bind_to_random_port('tcp://*')}"
            events = f"tcp://{host}:{self.events.bind_to_random_port('tcp://*')}"
        self._send_lock = threading.Lock()
        device = o.devices[slot % len(o.devices)] if o.devices else None
        args = {"model": str(o.model_path), "dtype": o.dtype_arg, "device": device, "threads": threads,
                "max_batch_size": o.max_batch_size, "max_seq_len": o.max_seq_len, "max_queue": o.max_queue,
                "kv_cache_bytes": o.kv_cache_bytes, "commands": commands, "events": events}
        if o.ray_address is not None:
            self.proc = RayReplica(args, o.ray_address, threads, device)
        else:
            env = dict(os.environ)
            if threads and not (device or "").startswith("cuda"):
                env["OMP_NUM_THREADS"] = str(threads)
            self.proc = subprocess.Popen([sys.executable, "-m", "graftlm.serve.replica", json.dumps(args)],
                                         env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._receive, name=f"replica-{slot}-rx", daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        return len(self.records)

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "ready", "draining")

    def send(self, msg) -> None:
        import zmq

        if not self.alive:
            raise EngineUnavailable(f"replica {self.slot} of {self.owner.name} is not running")
        try:
            with self._send_lock:
                self.commands.send(pack(msg), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            raise EngineUnavailable(f"replica {self.slot} of {self.owner.name} does not take requests ({e})") from e

    def _receive(self) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self.events, zmq.POLLIN)
        while self.state != "closed":
            try:
                if not poller.poll(100):
                    continue
                msg = unpack(self.events.recv(zmq.NOBLOCK))
            except zmq.ZMQError:
                if self.state == "closed":
                    return
                continue
            try:
                self._on(msg)
            except Exception:  # noqa: BLE001 - one bad message must not stop this replica's stream
                log.exception("replica %d: message %s failed", self.slot, msg[:1])

    def _on(self, msg: list) -> None:
        op = msg[0]
        self.last_beat = time.monotonic()
        if op == "B":  # one engine step's deltas and closes
            for item in msg[1]:
                self._on(item)
        elif op == "hb":
            self.stats = msg[1]
        elif op == "d":
            rec = self.records.get(msg[1])
            if rec is not None:
                rec.handle._push(decode_delta(msg[2]))
        elif op == "c":
            _, rid, delta, error, output = msg
            rec = self.records.pop(rid, None)
            if rec is not None and not rec.handle.done:
                rec.handle._close(decode_error(error) if error else decode_delta(delta), decode_output(output))
        elif op == "ack":
            rec = self.records.get(msg[1])
            if rec is None:
                return
            if msg[2] is not None:
                rec.error = decode_error(msg[2])
                self.records.pop(msg[1], None)
                if rec.returned and not rec.handle.done:  # a resend after its first replica died was refused
                    rec.handle._close(rec.error, None)
            rec.acked.set()
        elif op == "r":
            self.owner._reply(msg[1], msg[2], msg[3])
        elif op == "ready":
            self.info = msg[1]
            if self.state == "starting":
                self.state = "ready"
            self.ready.set()
            self.owner._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to stop (its requests fail with 503), kill it if it does not, close the sockets."""
        import zmq

        self.state = "stopping"  # the watcher leaves it alone from now on
        if self.proc.poll() is None:
            try:
                with self._send_lock:
                    self.commands.send(pack(["stop"]), zmq.NOBLOCK)
                self.proc.wait(timeout)
            except (zmq.ZMQError, subprocess.TimeoutExpired):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self.close()

    def close(self) -> None:
        self.state = "closed"
        self._thread.join(timeout=2)
        self.commands.close(0)
        self.events.close(0)
        for name in ("c", "e"):
            Path(self._dir, name).unlink(missing_ok=True)
        os.rmdir(self._dir) if os.path.isdir(self._dir) and not os.listdir(self._dir) else None


def ray_node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class RayReplica:
    """A replica as a Ray actor (GRAFT_RAY_ADDRESS): Ray places it (``num_cpus`` = its threads, a GPU when
    the replicas get GPUs); inside, the same ``serve.replica.serve`` loop connects back over TCP. Quacks like
    the ``Popen`` of a local replica for the watcher: ``poll``, ``kill``, ``wait``, ``pid``."""

    def __init__(self, args: dict, address: str, threads: int | None, device: str | None):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        actor = ray.remote(num_cpus=threads or 1, num_gpus=1 if (device or "").startswith("cuda") else 0,
                           max_restarts=0)(_ReplicaActor)
        if device and device.startswith("cuda"):
            args = dict(args, device="cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        self.actor = actor.remote()
        self.pid = ray.get(self.actor.pid.remote(), timeout=START_TIMEOUT_S)
        self._run = self.actor.run.remote(args)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import ray

        if self.returncode is None:
            done, _ = ray.wait([self._run], timeout=0)
            if done:
                try:
                    ray.get(done[0])
                    self.returncode = 0
                except Exception:  # noqa: BLE001 - the actor died (killed, or its process ended)
                    self.returncode = -9
        return self.returncode

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout or 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("ray replica", timeout)
            time.sleep(0.05)
        return self.returncode


class _ReplicaActor:
    def pid(self) -> int:
        return os.getpid()

    def run(self, args: dict) -> None:
        from graftlm.serve.replica import serve

        serve(args)


class ReplicaAdapters:
    """``Engine.adapters`` as the hosting runtime and the metrics see it, over every replica."""

    def __init__(self, owner: ReplicaSet):
        self.owner = owner
        self.paths: dict[str, Path] = {}

    def load_now(self, name: str) -> None:
        """Load ``name`` now on the replica its next request would go to (warm-up); raises its load error."""
        if name not in self.paths:
            raise NotFound(f"adapter {name!r} is not registered", param="model")
        replica = self.owner._route(name)
        self.owner._call(replica, "load_now", name)

    @property
    def resident(self) -> list:
        return [None] * sum(r.stats.get("resident", 0) for r in self.owner.live())

    @property
    def loads(self) -> int:
        return sum(r.stats.get("loads", 0) for r in self.owner.live())

    @property
    def evictions(self) -> int:
        return sum(r.stats.get("evictions", 0) for r in self.owner.live())


class ReplicaSet:
    """U engine replicas of one base model behind one engine-shaped front (see the module doc)."""

    def __init__(self, model_path: str | Path, *, units: int = 1, dtype: str | None = None,
                 max_batch_size: int = 32, max_seq_len: int = 2048, max_queue: int = 64,
                 kv_cache_bytes: int | None = None, threads: int | None = None, name: str = "replicas",
                 devices: list[str] | None = None, hang_s: float = 30.0, overload: int | None = None,
                 wait: bool = True, ray_address: str | None = None):
        from transformers import AutoTokenizer

        self.model_path, self.name = Path(model_path), name
        self.dtype_arg = dtype
        self.max_batch_size, self.max_seq_len, self.max_queue = max_batch_size, max_seq_len, max_queue
        self.kv_cache_bytes, self.threads, self.devices = kv_cache_bytes, threads, devices
        self.hang_s, self.ray_address = hang_s, ray_address
        self.overload = overload or max_batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.eos_ids = eos_token_ids(self.model_path, self.tokenizer)
        self.model = SimpleNamespace(shape=read_shape(json.loads((self.model_path / "config.json").read_text())))
        self.adapters = ReplicaAdapters(self)
        self.grammars = GrammarSpecs()
        self.error: BaseException | None = None  # replicas are replaced, never the set (hosting's contract)
        self.replicas: list[Replica] = []
        self.restarts = self.start_failures = 0
        self._lock = threading.RLock()
        self._rids = itertools.count(1)
        self._replies: dict[int, list] = {}
        self._reply_cv = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        for slot in range(units):
            self._spawn(slot)
        self._monitor = threading.Thread(target=self._watch, name=f"{name}-monitor", daemon=True)
        self._monitor.start()
        if wait:
            try:
                self.wait_ready(units)
            except BaseException:
                self.stop()
                raise

    # --- the engine surface ------------------------------------------------------------------------

    check_prompt_chars = Engine.check_prompt_chars
    max_token_chars = functools.cached_property(Engine.max_token_chars.func)

    @property
    def dtype(self) -> str:
        return next((r.info["dtype"] for r in self.replicas if r.info), self.dtype_arg or "auto")

    @property
    def device(self) -> str:
        return next((r.info["device"] for r in self.replicas if r.info), "cpu")

    @property
    def kv_capacity_tokens(self) -> int:
        caps = [r.info["kv_capacity_tokens"] for r in self.replicas if r.info]
        return min(caps) if caps else self.max_seq_len

    @property
    def num_running(self) -> int:
        return sum(r.stats.get("running", 0) for r in self.live())

    @property
    def num_waiting(self) -> int:
        return sum(r.stats.get("waiting", 0) for r in self.live())

    @property
    def cache(self) -> SimpleNamespace:
        def total(key):
            return sum(r.stats.get(key, 0) for r in self.live())
        return SimpleNamespace(num_blocks=total("blocks"), available_blocks=total("available"),
                               idle=range(total("idle")), hit_tokens=total("hit"), query_tokens=total("query"))

    def register_adapter(self, name: str, path: str | Path) -> None:
        """Known to the set now (its files checked here); loaded on a replica when a row is routed there."""
        from .adapters import read_adapter_config

        read_adapter_config(path, self.model.shape)
        with self._lock:
            if self.adapters.paths.get(name) not in (None, Path(path)):
                self._unregister_everywhere(name)
            self.adapters.paths[name] = Path(path)

    def unregister_adapter(self, name: str) -> None:
        with self._lock:
            self.adapters.paths.pop(name, None)
            self._unregister_everywhere(name)

    def unregister_adapter_if_unused(self, name: str) -> bool:
        with self._lock:
            if any(rec.adapter == name for r in self.replicas for rec in list(r.records.values())):
                return False
            self.unregister_adapter(name)
            return True

    def _unregister_everywhere(self, name: str) -> None:
        for r in self.replicas:
            if name in r.adapters:
                r.adapters.discard(name)
                try:
                    r.send(["unregister", name])
                except EngineUnavailable:
                    pass

    def fail_requests(self, handles: list[RequestHandle], error: BaseException) -> None:
        for handle in handles:
            for r in list(self.replicas):
                rec = r.records.pop(handle.request_id, None)
                if rec is not None:
                    try:
                        r.send(["cancel", handle.request_id])
                    except EngineUnavailable:
                        pass
                    if not handle.done:
                        handle._close(error, None)

    def submit(self, prompt_ids: list[int], params=None, adapter: str | None = None, *,
               _bounded: bool = True) -> RequestHandle:
        """Queue a request on a replica (see ``pick``); raises what ``Engine.submit`` raises."""
        from .sampler import SamplingParams

        if self._closing:
            raise EngineUnavailable(f"the serving engine for {self.model_path.name} was stopped (its cluster "
                                    f"was deleted or the server is shutting down)")
        if adapter is not None and adapter not in self.adapters.paths:
            raise NotFound(f"adapter {adapter!r} is not registered", param="model")
        wire = encode_params(params or SamplingParams())
        rid = next(self._rids)
        handle = RequestHandle(rid, functools.partial(self._cancel, rid))
        message = ["submit", rid, list(prompt_ids), wire, adapter, _bounded]
        tried: set[int] = set()
        error: BaseException | None = None
        while True:
            with self._lock:
                replica = self._route(adapter, exclude=tried)
                rec = Record(handle, replica, message, adapter)
                self._dispatch(rec)
            deadline = time.monotonic() + ACK_TIMEOUT_S
            while not rec.acked.wait(0.1):
                if time.monotonic() > deadline:
                    self._cancel(rid)
                    raise EngineUnavailable(f"replica {rec.replica.slot} of {self.name} did not take the request "
                                            f"within {ACK_TIMEOUT_S:g} s")
            error = rec.error
            if error is None:
                rec.returned = True
                return handle
            if not isinstance(error, QueueFull) or rec.replica.slot in tried:
                raise error
            tried.add(rec.replica.slot)
            if len(tried) >= len(self.live()):
                raise error

    def _dispatch(self, rec: Record) -> None:
        """Send the request to ``rec.replica`` (registering its adapter there first); caller holds the lock."""
        replica = rec.replica
        replica.records[rec.handle.request_id] = rec
        try:
            if rec.adapter is not None and rec.adapter not in replica.adapters:
                replica.send(["register", rec.adapter, str(self.adapters.paths[rec.adapter])])
                replica.adapters.add(rec.adapter)
            replica.send(rec.message)
        except EngineUnavailable as e:
            replica.records.pop(rec.handle.request_id, None)
            rec.error = e
            rec.acked.set()

    def _route(self, adapter: str | None, exclude=()) -> Replica:
        ready = [r for r in self.replicas if r.state == "ready" and r.slot not in exclude]
        replica = pick(ready, adapter, self.overload)
        if replica is None:
            starting = any(r.state == "starting" for r in self.replicas)
            raise EngineUnavailable(f"no replica of {self.name} is serving now"
                                    + ("; replacements are starting, retry in a few seconds" if starting else ""))
        return replica

    def _cancel(self, rid: int) -> None:
        for r in list(self.replicas):
            if rid in r.records:
                try:
                    r.send(["cancel", rid])
                except EngineUnavailable:
                    pass

    def generate(self, requests: list[tuple[list[int], object, str | None]]) -> list:
        handles = [self.submit(p, sp, a, _bounded=False) for p, sp, a in requests]
        return [h.result() for h in handles]

    def logits(self, rows: list[tuple[list[int], str | None]]):
        """Next-token fp32 logits [N, vocab] after each prompt (on one replica, which loads the adapters)."""
        import numpy as np
        import torch

        adapters = [a for _, a in rows if a is not None]
        with self._lock:
            replica = self._route(adapters[0] if adapters else None)
            for name in dict.fromkeys(adapters):
                if name not in self.adapters.paths:
                    raise NotFound(f"adapter {name!r} is not registered", param="model")
                if name not in replica.adapters:
                    replica.send(["register", name, str(self.adapters.paths[name])])
                    replica.adapters.add(name)
        shape, data = self._call(replica, "logits", [[list(p), a] for p, a in rows])
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())

    def _call(self, replica: Replica, op: str, arg):
        rid = next(self._rids)
        with self._reply_cv:
            self._replies[rid] = [replica]
        replica.send([op, rid, arg])
        deadline = time.monotonic() + ACK_TIMEOUT_S
        with self._reply_cv:
            while len(self._replies[rid]) == 1:
                if not replica.alive or time.monotonic() > deadline:
                    del self._replies[rid]
                    raise EngineUnavailable(f"replica {replica.slot} of {self.name} stopped before it answered")
                self._reply_cv.wait(0.1)
            _, payload, error = self._replies.pop(rid)
        if error is not None:
            raise decode_error(error)
        return payload

    def _reply(self, rid: int, payload, error) -> None:
        with self._reply_cv:
            if rid in self._replies:
                self._replies[rid] = [self._replies[rid][0], payload, error]
                self._reply_cv.notify_all()

    # --- replicas: start, watch, replace, resize, stop -----------------------------------------------

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state in ("ready", "draining")]

    def _spawn(self, slot: int) -> Replica:
        replica = Replica(self, slot, self.threads)
        with self._lock:
            self.replicas.append(replica)
        return replica

    def wait_ready(self, count: int | None = None, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until ``count`` replicas (default: all) serve; raises EngineUnavailable if none can."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.error is None:
            serving = [r for r in self.replicas if r.state == "ready"]
            if len(serving) >= (count or len(self.replicas)):
                return
            if not any(r.state == "starting" for r in self.replicas) and serving:
                return
            self._wake.wait(0.1)
            self._wake.clear()
        if not any(r.state == "ready" for r in self.replicas):
            raise self.error or EngineUnavailable(f"no replica of {self.name} started within {timeout:g} s")

    def _watch(self) -> None:
        while not self._closing:
            time.sleep(0.05)
            for r in list(self.replicas):
                if self._closing:
                    return
                try:
                    self._check(r)
                except Exception:  # noqa: BLE001 - the watcher must keep watching
                    log.exception("replica watch of %s failed", self.name)

    def _check(self, r: Replica) -> None:
        now = time.monotonic()
        if r.state in ("stopping", "dead", "closed"):
            return
        if r.proc.poll() is not None:
            if r.state != "dead":
                self._died(r, f"its process ended (exit status {r.proc.returncode})")
            return
        if r.killed:
            return  # waiting for the kill to land (poll above reports it)
        if r.state == "starting" and now - r.started > START_TIMEOUT_S:
            r.killed = True
            log.warning("replica %d of %s did not start within %g s; killing it", r.slot, self.name, START_TIMEOUT_S)
            r.proc.kill()
        elif r.state in ("ready", "draining") and r.stats.get("error"):
            log.warning("replica %d of %s: its engine loop failed (%s); replacing it", r.slot, self.name,
                        r.stats["error"])
            r.killed = True
            r.proc.kill()
        elif r.state in ("ready", "draining"):
            beat_age = now - r.last_beat
            step_age = r.stats.get("step_age", 0.0) + beat_age
            if beat_age > self.hang_s or step_age > self.hang_s:
                log.warning("replica %d of %s stopped stepping (heartbeat %.1f s, step %.1f s ago); replacing it",
                            r.slot, self.name, beat_age, step_age)
                r.killed = True
                r.proc.kill()

    def _died(self, r: Replica, why: str) -> None:
        """Fail or resend its requests; start a replacement unless it was draining or the set is closing."""
        with self._lock:
            draining, never_started = r.state == "draining", r.state == "starting"
            self.start_failures = self.start_failures + 1 if never_started else 0
            r.state = "dead"
            records, r.records = list(r.records.values()), {}
            if not self._closing:
                log.warning("replica %d of %s died (%s); %s", r.slot, self.name, why,
                            "not replaced (draining)" if draining else "starting a replacement")
            error = EngineUnavailable(f"the serving replica for {self.model_path.name} failed ({why}) while this "
                                      f"request ran; retry: the server starts a fresh replica")
            for rec in records:
                if rec.handle.done:
                    continue
                if rec.handle.tokens_streamed == 0 and not self._closing:
                    try:
                        rec.replica = self._route(rec.adapter)
                    except EngineUnavailable:
                        pass
                    else:  # already admitted once: the replacement's queue limit does not refuse it
                        rec.message = rec.message[:5] + [False]
                        self._dispatch(rec)
                        if rec.error is None:
                            continue
                rec.error = rec.error or error
                rec.handle._close(error, None)
                rec.acked.set()
            self.replicas.remove(r)
            if self.start_failures >= MAX_START_FAILURES:
                log.error("%s: %d replicas in a row died before serving; not starting more", self.name,
                          self.start_failures)
                if not self.live():
                    self.error = EngineUnavailable(f"replicas of {self.name} die before they serve ({why})")
            elif not draining and not self._closing:
                self.restarts += 1
                self._spawn(r.slot)
            self._wake.set()
        with self._reply_cv:
            self._reply_cv.notify_all()
        threading.Thread(target=r.close, daemon=True).start()

    def resize(self, units: int, threads: int | None = None) -> None:
        """Run ``units`` replicas: start new ones, or drain the highest slots (they finish their requests)."""
        with self._lock:
            if threads is not None and threads != self.threads:
                self.threads = threads
                for r in self.live():
                    try:
                        r.send(["threads", threads])
                    except EngineUnavailable:
                        pass
            active = sorted((r for r in self.replicas if r.state in ("starting", "ready")), key=lambda r: r.slot)
            for r in active[units:]:
                r.state = "draining"
                threading.Thread(target=self._drain, args=(r,), name=f"drain-{r.slot}", daemon=True).start()
            used = {r.slot for r in active[:units]}
            free = (s for s in itertools.count() if s not in used)
            for _ in range(units - len(active)):
                self._spawn(next(free))

    def _drain(self, r: Replica) -> None:
        while r.records and r.state == "draining":
            time.sleep(0.05)
        with self._lock:
            if r.state != "draining":
                return  # it died while draining (the watcher handled it)
            r.state = "stopping"
            if r in self.replicas:
                self.replicas.remove(r)
        log.info("replica %d of %s drained; stopping it", r.slot, self.name)
        r.stop()

    def stop(self) -> None:
        """Stop every replica; requests still queued or running fail with EngineUnavailable."""
        self._closing = True
        self._monitor.join(timeout=5)
        with self._lock:
            replicas, self.replicas = list(self.replicas), []
        error = EngineUnavailable(f"the serving engine for {self.model_path.name} was stopped (its cluster was "
                                  f"deleted or the server is shutting down)")
        for r in replicas:
            for rec in list(r.records.values()):
                if not rec.handle.done:
                    rec.handle._close(error, None)
                rec.error = rec.error or error
                rec.acked.set()
            r.records = {}
        threads = [threading.Thread(target=r.stop) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def start(self) -> None:
        """Replicas start when the set is made (Engine's start() is a no-op here)."""


__all__ = ["ReplicaSet", "pick"]
