"""Prometheus metrics of this server process (``GET /metrics``, prometheus-client's text format).

Counters and histograms are recorded as inference requests finish (per endpoint name and model id; a request
that names a model directly has ``endpoint=""``); gauges (queue depth, running rows, KV blocks, adapter loads,
cluster units, jobs by state, training tokens/s) are read from the serving runtime and the store at each
scrape, so a scrape costs one query per table and nothing while nobody scrapes. Metrics are per process: two
``graft serve`` processes on one database are two scrape targets.
"""

from __future__ import annotations

import re

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

disable_created_metrics()  # no *_created series: half the samples, and nothing here reads them
CONTENT_TYPE = CONTENT_TYPE_LATEST
REGISTRY = CollectorRegistry(auto_describe=True)
LABELS = ("endpoint", "model")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("graftlm_requests", "Inference requests (chat and text completions) by HTTP status; 499: the "
                   "client went away before the end", (*LABELS, "status"), registry=REGISTRY)
PROMPT_TOKENS = Counter("graftlm_prompt_tokens", "Prompt tokens of finished inference requests", LABELS,
                        registry=REGISTRY)
COMPLETION_TOKENS = Counter("graftlm_completion_tokens", "Generated tokens of inference requests (every choice)",
                            LABELS, registry=REGISTRY)
TTFT = Histogram("graftlm_time_to_first_token_seconds", "From queueing a choice to its first token", LABELS,
                 buckets=LATENCY_BUCKETS, registry=REGISTRY)
INTER_TOKEN = Histogram("graftlm_inter_token_latency_seconds", "Between consecutive tokens of one choice", LABELS,
                        buckets=TOKEN_GAP_BUCKETS, registry=REGISTRY)
E2E = Histogram("graftlm_e2e_request_latency_seconds", "From queueing a request to its last token", LABELS,
                buckets=LATENCY_BUCKETS, registry=REGISTRY)
FEEDBACK = Counter("graftlm_feedback", "Feedback on logged completions by scale (thumbs: -1/1, stars: 1-5) and "
                   "rating", ("endpoint", "scale", "rating"), registry=REGISTRY)
LOG_WRITE_ERRORS = Counter("graftlm_request_log_write_errors", "Request-log rows that could not be written",
                           ("endpoint",), registry=REGISTRY)


def record_request(endpoint: str, model: str, status: int | str, outputs: list = (), *,
                   started_s: float | None = None) -> None:
    """One finished inference request: its status, and (when it generated) tokens and latencies of its
    choices (``serve.sequence.Output``s; perf_counter times). The prompt is counted once for n choices."""
    labels = (endpoint or "", model or "")
    REQUESTS.labels(*labels, str(status)).inc()
    if not outputs:
        return
    PROMPT_TOKENS.labels(*labels).inc(outputs[0].prompt_tokens)
    COMPLETION_TOKENS.labels(*labels).inc(sum(o.completion_tokens for o in outputs))
    ttft, gaps = TTFT.labels(*labels), INTER_TOKEN.labels(*labels)
    for o in outputs:
        times = o.token_times_s
        if times:
            ttft.observe(max(0.0, times[0] - o.arrival_s))
        for a, b in zip(times, times[1:]):
            gaps.observe(max(0.0, b - a))
    start = started_s if started_s is not None else min(o.arrival_s for o in outputs)
    end = max((o.token_times_s[-1] for o in outputs if o.token_times_s), default=time.perf_counter())
    E2E.labels(*labels).observe(max(0.0, end - start))


def record_feedback(endpoint: str, scale: str, rating: int) -> None:
    FEEDBACK.labels(endpoint or "", scale, str(rating)).inc()


class RuntimeCollector:
    """Gauges read at scrape time: the serving engines, the clusters, the fine-tuning jobs."""

    def collect(self):
        yield from engine_metrics()
        yield from store_metrics()

    def describe(self):  # no fixed descriptions: families depend on what runs
        return []


def engine_metrics():
    from graftlm.clusters.hosting import current_runtime

    queue = GaugeMetricFamily("graftlm_engine_queue_depth", "Requests waiting for a batch row", labels=["engine"])
    running = GaugeMetricFamily("graftlm_engine_running_rows", "Batch rows generating now", labels=["engine"])
    used = GaugeMetricFamily("graftlm_kv_cache_blocks_used", "Paged KV-cache blocks held by running rows",
                             labels=["engine"])
    total = GaugeMetricFamily("graftlm_kv_cache_blocks", "Paged KV-cache blocks of the engine", labels=["engine"])
    adapters = GaugeMetricFamily("graftlm_adapters_resident", "Adapters in device slots", labels=["engine"])
    loads = CounterMetricFamily("graftlm_adapter_loads", "Adapter reads from disk", labels=["engine"])
    evictions = CounterMetricFamily("graftlm_adapter_evictions",
                                    "Adapters evicted from a device slot for another (LRU)", labels=["engine"])
    cached = GaugeMetricFamily("graftlm_kv_cache_blocks_cached", "Prefix-cache blocks no row uses (kept until "
                               "their memory is needed)", labels=["engine"])
    hit = CounterMetricFamily("graftlm_prefix_cache_hit_tokens", "Prompt tokens whose K/V came from the prefix "
                              "cache", labels=["engine"])
    queried = CounterMetricFamily("graftlm_prefix_cache_query_tokens", "Prompt tokens in full blocks looked up in "
                                  "the prefix cache", labels=["engine"])
    runtime = current_runtime()
    for key, engine in sorted((runtime.engines if runtime else {}).items()):
        queue.add_metric([key], engine.num_waiting)
        running.add_metric([key], engine.num_running)
        cache = engine.cache
        used.add_metric([key], cache.num_blocks - cache.available_blocks)
        cached.add_metric([key], len(getattr(cache, "idle", ())))
        hit.add_metric([key], getattr(cache, "hit_tokens", 0))
        queried.add_metric([key], getattr(cache, "query_tokens", 0))
        total.add_metric([key], cache.num_blocks)
        adapters.add_metric([key], len(engine.adapters.resident))
        loads.add_metric([key], engine.adapters.loads)
        evictions.add_metric([key], getattr(engine.adapters, "evictions", 0))
    yield from (queue, running, used, total, cached, hit, queried, adapters, loads, evictions)


