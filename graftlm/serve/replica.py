"""One engine replica in its own process: ``python -m graftlm.serve.replica '<json args>'``.

The replica owns one copy of the base weights, its KV cache, its adapter slots and its scheduler (an
``Engine`` stepping on its own thread). It connects two ZeroMQ sockets the API process bound: commands come
in on a PULL socket (submit, cancel, register/unregister an adapter, load one now, raw logits, threads,
stop), and everything goes out on a PUSH socket: ``ready`` once the weights are loaded, an ``ack`` per submit
(None or the error, so 400/429 keep their meaning), each request's deltas and its close (final delta or error
plus the output), replies, and a heartbeat every ``HEARTBEAT_S`` with the engine's counters, so a replica
that stops stepping can be told from an idle one. It exits when its parent process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

HEARTBEAT_S = 0.2
log = logging.getLogger("graftlm.serve.replica")


def stats(engine, last_step: list[float]) -> dict:
    cache, adapters = engine.cache, engine.adapters
    return {"waiting": engine.num_waiting, "running": engine.num_running, "blocks": cache.num_blocks,
            "available": cache.available_blocks, "idle": len(getattr(cache, "idle", ())),
            "hit": getattr(cache, "hit_tokens", 0), "query": getattr(cache, "query_tokens", 0),
            "resident": len(adapters.resident), "loads": adapters.loads,
            "evictions": getattr(adapters, "evictions", 0), "adapters": sorted(adapters.paths),
            "step_age": time.monotonic() - last_step[0],
            "error": None if engine.error is None else f"{type(engine.error).__name__}: {engine.error}"}


def serve(args: dict) -> None:
    import torch
    import zmq

    from graftlm.errors import GraftError

    from .engine import Engine
    from .wire import decode_params, encode_delta, encode_error, encode_output, pack, unpack

    threads = args.get("threads")
    if threads and (args.get("device") or "cpu").startswith("cpu"):
        torch.set_num_threads(threads)
    ctx = zmq.Context()
    commands = ctx.socket(zmq.PULL)
    commands.connect(args["commands"])
    events = ctx.socket(zmq.PUSH)
    events.setsockopt(zmq.LINGER, 2000)
    events.connect(args["events"])
    send_lock = threading.Lock()

    def send(msg) -> None:
        data = pack(msg)
        with send_lock:
            events.send(data)

    parent = os.getppid()
    engine = Engine(args["model"], dtype=args.get("dtype"), device=args.get("device"),
                    max_batch_size=args["max_batch_size"], max_seq_len=args["max_seq_len"],
                    max_queue=args["max_queue"], kv_cache_bytes=args.get("kv_cache_bytes"), threads=threads)
    last_step = [time.monotonic()]
    step = engine.step
    outbox: list = []  # what the engine thread's current step published: one message per step, not per row

    def timed_step() -> bool:
        try:
            return step()
        finally:
            last_step[0] = time.monotonic()
            if outbox:
                batch = outbox[:]
                outbox.clear()
                send(["B", batch])

    def emit(msg) -> None:
        if threading.current_thread() is engine._thread:
            outbox.append(msg)
        else:  # a failure published by another thread (stop): at once
            send(msg)
    engine.step = timed_step
    engine.start()
    send(["ready", {"dtype": str(engine.dtype).removeprefix("torch."), "device": str(engine.device),
                    "kv_capacity_tokens": engine.kv_capacity_tokens, "pid": os.getpid()}])

    def beat() -> None:
        while True:
            if os.getppid() != parent:  # the API process is gone (even kill -9): nobody to serve
                os._exit(0)
            try:
                send(["hb", stats(engine, last_step)])
            except Exception:  # noqa: BLE001 - a counter read racing the engine thread; next beat
                pass
            time.sleep(HEARTBEAT_S)
    threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    handles: dict[int, object] = {}

    def forwarder(rid: int, holder: list):
        def listener(item) -> None:
            handle = holder[0] if holder else None
            if isinstance(item, BaseException):
                emit(["c", rid, None, encode_error(item), None])
            elif item.finish_reason is not None:
                output = handle._output if handle is not None else None
                emit(["c", rid, encode_delta(item), None, encode_output(output)])
            else:
                emit(["d", rid, encode_delta(item)])
                return
            handles.pop(rid, None)
        return listener

    while True:
        msg = unpack(commands.recv())
        op = msg[0]
        try:
            if op == "submit":
                _, rid, prompt_ids, params, adapter, bounded = msg
                try:
                    holder: list = []
                    p = decode_params(params, engine.grammars if params.get("grammar") else None)
                    handle = engine.submit(prompt_ids, p, adapter, _bounded=bounded, listener=forwarder(rid, holder))
                    holder.append(handle)
                    if not handle.done:
                        handles[rid] = handle
                except Exception as e:  # noqa: BLE001 - the request's error, the caller's to report
                    send(["ack", rid, encode_error(e)])
                else:
                    send(["ack", rid, None])
            elif op == "cancel":
                handle = handles.get(msg[1])
                if handle is not None:
                    handle.cancel()
            elif op == "register":
                engine.register_adapter(msg[1], msg[2])
            elif op == "unregister":
                engine.unregister_adapter(msg[1])
            elif op == "threads":
                engine.threads = msg[1]
            elif op == "load_now":
                _, rid, name = msg
                try:
                    engine.adapters.load_now(name)
                    send(["r", rid, None, None])
                except Exception as e:  # noqa: BLE001
                    send(["r", rid, None, encode_error(e)])
            elif op == "logits":
                _, rid, rows = msg
                try:
                    out = engine.logits([(ids, adapter) for ids, adapter in rows]).float().cpu().contiguous()
                    send(["r", rid, [list(out.shape), out.numpy().tobytes()], None])
                except Exception as e:  # noqa: BLE001
                    send(["r", rid, None, encode_error(e)])
            elif op == "stop":
                engine.stop()
                send(["stopped"])
                break
        except GraftError as e:
            log.warning("replica command %s failed: %s", op, e)
        except Exception:  # noqa: BLE001 - a command's bug must not end the replica
            log.exception("replica command %s failed", op)
    events.close(linger=2000)  # the last messages reach the API process, then the process ends at once
    os._exit(0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="replica %(process)d %(levelname)s %(message)s")
    serve(json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
