"""Quotas: limits a platform operator sets on a tenant (`tunequeue admin set-quota`, `PUT /tenants/{id}/quota`;
the same two set its fair-share weight, `set_weight`), stored on the tenant (`tenants.quotas`, limit name → value;
an absent limit does not apply), shown to the tenant with its current use (`GET /quota`). Where each is enforced:

- `max_queued`: jobs waiting (`validating_files` and `queued`): at `POST /jobs` (`check_can_queue`), 429.
- `max_running`: jobs running at once: at the claim (common/scheduling/claim.py), which passes the tenant over.
- `gpu_hours`: device-hours used in the rolling last 30 days (from `job_runs`): at `POST /jobs`, 429; and at the
  claim, so that jobs queued before the limit was reached wait until the window rolls past old use.
- `max_job_hours`: hours one job may run, all its attempts together: by the worker running it (worker/runner.py),
  which checkpoints it and fails it with `time_limit_exceeded`.
- `storage_gb`: uploaded files and published models, in GB (10⁹ bytes): at `POST /files` (`check_can_store`), 429.

A new job is counted under a lock on the tenant's row, taken only when the tenant has a `max_queued`: two
submissions at once cannot both take the last place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common import state
from common.errors import InvalidRequest, NotFound, QuotaExceeded
from common.models import File, Job, JobRun, Model, Tenant
from common.scheduling.usage import GPU_HOURS_WINDOW, gpu_hours_used, gpu_seconds_in_window

WAITING = ("validating_files", "queued")
GB = 10**9
MAX_WEIGHT = 1000.0
# name → (whole numbers only, what it limits)
LIMITS: dict[str, tuple[bool, str]] = {
    "max_running": (True, "jobs running at once"),
    "max_queued": (True, "jobs waiting to run (validating_files or queued) at once"),
    "gpu_hours": (False, "device-hours of training in the rolling last 30 days"),
    "max_job_hours": (False, "hours one job may train, all its attempts together"),
    "storage_gb": (False, "GB (10^9 bytes) of uploaded files and published models"),
}


def set_quotas(session: Session, tenant_id: str, values: dict[str, float | None]) -> Tenant:
    """Set (a number ≥ 0) or clear (None) each named limit of the tenant; the others stay as they are."""
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id!r}", param="tenant_id", code="tenant_not_found")
    quotas = dict(tenant.quotas or {})
    for name, value in values.items():
        if name not in LIMITS:
            raise InvalidRequest(f"unknown quota {name!r}; quotas are {', '.join(LIMITS)}", param=name)
        whole = LIMITS[name][0]
        if value is None:
            quotas.pop(name, None)
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
                or (whole and not isinstance(value, int)):
            kind = "a whole number" if whole else "a number"
            raise InvalidRequest(f"{name} must be {kind} ≥ 0, or null to remove it; got {value!r}", param=name)
        else:
            quotas[name] = value
    tenant.quotas = quotas
    session.flush()
    return tenant


def set_weight(session: Session, tenant_id: str, weight: float | None) -> Tenant:
    """The tenant's share of GPU time against the other tenants' (common/scheduling/policy.py); None: back to 1."""
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id!r}", param="tenant_id", code="tenant_not_found")
    if weight is not None and not 0 < weight <= MAX_WEIGHT:
        raise InvalidRequest(f"weight must be a number above 0 and at most {MAX_WEIGHT}, or null for the default "
                             f"1; got {weight!r}", param="weight")
    tenant.weight = 1.0 if weight is None else float(weight)
    session.flush()
    return tenant


def limits_of(session: Session, tenant_id: str) -> dict[str, Any]:
    return dict(session.scalar(select(Tenant.quotas).where(Tenant.id == tenant_id)) or {})


def waiting_jobs(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(WAITING))) or 0)


def running_jobs(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status == "running")) or 0)


def stored_bytes(session: Session, tenant_id: str) -> int:
    files = session.scalar(select(func.coalesce(func.sum(File.bytes), 0))
                           .where(File.tenant_id == tenant_id, File.deleted_at.is_(None)))
    models = session.scalar(select(func.coalesce(func.sum(Model.bytes), 0))
                            .where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None)))
    return int(files or 0) + int(models or 0)


def job_hours(session: Session, job_id: str, now: datetime | None = None) -> float:
    """Hours the job has trained, all its attempts together (a run still going counts up to now)."""
    until = func.coalesce(JobRun.ended_at, now or state.now())
    seconds = session.scalar(select(func.coalesce(func.sum(func.extract("epoch", until - JobRun.started_at)), 0))
                             .where(JobRun.job_id == job_id))
    return float(seconds or 0) / 3600


def over_job_hours(session: Session, job_id: str) -> bool:
    """Whether the job has trained its tenant's `max_job_hours` (false when the tenant has none)."""
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    limit = limits_of(session, tenant_id).get("max_job_hours") if tenant_id else None
    return limit is not None and job_hours(session, job_id) >= limit