def store_metrics():
    from graftlm.store.db import session
    from graftlm.store.models import Cluster, Endpoint, FineTuningJob, JobEvent

    runtime_busy = busy_clusters()
    units = GaugeMetricFamily("graftlm_cluster_units", "Units of a dedicated AI cluster",
                              labels=["cluster", "type"])
    busy = GaugeMetricFamily("graftlm_cluster_units_busy", "Units of a cluster doing work now (a hosting "
                             "cluster whose engine has running rows; a fine-tuning cluster running jobs)",
                             labels=["cluster", "type"])
    endpoints = GaugeMetricFamily("graftlm_endpoints", "Endpoints by lifecycle state", labels=["state"])
    jobs = GaugeMetricFamily("graftlm_fine_tuning_jobs", "Fine-tuning jobs by status", labels=["status"])
    speed = GaugeMetricFamily("graftlm_training_tokens_per_second", "Tokens/s of a running job at its last "
                              "metrics event", labels=["job"])
    with session() as s:
        running_by_cluster = dict(s.execute(
            select(FineTuningJob.dedicated_ai_cluster_id, func.count()).where(FineTuningJob.status == "running")
            .group_by(FineTuningJob.dedicated_ai_cluster_id)).all())
        for c in s.scalars(select(Cluster).where(Cluster.lifecycle_state != "DELETED")):
            units.add_metric([c.name, c.type], c.unit_count)
            if c.type == "HOSTING":
                n = c.unit_count if c.id in runtime_busy else 0
            else:
                n = min(c.unit_count, running_by_cluster.get(c.id, 0) * c.unit_count)
            busy.add_metric([c.name, c.type], n)
        for state, n in s.execute(select(Endpoint.lifecycle_state, func.count())
                                  .where(Endpoint.lifecycle_state != "DELETED").group_by(Endpoint.lifecycle_state)):
            endpoints.add_metric([state], n)
        for status, n in s.execute(select(FineTuningJob.status, func.count()).group_by(FineTuningJob.status)):
            jobs.add_metric([status], n)
        for job_id in s.scalars(select(FineTuningJob.id).where(FineTuningJob.status == "running")):
            event = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                              .order_by(JobEvent.seq.desc()).limit(1)).first()
            tps = (event.data or {}).get("tokens_per_second") if event else None
            if tps is not None:
                speed.add_metric([job_id], float(tps))
    yield from (units, busy, endpoints, jobs, speed)


def busy_clusters() -> set[str]:
    from graftlm.clusters.hosting import current_runtime

    runtime = current_runtime()
    return {key.removeprefix("cluster:") for key, engine in (runtime.engines if runtime else {}).items()
            if key.startswith("cluster:") and engine.num_running}


REGISTRY.register(RuntimeCollector())


def render() -> bytes:
    """Every sample for the instance; a caller confined to a project (graftlm.store.scope) gets only the samples
    whose endpoint, model, engine, cluster and job labels name what its project can see."""
    from graftlm.store import scope

    text = generate_latest(REGISTRY)
    return text if scope.current() is None else _only_visible(text)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _only_visible(text: bytes) -> bytes:
    from graftlm.store.db import session
    from graftlm.store.models import Cluster, Endpoint, FineTuningJob, Model

    with session() as s:  # confined: these are the caller's project's rows (and the shared ones)
        clusters = list(s.execute(select(Cluster.id, Cluster.name)))
        visible = {"endpoint": set(s.scalars(select(Endpoint.name))) | {""},
                   "model": set(s.scalars(select(Model.id))) | {""},
                   "cluster": {name for _, name in clusters},
                   "job": set(s.scalars(select(FineTuningJob.id)))}
    visible["engine"] = {f"cluster:{cid}" for cid, _ in clusters} | {f"base:{m}" for m in visible["model"]}
    kept = []
    for line in text.decode().splitlines():
        if not line.startswith("#") and any(k in visible and v not in visible[k] for k, v in _LABEL.findall(line)):
            continue
        kept.append(line)
    return ("\n".join(kept) + "\n").encode()
