"""The order of the queue, as a pure function of the waiting jobs, the use each tenant and user has had, the
tenants' weights and the time. docs/scheduling.md states it, with the bound on the longest wait it implies.

1. **Tenant**, by fair share: the tenant whose share of recent GPU time (among the tenants that have a job waiting),
   divided by its share of their weights, is lowest goes first. That key falls by one for every `tenant_aging` the
   tenant has gone unserved: since its last job started in this pool, or since its oldest waiting job arrived if that
   is later. So no tenant waits forever behind tenants that have used less; and a tenant's own backlog earns it
   nothing (it is served often, so it never goes unserved for long).
2. **Job within the tenant**, by priority: `2 - priority` (high 0, normal 1, low 2; PRIORITIES in
   common/schemas/job_spec.py), plus its user's share of the
   tenant's recent GPU time less an equal share (a number in (-1, 1): the same fair share between users), less one
   for every `priority_aging` the job has waited. Priority therefore outranks the users' shares, and age outranks
   priority in time: a low job that has waited `2 × priority_aging` is ahead of a high job that has just come.
3. Ties: the older job, then the smaller id.

Use is *decayed* GPU time (device-seconds, halved every `half_life`; usage.py), so that last week's sweep does not
count against a tenant today."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Candidate:
    """A job a worker could claim now."""

    job_id: str
    tenant_id: str
    user_name: str
    priority: int
    created_at: datetime


@dataclass(frozen=True)
class Weighing:
    """What the policy weighs besides the jobs: decayed use per tenant and per (tenant, user), in device-seconds,
    and each tenant's weight (absent: 1)."""

    tenant_use: Mapping[str, float]
    user_use: Mapping[tuple[str, str], float]
    weights: Mapping[str, float]
    last_served: Mapping[str, datetime] = field(default_factory=dict)  # each tenant's last start in the pool


@dataclass(frozen=True)
class Aging:
    tenant_seconds: float  # a tenant's key falls by one per this much waiting of its oldest job
    priority_seconds: float  # a job gains one priority level per this much waiting


def _shares(use: Mapping[str, float], keys: Iterable[str]) -> dict[str, float]:
    """Each key's fraction of the total use among `keys` (all 0 when nobody has used anything)."""
    keys = list(keys)
    total = sum(use.get(k, 0.0) for k in keys)
    return {k: (use.get(k, 0.0) / total if total > 0 else 0.0) for k in keys}


def tenant_keys(candidates: Sequence[Candidate], weighing: Weighing, aging: Aging,
                now: datetime) -> dict[str, float]:
    """Lower goes first: (share of use ÷ share of weight) − (time unserved ÷ tenant aging)."""
    oldest: dict[str, datetime] = {}
    for c in candidates:
        if c.tenant_id not in oldest or c.created_at < oldest[c.tenant_id]:
            oldest[c.tenant_id] = c.created_at
    shares = _shares(weighing.tenant_use, oldest)
    total_weight = sum(weighing.weights.get(t, 1.0) for t in oldest)

    def unserved(t: str) -> float:
        since = max(oldest[t], weighing.last_served.get(t, oldest[t]))
        return max((now - since).total_seconds(), 0.0)

    return {t: shares[t] / (weighing.weights.get(t, 1.0) / total_weight) - unserved(t) / aging.tenant_seconds
            for t in oldest}


def job_keys(candidates: Sequence[Candidate], weighing: Weighing, aging: Aging,
             now: datetime) -> dict[str, float]:
    """Within one tenant's candidates, lower goes first: (2 − priority) + (user's share − equal share) − wait ÷
    priority aging."""
    users = {c.user_name for c in candidates}
    tenant = candidates[0].tenant_id
    shares = _shares({u: weighing.user_use.get((tenant, u), 0.0) for u in users}, users)
    equal = 1.0 / len(users)
    return {c.job_id: (2 - c.priority) + (shares[c.user_name] - equal)
            - (now - c.created_at).total_seconds() / aging.priority_seconds for c in candidates}


def choose(candidates: Sequence[Candidate], weighing: Weighing, aging: Aging, now: datetime) -> Candidate | None:
    """The job to run next, or None when there is none."""
    if not candidates:
        return None
    by_tenant: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_tenant[c.tenant_id].append(c)
    t_keys = tenant_keys(candidates, weighing, aging, now)
    tenant = min(by_tenant, key=lambda t: (t_keys[t], min(c.created_at for c in by_tenant[t]), t))
    own = by_tenant[tenant]
    j_keys = job_keys(own, weighing, aging, now)
    return min(own, key=lambda c: (j_keys[c.job_id], c.created_at, c.job_id))
