"""The claim: a woken worker takes the best job *it* can run from its pool (its broker queue), whatever job id the
message that woke it carried (the broker is a doorbell; docs/scheduling.md).

One transaction: a per-pool advisory lock (claims of one pool are serialised, so two workers never weigh the same
queue at once and a tenant's `max_running` holds), the candidates (per tenant, user and priority, the oldest queued
job: the only ones the policy can pick, read from the partial index `ix_jobs_claimable`), the tenants' weights,
running counts and decayed use, the policy's choice (policy.py), and `state.claim` on it. A worker weighs only the
jobs it can run: enough memory and libraries, and at least the job's `resources.devices` (placement.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common import state
from common.models import Job
from common.scheduling.placement import Fit
from common.scheduling.policy import Aging, Candidate, Weighing, choose
from common.scheduling.usage import decayed_use, gpu_hours_used
from common.settings import Settings

# The oldest queued job of each (tenant, user, priority) of the pool that the claiming device can run (placement by
# fit: common/scheduling/placement.py). A loose index scan of `ix_jobs_claimable`: one index probe per group, each
# starting past the group before, instead of reading every queued job (DISTINCT ON reads all 10,000 of a long
# queue).
# A job of N devices (resources.devices) needs a worker of at least N; on a CPU its N ranks share the host's memory.
_FITS = """
    AND needs_devices <= :devices
    AND (CASE :kind WHEN 'cuda' THEN coalesce(needs_cuda_bytes, 0)
         WHEN 'cpu' THEN coalesce(needs_cpu_bytes, 0) * needs_devices ELSE 0 END) <= :memory
    AND (:bitsandbytes OR NOT needs_bitsandbytes) AND (:flash_attention OR NOT needs_flash_attention)"""
_CANDIDATES = text(f"""
    WITH RECURSIVE heads AS (
        (SELECT id, tenant_id, user_name, priority, created_at FROM jobs
         WHERE queue = :queue AND status = 'queued' AND NOT cancel_requested {_FITS}
         ORDER BY tenant_id, user_name, priority, created_at, id LIMIT 1)
        UNION ALL
        SELECT next.* FROM heads, LATERAL (
            SELECT id, tenant_id, user_name, priority, created_at FROM jobs
            WHERE queue = :queue AND status = 'queued' AND NOT cancel_requested {_FITS}
              AND (tenant_id, user_name, priority) > (heads.tenant_id, heads.user_name, heads.priority)
            ORDER BY tenant_id, user_name, priority, created_at, id LIMIT 1) AS next
    )
    SELECT id, tenant_id, user_name, priority, created_at FROM heads
""")  # noqa: S608 — _FITS is a constant; every value is a bound parameter
ANY_DEVICE = Fit(kind="any", memory_bytes=2**62, bitsandbytes=True, flash_attention=True, devices=2**30)


def candidates(session: Session, queue: str, fit: Fit = ANY_DEVICE) -> list[Candidate]:
    params = {"queue": queue, "kind": fit.kind, "memory": fit.memory_bytes, "bitsandbytes": fit.bitsandbytes,
              "flash_attention": fit.flash_attention, "devices": fit.devices}
    return [Candidate(job_id=r.id, tenant_id=r.tenant_id, user_name=r.user_name, priority=r.priority,
                      created_at=r.created_at) for r in session.execute(_CANDIDATES, params)]


def aging(settings: Settings) -> Aging:
    return Aging(tenant_seconds=settings.tenant_aging_hours * 3600,
                 priority_seconds=settings.priority_aging_hours * 3600)


# The candidates' tenants: weight, quotas and last start in the pool (`ix_job_runs_queue_tenant_id_started_at`: one
# index probe each), in one round trip.
_TENANTS = text("""
    SELECT t.id, t.weight, t.quotas,
           (SELECT max(r.started_at) FROM job_runs r WHERE r.queue = :queue AND r.tenant_id = t.id)
    FROM tenants t WHERE t.id = ANY(:ids)
