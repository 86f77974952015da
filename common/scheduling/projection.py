"""When will it start: the queue's order under the real policy, projected forward, and each queued job's estimated
start. The maintenance pass (worker/maintenance.py) refreshes it for its pool every few seconds and stores
`jobs.queue_position` and `jobs.estimated_start_at`, which the job object shows.

The projection replays the claim. A slot is a worker: it runs one job at a time whatever its devices, and takes only
jobs of at most its devices (`resources.devices`), as the claim's filter does (claim.py). Workers free up when their
running jobs end (their progress ETA, or their start plus the expected run time), and each time one does, the policy
(policy.py) picks among the heads of the queue that this worker can run — per tenant, user and priority, the oldest
job of at most its devices, as the claim's candidates are — with the picked job's expected run time, times its
devices, charged to its tenant's and user's use and its tenant marked served. A worker no remaining job fits stays
idle: with no new submissions, none will come. The expected run time of a job that has not run is the median run
time of the pool's jobs that succeeded in the last 7 days (30 minutes when there are none): TuneQueue does not know a
job's speed before it trains. Only the first `PROJECTED` jobs are projected; those behind them, and jobs no worker
has the devices for, keep the position a first-come count gives them.

It assumes every worker can hold every job its devices allow (placement by memory and libraries can only make a job
wait longer), no new submissions and no preemption: an estimate, refreshed as those happen."""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from common.scheduling.policy import Aging, Candidate, Weighing, choose

PROJECTED = 1000
DEFAULT_RUN_SECONDS = 1800.0


@dataclass(frozen=True)
class Projected:
    position: int  # 1: the next job to start
    start_at: datetime


@dataclass(frozen=True)
class Slot:
    """A worker of the pool: when it is next free (now for an idle one) and how many devices it has."""

    free_at: datetime
    devices: int = 1


def project(queued: Sequence[Candidate], weighing: Weighing, aging: Aging, now: datetime, *,
            workers: Sequence[Slot], run_seconds: float, needs_devices: Mapping[str, int] | None = None,
            limit: int = PROJECTED) -> dict[str, Projected]:
    """Each of the first `limit` queued jobs' position and estimated start. `workers`: the pool's workers, each one
    slot; `needs_devices`: each job's `resources.devices` (absent: 1)."""
    needs = needs_devices or {}
    # per (tenant, user, priority), per device count, the jobs oldest first: a worker's head of a group is the
    # oldest of the deques of at most its devices
    groups: dict[tuple[str, str, int], dict[int, deque[Candidate]]] = defaultdict(lambda: defaultdict(deque))
    for job in sorted(queued, key=lambda c: (c.created_at, c.job_id)):
        groups[(job.tenant_id, job.user_name, job.priority)][needs.get(job.job_id, 1)].append(job)
    # at a tie the worker of fewer devices claims first, leaving the larger one to the jobs only it can run
    free = [(max(w.free_at, now), w.devices, i) for i, w in enumerate(workers)]
    heapq.heapify(free)
    tenant_use, user_use = dict(weighing.tenant_use), dict(weighing.user_use)
    served = dict(weighing.last_served)
    out: dict[str, Projected] = {}
    while groups and free and len(out) < limit:
        at, devices, i = heapq.heappop(free)
        heads = {}
        for by_devices in groups.values():
            fitting = [jobs[0] for n, jobs in by_devices.items() if n <= devices]
            if fitting:
                head = min(fitting, key=lambda c: (c.created_at, c.job_id))
                heads[head.job_id] = head
        if not heads:
            continue  # nothing left fits this worker: it stays idle
        state = replace(weighing, tenant_use=tenant_use, user_use=user_use, last_served=served)
        best = choose(list(heads.values()), state, aging, at)
        assert best is not None
        key, n = (best.tenant_id, best.user_name, best.priority), needs.get(best.job_id, 1)
        groups[key][n].popleft()
        if not groups[key][n]:
            del groups[key][n]
            if not groups[key]:
                del groups[key]
        out[best.job_id] = Projected(position=len(out) + 1, start_at=at)
        used = run_seconds * n  # device-seconds, as fair share counts them
        tenant_use[best.tenant_id] = tenant_use.get(best.tenant_id, 0.0) + used
        user_use[(best.tenant_id, best.user_name)] = user_use.get((best.tenant_id, best.user_name), 0.0) + used
        served[best.tenant_id] = at
        heapq.heappush(free, (at + timedelta(seconds=run_seconds), devices, i))
    return out