def longest_running_job_hours(session: Session, tenant_id: str) -> float:
    running = session.scalars(select(Job.id).where(Job.tenant_id == tenant_id, Job.status == "running")).all()
    return max((job_hours(session, job_id) for job_id in running), default=0.0)


def usage(session: Session, tenant_id: str) -> dict[str, Any]:
    """The tenant's limits and what it uses of each now (`max_job_hours`: its longest-running job's hours)."""
    quotas = limits_of(session, tenant_id)
    weight = session.scalar(select(Tenant.weight).where(Tenant.id == tenant_id))
    return {"weight": weight if weight is not None else 1.0,
            "limits": {name: quotas.get(name) for name in LIMITS},
            "usage": {"max_running": running_jobs(session, tenant_id),
                      "max_queued": waiting_jobs(session, tenant_id),
                      "gpu_hours": round(gpu_hours_used(session, tenant_id, state.now()), 4),
                      "max_job_hours": round(longest_running_job_hours(session, tenant_id), 4),
                      "storage_gb": round(stored_bytes(session, tenant_id) / GB, 9)}}


def check_can_queue(session: Session, tenant_id: str) -> None:
    """429 `quota_exceeded` when the tenant already has its `max_queued` jobs waiting, or has used its `gpu_hours`.
    Locks the tenant's row until the caller's transaction ends (only when `max_queued` is set)."""
    quotas = limits_of(session, tenant_id)
    hours_limit = quotas.get("gpu_hours")
    if hours_limit is not None:
        used = gpu_hours_used(session, tenant_id, state.now())
        if used >= hours_limit:
            raise QuotaExceeded(
                f"Quota exceeded: this organization may train {hours_limit} GPU-hours in any 30 days and has used "
                f"{used:.2f}. Use frees up as the 30-day window moves past it (GET /usage shows it per user); the "
                f"platform operator sets the quota (gpu_hours).")
    limit = quotas.get("max_queued")
    if limit is None:
        return
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    waiting = waiting_jobs(session, tenant_id)
    if waiting >= limit:
        raise QuotaExceeded(
            f"Quota exceeded: this organization may have {limit} jobs waiting (validating_files or queued) and has "
            f"{waiting}. A place frees up when one of them starts running, or when you cancel one "
            f"(POST /jobs/{{id}}/cancel); the platform operator sets the quota (max_queued).")


def check_can_store(session: Session, tenant_id: str, incoming: int) -> None:
    """429 `quota_exceeded` when `incoming` more bytes would take the tenant over its `storage_gb`."""
    limit = limits_of(session, tenant_id).get("storage_gb")
    if limit is None:
        return
    # two uploads at once: the second counts the first once it is committed
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    stored = stored_bytes(session, tenant_id)
    if stored + incoming > limit * GB:
        raise QuotaExceeded(
            f"Quota exceeded: this organization may store {limit} GB of files and models, has {stored / GB:.3f} GB, "
            f"and this upload is {incoming / GB:.3f} GB more. Delete files (DELETE /files/{{id}}) or models "
            f"(DELETE /models/{{id}}) to make room; the platform operator sets the quota (storage_gb).",
            param="file")


def gpu_usage(session: Session, tenant_id: str) -> dict[str, Any]:
    """`GET /usage`: device-hours in the rolling window, in all and per user (most first)."""
    by_user = gpu_seconds_in_window(session, tenant_id, now=state.now(), window=GPU_HOURS_WINDOW)
    users = sorted(((user, seconds / 3600) for user, seconds in by_user.items()), key=lambda u: (-u[1], u[0]))
    return {"window_days": GPU_HOURS_WINDOW.days, "gpu_hours": round(sum(h for _, h in users), 4),
            "gpu_hours_limit": limits_of(session, tenant_id).get("gpu_hours"),
            "users": [{"user": user, "gpu_hours": round(hours, 4)} for user, hours in users]}
