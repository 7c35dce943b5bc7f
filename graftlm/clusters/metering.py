"""Unit-hours per dedicated AI cluster (OCI semantics).

A hosting cluster commits to at least 744 unit-hours (a month); each fine-tuning job bills at
least 1 unit-hour. Spans are opened and closed as clusters live and jobs run.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from graftlm.store.db import session
from graftlm.store.models import Cluster, UsageRecord

HOSTING_MIN_UNIT_HOURS = 744.0
FINE_TUNING_MIN_UNIT_HOURS = 1.0


def open_span(s, cluster: Cluster, *, minimum_unit_hours: float, job_id: str | None = None,
              started_at: float | None = None) -> UsageRecord:
    rec = UsageRecord(cluster_id=cluster.id, kind=cluster.type, job_id=job_id, unit_count=cluster.unit_count,
                      minimum_unit_hours=minimum_unit_hours, started_at=started_at or time.time())
    s.add(rec)
    return rec


def close_spans(s, *, cluster_id: str | None = None, job_id: str | None = None,
                ended_at: float | None = None) -> None:
    q = select(UsageRecord).where(UsageRecord.ended_at.is_(None))
    if cluster_id:
        q = q.where(UsageRecord.cluster_id == cluster_id)
    if job_id:
        q = q.where(UsageRecord.job_id == job_id)
    for rec in s.scalars(q):
        rec.ended_at = ended_at or time.time()


def start_job(cluster_id: str, job_id: str) -> None:
    with session() as s:
        cluster = s.get(Cluster, cluster_id)
        if cluster is not None:
            open_span(s, cluster, minimum_unit_hours=FINE_TUNING_MIN_UNIT_HOURS, job_id=job_id)


def end_job(job_id: str) -> None:
    with session() as s:
        close_spans(s, job_id=job_id)


def span_unit_hours(rec: UsageRecord, at: float) -> float:
    hours = ((rec.ended_at or at) - rec.started_at) / 3600.0
    return max(rec.unit_count * hours, rec.minimum_unit_hours)


def usage_report(price_per_unit_hour: float | None = None, at: float | None = None) -> dict:
    at = at or time.time()
    with session() as s:
        clusters = {c.id: c for c in s.scalars(select(Cluster))}
        per_cluster: dict[str, dict] = {}
        for rec in s.scalars(select(UsageRecord).order_by(UsageRecord.id)):
            c = clusters.get(rec.cluster_id)
            row = per_cluster.setdefault(rec.cluster_id, {
                "dedicated_ai_cluster_id": rec.cluster_id, "name": c.name if c else None, "type": rec.kind,
                "unit_count": rec.unit_count, "unit_hours": 0.0, "jobs": 0})
            row["unit_hours"] += span_unit_hours(rec, at)
            row["jobs"] += rec.job_id is not None
    data = [dict(r, unit_hours=round(r["unit_hours"], 4)) for r in per_cluster.values()]
    total = round(sum(r["unit_hours"] for r in data), 4)
    report = {"object": "usage", "data": data, "total_unit_hours": total}
    if price_per_unit_hour is not None:
        report["price_per_unit_hour"] = price_per_unit_hour
        report["cost"] = round(total * price_per_unit_hour, 2)
    return report
