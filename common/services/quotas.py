"""Quotas: limits a platform operator sets on a tenant (`tunequeue admin set-quota`, `PUT /tenants/{id}/quota`),
stored on the tenant (`tenants.quotas`, limit name → value; an absent limit does not apply), shown to the tenant
with its current use (`GET /quota`).

- `max_queued`: the tenant's jobs waiting (`validating_files` and `queued`); enforced at `POST /jobs`
  (`check_can_queue`): 429 `quota_exceeded`.

A new job is counted under a lock on the tenant's row, taken only when the tenant has a `max_queued`: two
submissions at once cannot both take the last place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import InvalidRequest, NotFound, QuotaExceeded
from common.models import Job, Tenant

WAITING = ("validating_files", "queued")
LIMITS = {"max_queued": "jobs waiting to run (validating_files or queued) at once"}


def set_quotas(session: Session, tenant_id: str, values: dict[str, int | None]) -> Tenant:
    """Set (a number ≥ 0) or clear (None) each named limit of the tenant; the others stay as they are."""
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise NotFound(f"no tenant with id {tenant_id!r}", param="tenant_id", code="tenant_not_found")
    quotas = dict(tenant.quotas or {})
    for name, value in values.items():
        if name not in LIMITS:
            raise InvalidRequest(f"unknown quota {name!r}; quotas are {', '.join(LIMITS)}", param=name)
        if value is None:
            quotas.pop(name, None)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"{name} must be a whole number ≥ 0, or null to remove it; got {value!r}",
                                 param=name)
        else:
            quotas[name] = value
    tenant.quotas = quotas
    session.flush()
    return tenant


def waiting_jobs(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.in_(WAITING))) or 0)


def usage(session: Session, tenant_id: str) -> dict[str, Any]:
    """The tenant's limits and what it uses of each now."""
    tenant = session.get(Tenant, tenant_id)
    quotas = dict(tenant.quotas or {}) if tenant is not None else {}
    return {"limits": {name: quotas.get(name) for name in LIMITS},
            "usage": {"max_queued": waiting_jobs(session, tenant_id)}}


def check_can_queue(session: Session, tenant_id: str) -> None:
    """429 `quota_exceeded` when the tenant already has its `max_queued` jobs waiting. Locks the tenant's row
    until the caller's transaction ends (only when that limit is set)."""
    limit = (session.scalar(select(Tenant.quotas).where(Tenant.id == tenant_id)) or {}).get("max_queued")
    if limit is None:
        return
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    waiting = waiting_jobs(session, tenant_id)
    if waiting >= limit:
        raise QuotaExceeded(
            f"Quota exceeded: this organization may have {limit} jobs waiting (validating_files or queued) and has "
            f"{waiting}. A place frees up when one of them starts running, or when you cancel one "
            f"(POST /jobs/{{id}}/cancel); the platform operator sets the quota (max_queued).")
