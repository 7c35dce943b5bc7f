"""What the inference routes tell the metrics (and the request log) about each request.

A route calls ``observe(...)`` once its request is queued; the observation records the request when its last
token is out (``done``), streamed or not. A request that fails before it is queued (a 400, a 404, a 429) is
counted by the app's middleware from its HTTP status (``count_unobserved``), with the endpoint and model when
the name was resolved (``note_target``).
"""

from __future__ import annotations

import time

from graftlm.observe import logs, metrics

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer ended


def labels_of(target) -> tuple[str, str]:
    if target is None:
        return "", ""
    return (target.endpoint or {}).get("name", ""), target.model["id"]


def note_target(request, target) -> None:
    request.state.graft_target = target


class Observation:
    def __init__(self, request, target, *, completion_id: str, kind: str, body: dict):
        self.target, self.completion_id, self.kind, self.body = target, completion_id, kind, body
        self.started_s = time.perf_counter()
        self.recorded = False
        request.state.graft_target = target
        request.state.graft_observation = self

    def done(self, outputs: list, status: int) -> None:
        """The request ended with ``status`` (200; 499 when the client left; a GraftError's status when the
        engine failed mid-stream); ``outputs`` are its choices as far as they got."""
        if self.recorded:
            return
        self.recorded = True
        endpoint, model = labels_of(self.target)
        metrics.record_request(endpoint, model, status, outputs, started_s=self.started_s)
        if outputs and (self.target.endpoint or {}).get("log_requests"):
            self.log(outputs, status)

    def log(self, outputs: list, status: int) -> None:
        first = outputs[0]
        times = [o.token_times_s[0] - o.arrival_s for o in outputs if o.token_times_s]
        logs.record({
            "id": self.completion_id, "endpoint_id": self.target.endpoint["id"],
            "endpoint_name": self.target.endpoint["name"], "model": self.target.model["id"],
            "adapter": self.target.adapter, "kind": self.kind, "status": status,
            "finish_reason": "length" if first.finish_reason == "length" else "stop",
            "prompt_tokens": first.prompt_tokens, "completion_tokens": sum(o.completion_tokens for o in outputs),
            "latency_ms": round((time.perf_counter() - self.started_s) * 1000, 3),
            "ttft_ms": round(min(times) * 1000, 3) if times else None,
            "request": self.body,
            "response": {"choices": [{"index": i, "text": o.text,
                                      "finish_reason": "length" if o.finish_reason == "length" else "stop"}
                                     for i, o in enumerate(outputs)]}})


def observe(request, target, *, completion_id: str, kind: str, body: dict) -> Observation:
    return Observation(request, target, completion_id=completion_id, kind=kind, body=body)


def finished_outputs(handles) -> list:
    """The outputs of the choices that finished (a cancelled or failed choice has none to count)."""
    outs = []
    for handle in handles:
        try:
            outs.append(handle.result(timeout=0))
        except Exception:  # noqa: BLE001 - still running (cancelled just now) or failed: nothing finished
            pass
    return outs


def count_unobserved(request, status: int) -> None:
    """Called by the middleware for every inference response: counts the ones no observation recorded (refused
    before queueing, or failed before the answer). A streamed answer is recorded by its observation at its end."""
    obs = getattr(request.state, "graft_observation", None)
    if obs is not None and (obs.recorded or status < 400):
        return
    if obs is not None:
        obs.recorded = True
    endpoint, model = labels_of(getattr(request.state, "graft_target", None))
    metrics.record_request(endpoint, model, status)
