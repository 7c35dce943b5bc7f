"""Unit-hour arithmetic for fine-tuning clusters running jobs at once."""

from __future__ import annotations

import pytest

from graftlm.clusters import clusters, metering
from graftlm.store.db import session
from graftlm.store.models import Cluster

T0 = 1_000_000.0
HOUR = 3600.0


def _job_span(cluster_id: str, job_id: str, start_h: float, end_h: float) -> None:
    with session() as s:
        rec = metering.open_span(s, s.get(Cluster, cluster_id), minimum_unit_hours=1.0, job_id=job_id,
                                 started_at=T0 + start_h * HOUR)
        rec.ended_at = T0 + end_h * HOUR


def _unit_hours(cluster_id: str) -> float:
    rows = {r["dedicated_ai_cluster_id"]: r for r in metering.usage_report()["data"]}
    return rows[cluster_id]["unit_hours"]


def test_concurrent_jobs_share_the_clusters_units(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=2)
    _job_span(ft["id"], "a", 0, 5)
    _job_span(ft["id"], "b", 1, 4)   # inside a: no extra hours
    _job_span(ft["id"], "c", 4.5, 6)  # overlaps a's tail: 1 more hour
    assert _unit_hours(ft["id"]) == pytest.approx(2 * 6.0)


def test_many_short_jobs_bill_at_least_one_unit_hour_each(tiny_model):
    ft = clusters.create_cluster("FINE_TUNING", unit_count=2)
    for i in range(3):
        _job_span(ft["id"], f"j{i}", 0, 0.1)  # three 6-minute jobs at once
    assert _unit_hours(ft["id"]) == pytest.approx(3.0)


def test_busy_hours_merges_overlaps():
    class Span:
        def __init__(self, a, b):
            self.started_at, self.ended_at = a * HOUR, b * HOUR

    spans = [Span(0, 2), Span(1, 3), Span(5, 6), Span(5.5, 5.7)]
    assert metering.busy_hours(spans, at=0) == pytest.approx(4.0)
