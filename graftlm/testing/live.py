"""A real graftlm API server (uvicorn) in a background thread on a free local port, for tests, benches and
examples that talk HTTP to it."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    origin: str  # http://127.0.0.1:PORT
    server: object
    thread: threading.Thread

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


def serve_in_thread(app=None, *, start_timeout: float = 30) -> LiveServer:
    """Start ``app`` (default: ``create_app()``) and return once it accepts requests."""
    import uvicorn

    if app is None:
        from graftlm.api.app import create_app
        app = create_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + start_timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", server, thread)
