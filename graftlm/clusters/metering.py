"""Unit-hours per dedicated AI cluster (OCI semantics).

A hosting cluster commits to at least 744 unit-hours (a month); each fine-tuning job bills at
least 1 unit-hour. The report shows, per cluster, what it bills (``unit_hours``), the minimums it committed to
(``committed_unit_hours``) and what it has actually used (``used_unit_hours``: units × hours, no minimum). Spans are opened and closed as clusters live and jobs run. A fine-tuning cluster
bills its units for the time it is busy: jobs that run at once on it share its units (their
overlapping hours count once), so concurrency never bills more than the cluster has.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from graftlm.errors import GraftError
from graftlm.store.db import session
from graftlm.store.models import DEFAULT_PROJECT, Cluster, FineTuningJob, UsageRecord

HOSTING_MIN_UNIT_HOURS = 744.0
FINE_TUNING_MIN_UNIT_HOURS = 1.0
MAX_PRICE_PER_UNIT_HOUR = 1e9  # keeps every cost finite (nan and inf fail the comparison)


def open_span(s, cluster: Cluster, *, minimum_unit_hours: float, job_id: str | None = None,
              started_at: float | None = None) -> UsageRecord:
    project = cluster.project_id
    if job_id is not None:  # a job on the shared local cluster is its own project's usage
        job = s.get(FineTuningJob, job_id)
        project = job.project_id if job is not None else project
    rec = UsageRecord(cluster_id=cluster.id, project_id=project or DEFAULT_PROJECT, kind=cluster.type,
                      job_id=job_id, unit_count=cluster.unit_count,
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


def span_used_unit_hours(rec: UsageRecord, at: float) -> float:
    """Units × the hours the span has actually lasted (no minimum)."""
    return rec.unit_count * ((rec.ended_at or at) - rec.started_at) / 3600.0


def span_unit_hours(rec: UsageRecord, at: float) -> float:
    return max(span_used_unit_hours(rec, at), rec.minimum_unit_hours)


def commitment(type: str, unit_count: int) -> dict:
    """What creating a cluster commits to, before it is created (``graft clusters create`` says it)."""
    if type == "HOSTING":
        return {"minimum_unit_hours": HOSTING_MIN_UNIT_HOURS,
                "text": f"a HOSTING cluster of {unit_count} unit(s) bills at least {HOSTING_MIN_UNIT_HOURS:g} "
                        f"unit-hours (OCI's monthly minimum commitment) from the moment it is created, "
                        f"then {unit_count} unit-hour(s) per hour it lives beyond that"}
    return {"minimum_unit_hours": 0.0,
            "text": f"a FINE_TUNING cluster of {unit_count} unit(s) bills {unit_count} unit-hour(s) per hour "
                    f"a job runs on it, at least {FINE_TUNING_MIN_UNIT_HOURS:g} unit-hour per job; idle, nothing"}


def busy_hours(spans: list[UsageRecord], at: float) -> float:
    """Hours covered by the union of the spans (overlaps counted once)."""
    total, reach = 0.0, None
    for start, end in sorted((r.started_at, r.ended_at or at) for r in spans):
        if reach is None or start > reach:
            total, reach = total + (end - start), end
        elif end > reach:
            total, reach = total + (end - reach), end
    return total / 3600.0


def job_spans_unit_hours(spans: list[UsageRecord], at: float) -> float:
    """A fine-tuning cluster's job spans: its units × busy hours, and at least each job's minimum."""
    units = max(r.unit_count for r in spans)
    return max(units * busy_hours(spans, at), sum(r.minimum_unit_hours for r in spans))


def usage_report(price_per_unit_hour: float | None = None, at: float | None = None) -> dict:
    if price_per_unit_hour is not None and not 0 <= price_per_unit_hour <= MAX_PRICE_PER_UNIT_HOUR:
        raise GraftError(f"price_per_unit_hour must be a number from 0 to {MAX_PRICE_PER_UNIT_HOUR:g}",
                         param="price_per_unit_hour")
    at = at or time.time()
    with session() as s:
        clusters = {c.id: c for c in s.scalars(select(Cluster))}
        per_cluster: dict[str, dict] = {}
        job_spans: dict[str, list[UsageRecord]] = {}
        for rec in s.scalars(select(UsageRecord).order_by(UsageRecord.id)):
            c = clusters.get(rec.cluster_id)
            row = per_cluster.setdefault(rec.cluster_id, {
                "dedicated_ai_cluster_id": rec.cluster_id, "name": c.name if c else None, "type": rec.kind,
                "unit_count": rec.unit_count, "unit_hours": 0.0, "committed_unit_hours": 0.0,
                "used_unit_hours": 0.0, "jobs": 0})
            if rec.job_id is None:
                row["unit_hours"] += span_unit_hours(rec, at)
                row["committed_unit_hours"] += rec.minimum_unit_hours
                row["used_unit_hours"] += span_used_unit_hours(rec, at)
            else:
                job_spans.setdefault(rec.cluster_id, []).append(rec)
                row["jobs"] += 1
        for cluster_id, spans in job_spans.items():
            row = per_cluster[cluster_id]
            row["unit_hours"] += job_spans_unit_hours(spans, at)
            row["committed_unit_hours"] += sum(r.minimum_unit_hours for r in spans)
            row["used_unit_hours"] += max(r.unit_count for r in spans) * busy_hours(spans, at)
    data = [dict(r, **{k: round(r[k], 4) for k in ("unit_hours", "committed_unit_hours", "used_unit_hours")})
            for r in per_cluster.values()]
    total = round(sum(r["unit_hours"] for r in data), 4)
    report = {"object": "usage", "data": data, "total_unit_hours": total}
    if price_per_unit_hour is not None:
        report["price_per_unit_hour"] = price_per_unit_hour
        report["cost"] = round(total * price_per_unit_hour, 2)
    return report
