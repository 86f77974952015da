"""GPU time as the scheduler and the quotas count it, from `job_runs` (one row per attempt: start, last heartbeat,
end). A run still going counts up to now.

- **Decayed use** (fair share): each device-second counts 2^(−age / half_life), so a run's weight is the integral of
  that over the run, H/ln2 · (2^(−(now−end)/H) − 2^(−(now−start)/H)) device-seconds. Runs that ended more than
  twenty half-lives ago (a millionth) are not read.
- **GPU-hours in a rolling window** (the `gpu_hours` quota, GET /usage): device-hours inside [now − window, now]."""

from __future__ import annotations

import math
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, or_, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from common.models import JobRun

FORGET_AFTER_HALF_LIVES = 20
GPU_HOURS_WINDOW = timedelta(days=30)  # the `gpu_hours` quota's rolling window


def _until(now: datetime) -> ColumnElement[datetime]:
    """A run's end for counting: its end, or now while it runs (never after now)."""
    return func.least(func.coalesce(JobRun.ended_at, literal(now)), literal(now))


def _age_seconds(now: datetime, at: Any) -> ColumnElement[float]:
    return cast(func.extract("epoch", literal(now) - at), Float)


# One statement, built once (on the claim's path: building and compiling an expression per call cost more than
# the query). A run counts up to now while it runs; age is in seconds before :now.
_DECAYED_USE = text("""
    SELECT tenant_id, user_name,
           sum(devices * :scale * (
               power(2.0::float8, -extract(epoch from (:now - least(coalesce(ended_at, :now), :now)))::float8 / :h)
             - power(2.0::float8, -extract(epoch from (:now - started_at))::float8 / :h)))
    FROM job_runs
    WHERE tenant_id = ANY(:tenants) AND (ended_at IS NULL OR ended_at > :forget) AND started_at <= :now
    GROUP BY tenant_id, user_name
""")


def decayed_use(session: Session, tenant_ids: Collection[str], *, now: datetime,
                half_life_seconds: float) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Decayed device-seconds per tenant and per (tenant, user), for the given tenants."""
    if not tenant_ids:
        return {}, {}
    h = half_life_seconds
    rows = session.execute(_DECAYED_USE, {
        "tenants": list(tenant_ids), "now": now, "h": h, "scale": h / math.log(2),
        "forget": now - timedelta(seconds=h * FORGET_AFTER_HALF_LIVES)}).all()
    tenants: dict[str, float] = {}
    users: dict[tuple[str, str], float] = {}
    for tenant_id, user_name, total in rows:
        use = max(float(total or 0.0), 0.0)
        users[(tenant_id, user_name)] = use
        tenants[tenant_id] = tenants.get(tenant_id, 0.0) + use
    return tenants, users


def gpu_seconds_in_window(session: Session, tenant_id: str, *, now: datetime,
                          window: timedelta) -> dict[str, float]:
    """Device-seconds per user of the tenant inside [now − window, now]."""
    since = now - window
    start = case((JobRun.started_at > since, JobRun.started_at), else_=literal(since))
    seconds = JobRun.devices * func.greatest(_age_seconds(now, start) - _age_seconds(now, _until(now)), 0.0)
    rows = session.execute(
        select(JobRun.user_name, func.sum(seconds))
        .where(JobRun.tenant_id == tenant_id, or_(JobRun.ended_at.is_(None), JobRun.ended_at > since),
               and_(JobRun.started_at <= now))
        .group_by(JobRun.user_name)).all()
    return {user: float(total or 0.0) for user, total in rows}


def gpu_hours_used(session: Session, tenant_id: str, now: datetime) -> float:
    """Device-hours of the tenant in the rolling `GPU_HOURS_WINDOW`."""
    return sum(gpu_seconds_in_window(session, tenant_id, now=now, window=GPU_HOURS_WINDOW).values()) / 3600