""")


@dataclass(frozen=True)
class Tenants:
    """What the claim reads of the candidates' tenants, in one query: weights and quotas."""

    weights: dict[str, float]
    quotas: dict[str, dict[str, Any]]

    last_served: dict[str, datetime]  # each tenant's latest start in the pool

    @classmethod
    def read(cls, session: Session, tenant_ids: set[str], queue: str) -> Tenants:
        weights, quotas, served = {}, {}, {}
        for tenant, weight, limits, last in session.execute(_TENANTS, {"ids": list(tenant_ids), "queue": queue}):
            weights[tenant], quotas[tenant] = weight, limits or {}
            if last is not None:
                served[tenant] = last
        return cls(weights=weights, quotas=quotas, last_served=served)


def weighing(session: Session, tenants: Tenants, settings: Settings, now: datetime) -> Weighing:
    tenant_use, user_use = decayed_use(session, set(tenants.weights), now=now,
                                       half_life_seconds=settings.fair_share_half_life_hours * 3600)
    return Weighing(tenant_use=tenant_use, user_use=user_use, weights=tenants.weights,
                    last_served=tenants.last_served)


def held_back(session: Session, tenants: Tenants, now: datetime) -> set[str]:
    """The tenants whose quotas hold their jobs back now: `max_running` jobs already run, or the `gpu_hours` of
    the rolling 30 days are used up (common/services/quotas.py)."""
    limits = {t: q for t, q in tenants.quotas.items() if "max_running" in q or "gpu_hours" in q}
    if not limits:
        return set()
    running = {t: n for t, n in session.execute(
        select(Job.tenant_id, func.count()).where(Job.tenant_id.in_(limits), Job.status == "running")
        .group_by(Job.tenant_id))}

    def holds(tenant: str, quotas: dict[str, Any]) -> bool:
        if "max_running" in quotas and running.get(tenant, 0) >= quotas["max_running"]:
            return True
        return "gpu_hours" in quotas and gpu_hours_used(session, tenant, now) >= quotas["gpu_hours"]

    return {tenant for tenant, quotas in limits.items() if holds(tenant, quotas)}


def claimable(session: Session, queue: str, settings: Settings, now: datetime,
              fit: Fit = ANY_DEVICE) -> tuple[list[Candidate], Weighing]:
    """The candidates of the pool that `fit` can run and whose tenants' quotas let them run now, and what the
    policy weighs them by."""
    found = candidates(session, queue, fit)
    if not found:
        return [], Weighing(tenant_use={}, user_use={}, weights={})
    tenants = Tenants.read(session, {c.tenant_id for c in found}, queue)
    held = held_back(session, tenants, now)
    if held:
        found = [c for c in found if c.tenant_id not in held]
        tenants = Tenants(weights={t: w for t, w in tenants.weights.items() if t not in held},
                          quotas={t: q for t, q in tenants.quotas.items() if t not in held},
                          last_served=tenants.last_served)
    return found, weighing(session, tenants, settings, now)


def claim_next(session: Session, *, queue: str, worker: str, settings: Settings, now: datetime | None = None,
               fit: Fit = ANY_DEVICE) -> tuple[str, int] | None:
    """Claim the best job of `queue` that `worker`'s device (`fit`) can run: (job id, attempt), or None when there
    is none."""
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"tunequeue.claim:{queue}"))))
    now = now or state.now()
    found, weights = claimable(session, queue, settings, now, fit)
    rules = aging(settings)
    while found:
        best = choose(found, weights, rules, now)
        assert best is not None
        attempt = state.claim(session, best.job_id, worker=worker, lease_seconds=settings.lease_seconds)
        if attempt is not None:
            return best.job_id, attempt
        found = [c for c in found if c.job_id != best.job_id]  # cancelled under us: the next best
    return None
