"""The scheduling policy measured (issue 14, "Measured, not hoped"): the real claim (common/scheduling/claim.py) and
the real state machine against Postgres, driven by simulated workers and jobs on a simulated clock.

Workload (seeded): tenant A submits a sweep of 200 jobs within its first hour; tenants B and C submit 5 jobs each at
random times over the first 36 hours; every job trains for a random 10–90 minutes on one of `--workers` devices.
Each time a device frees up, its worker claims the best job for it, exactly as a woken worker does.

Printed, for the policy and, on the same workload, for first-come-first-served (the queue before issue 14):
- each tenant's wait (claim − submission) p50 / p95 / max, in hours;
- Jain's fairness index of GPU time among backlogged tenants. GPU time each tenant got is compared with its
  max-min fair share (the water-filling of the devices over the tenants' demands, jobs queued or running, at each
  moment at least two tenants have demand): x_i = received ÷ fair share, J = (Σx)² ÷ (n·Σx²), 1 = perfectly fair;
- the starvation bounds of docs/scheduling.md: a tenant with a job waiting goes unserved at most T·Σw/w + ⌈n/G⌉·D
  (T tenant aging, w weights, n tenants, G devices, D the longest job); within a tenant a job is passed only by jobs
  submitted less than 3P after it (P priority aging); so a job waits at most (k + 1) times the first bound, k its
  tenant's jobs that may go before it. Shown: each tenant's longest time unserved against the bound, the longest
  same-tenant overtaking, and the largest wait ÷ its own bound (≤ 1 when the bounds hold);
- the claim's latency (wall clock, including its commit) during the run, and with 10,000 jobs queued (20 tenants ×
  5 users × 3 priorities, 2,000 runs of history), each claim rolled back so that the queue stays at 10,000.

    .venv/bin/python benchmarks/scheduler_sim.py [--workers 4] [--seed 1] [--repeats 3] [--json]

Each repeat runs on a fresh scratch database (benchmarks/scratch_db.py) beside TUNEQUEUE_DATABASE_URL's.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scratch_db import drop_database, scratch_database  # noqa: E402

POOL = "tunequeue.sim"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3600.0


@dataclass
class SimJob:
    tenant: str
    submit: float  # simulated seconds since EPOCH
    duration: float
    id: str = ""
    start: float | None = None


@dataclass
class Clock:
    t: float = 0.0

    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)


def workload(seed: int) -> list[SimJob]:
    rng = random.Random(seed)
    jobs = [SimJob("A", rng.uniform(0, HOUR), rng.uniform(10, 90) * 60) for _ in range(200)]
    for tenant in ("B", "C"):
        jobs += [SimJob(tenant, rng.uniform(0, 36 * HOUR), rng.uniform(10, 90) * 60) for _ in range(5)]
    return sorted(jobs, key=lambda j: j.submit)


def make_tenant() -> str:
    import secrets

    from common import auth
    from common.db import session_scope

    with session_scope() as session:
        return auth.create_tenant(session, f"sim-{secrets.token_hex(6)}").id


def fifo(candidates: Sequence[Any], *_: Any) -> Any:
    """The queue before issue 14: the oldest job first, whoever submitted it."""
    return min(candidates, key=lambda c: (c.created_at, c.job_id)) if candidates else None


@dataclass
class Tally:
    """Demand and service per tenant over simulated time, for Jain's index."""

    workers: int
    received: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    fair: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, dt: float, running: dict[str, int], demand: dict[str, int]) -> None:
        active = {t: d for t, d in demand.items() if d > 0}
        if dt <= 0 or len(active) < 2:
            return
        for tenant, share in waterfill(active, self.workers).items():
            self.fair[tenant] += share * dt
            self.received[tenant] += running.get(tenant, 0) * dt

    def jain(self) -> float:
        x = [self.received[t] / self.fair[t] for t in self.fair if self.fair[t] > 0]
        return sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if x else 1.0


def waterfill(demand: dict[str, int], capacity: float) -> dict[str, float]:
    """Max-min fair shares of `capacity` devices (equal weights), no tenant given more than its demand."""
    share: dict[str, float] = {}
    left, open_ = capacity, dict(demand)
    while open_ and left > 1e-9:
        each = left / len(open_)
        capped = {t: d for t, d in open_.items() if d <= each}
        if not capped:
            share.update({t: each for t in open_})
            return share
        for t, d in capped.items():
            share[t] = d
            left -= d
            del open_[t]
    share.update({t: 0.0 for t in open_})
    return share


def simulate(jobs: list[SimJob], workers: int, choose: Callable[..., Any] | None) -> dict[str, Any]:
    """Run the workload through the real claim; returns waits, Jain's index, overtaking and claim latencies."""
    from common import state
    from common.db import session_scope
    from common.ids import new_id
    from common.models import File, Job
    from common.scheduling import claim as claim_module
    from common.settings import get_settings

    settings = get_settings().model_copy(update={"celery_queue": POOL})
    clock = Clock()
    state.now = clock.now  # type: ignore[assignment]  # the state machine's clock is the simulation's
    original = claim_module.choose
    if choose is not None:
        claim_module.choose = choose
    tenants = {name: make_tenant() for name in ("A", "B", "C")}
    files = {}
    with session_scope() as session:
        for name, tenant_id in tenants.items():
            files[name] = File(id=new_id("file"), tenant_id=tenant_id, filename="sim.jsonl", storage_key="sim",
                               status="processed", format="chat", stages=["sft"], row_count=1)
            session.add(files[name])
    by_id: dict[str, SimJob] = {}
    events: list[tuple[float, int, str, Any]] = []  # (time, order, kind, payload)
    for i, job in enumerate(jobs):
        heapq.heappush(events, (job.submit, i, "submit", job))
    free = [f"sim-{w}" for w in range(workers)]
    running: dict[str, int] = defaultdict(int)
    demand: dict[str, int] = defaultdict(int)
    tally, latencies, order = Tally(workers), [], len(jobs)
    try:
        while events:
            t, _, kind, payload = heapq.heappop(events)
            tally.add(t - clock.t, running, demand)
            clock.t = t
            if kind == "submit":
                job = payload
                job.id = new_id("ftjob")
                by_id[job.id] = job
                with session_scope() as session:
                    session.add(Job(id=job.id, tenant_id=tenants[job.tenant], base_model="sim",
                                    training_file_id=files[job.tenant].id, spec={}, status="queued",
                                    created_at=clock.now(), queue=POOL))
                demand[job.tenant] += 1
            else:
                worker, job = payload
                with session_scope() as session:
                    assert state.finish(session, job.id, 1, "succeeded")
                running[job.tenant] -= 1
                demand[job.tenant] -= 1
                free.append(worker)
            while free:
                started = time.perf_counter()
                with session_scope() as session:
                    got = claim_module.claim_next(session, queue=POOL, worker=free[-1], settings=settings,
                                                  now=clock.now())
                latencies.append(time.perf_counter() - started)
                if got is None:
                    break
                job = by_id[got[0]]
                job.start = clock.t
                running[job.tenant] += 1
                order += 1
                heapq.heappush(events, (clock.t + job.duration, order, "finish", (free.pop(), job)))
    finally:
        claim_module.choose = original
    return {"waits": waits(jobs), "jain": tally.jain(), "unserved_h": longest_unserved(jobs),
            "unserved_bound_h": gap_bound_hours(jobs, workers, settings),
            "same_tenant_overtaking_h": same_tenant_overtaking(jobs), "wait_bound": wait_bound(jobs, workers, settings),
            "claim_ms": millis(latencies)}


def waits(jobs: list[SimJob]) -> dict[str, dict[str, float]]:
    out = {}
    for tenant in ("A", "B", "C"):
        w = sorted(((j.start or 0) - j.submit) / HOUR for j in jobs if j.tenant == tenant)
        out[tenant] = {"p50": statistics.median(w), "p95": w[min(len(w) - 1, round(0.95 * (len(w) - 1)))],
                       "max": w[-1]}
    return out


def same_tenant_overtaking(jobs: list[SimJob]) -> float:
    """The longest time by which a job of the same tenant submitted later started earlier, in hours (the policy
    bounds it by 3 × priority aging)."""
    worst = 0.0
    for j in jobs:
        for k in jobs:
            if k.tenant == j.tenant and k.submit > j.submit and (k.start or 0) < (j.start or 0):
                worst = max(worst, k.submit - j.submit)
    return worst / HOUR


def gap_bound_hours(jobs: list[SimJob], workers: int, settings: Any, tenants: int = 3) -> float:
    """How long a tenant with waiting jobs can go unserved (docs/scheduling.md): T·Σw/w, then at most one start of
    each other tenant, ⌈n ÷ devices⌉ of the longest job."""
    longest = max(j.duration for j in jobs) / HOUR
    return tenants * settings.tenant_aging_hours + -(-tenants // workers) * longest


def longest_unserved(jobs: list[SimJob]) -> dict[str, float]:
    """Per tenant, the longest it went unserved while it had a job waiting (from its last start, or from the
    arrival of its oldest waiting job if later, to its next start), in hours."""
    out = {}
    for tenant in ("A", "B", "C"):
        own = sorted((j for j in jobs if j.tenant == tenant), key=lambda j: j.start or 0)
        last, worst = float("-inf"), 0.0
        for j in own:
            s = j.start or 0
            oldest = min(k.submit for k in own if k.submit <= s and (k.start or 0) >= s)
            worst = max(worst, s - max(last, oldest))
            last = s
        out[tenant] = worst / HOUR
    return out


def wait_bound(jobs: list[SimJob], workers: int, settings: Any) -> dict[str, float]:
    """Each job's wait against its bound, (jobs of its tenant that may go before it + 1) × the unserved bound, where
    those that may go before it are the tenant's jobs already waiting when it arrived or submitted within 3 ×
    priority aging after it. Returns the largest ratio and that job's wait and bound, in hours."""
    gap = gap_bound_hours(jobs, workers, settings) * HOUR
    window = 3 * settings.priority_aging_hours * HOUR
    worst = {"ratio": 0.0, "wait_h": 0.0, "bound_h": 0.0}
    for j in jobs:
        ahead = sum(1 for k in jobs if k is not j and k.tenant == j.tenant and (k.start or 0) >= j.submit
                    and k.submit <= j.submit + window and (k.start or 0) <= (j.start or 0))
        wait, bound = (j.start or 0) - j.submit, (ahead + 1) * gap
        if wait / bound > worst["ratio"]:
            worst = {"ratio": wait / bound, "wait_h": wait / HOUR, "bound_h": bound / HOUR}
    return worst


def millis(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    pick = lambda q: ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]  # noqa: E731
    return {"n": len(ms), "p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": ms[-1]}


def claim_latency_at_scale(queued: int = 10_000, claims: int = 300) -> dict[str, float]:
    """Claims against `queued` waiting jobs (20 tenants × 5 users × 3 priorities) and 2,000 runs of history; each
    claim is rolled back, so every one sees the full queue."""
    from sqlalchemy import insert

    from common import state
    from common.db import session_factory, session_scope
    from common.ids import new_id
    from common.models import File, Job, JobRun
    from common.scheduling.claim import claim_next
    from common.settings import get_settings

    state.now = lambda: datetime.now(UTC)  # type: ignore[assignment]
    settings = get_settings().model_copy(update={"celery_queue": f"{POOL}.scale"})
    rng = random.Random(7)
    now = datetime.now(UTC)
    tenants = [make_tenant() for _ in range(20)]
    with session_scope() as session:
        files = {t: new_id("file") for t in tenants}
        session.execute(insert(File), [{"id": f, "tenant_id": t, "filename": "x", "storage_key": "x",
                                        "status": "processed", "format": "chat", "stages": ["sft"], "row_count": 1}
                                       for t, f in files.items()])
        rows = []
        for i in range(queued):
            t = tenants[i % 20]
            rows.append({"id": new_id("ftjob"), "tenant_id": t, "user_name": f"u{rng.randrange(5)}",
                         "priority": rng.randrange(3), "base_model": "sim", "training_file_id": files[t], "spec": {},
                         "status": "queued", "attempt": 0, "queue": settings.celery_queue,
                         "created_at": now - timedelta(seconds=rng.uniform(0, 86400))})
        session.execute(insert(Job), rows)
        done = [{"id": new_id("ftjob"), "tenant_id": t, "base_model": "sim", "training_file_id": files[t],
                 "spec": {}, "status": "succeeded", "attempt": 1, "queue": "history"}
                for t in (tenants[i % 20] for i in range(2000))]
        session.execute(insert(Job), done)
        history = []
        for d in done:
            end = now - timedelta(seconds=rng.uniform(0, 86400))
            history.append({"job_id": d["id"], "attempt": 1, "tenant_id": d["tenant_id"], "user_name": "u0",
                            "queue": "history", "worker": "w", "started_at": end - timedelta(minutes=30),
                            "last_seen_at": end, "ended_at": end})
        session.execute(insert(JobRun), history)
    with session_scope() as session:
        from sqlalchemy import text

        session.execute(text("ANALYZE jobs; ANALYZE job_runs"))
    latencies = []
    make = session_factory()
    for _ in range(claims):
        session = make()
        started = time.perf_counter()
        got = claim_next(session, queue=settings.celery_queue, worker="sim-scale", settings=settings)
        session.flush()
        latencies.append(time.perf_counter() - started)
        session.rollback()
        session.close()
        assert got is not None
    return millis(latencies)


def one_run(workers: int, seed: int) -> dict[str, Any]:
    url, handle = scratch_database()
    os.environ["TUNEQUEUE_DATABASE_URL"] = url
    from common.db import get_engine
    from common.db_setup import upgrade_database
    from common.settings import get_settings

    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        upgrade_database(url)
        policy = simulate(workload(seed), workers, None)
        baseline = simulate(workload(seed), workers, fifo)
        scale = claim_latency_at_scale()
        return {"policy": policy, "fifo": baseline, "claim_ms_10k_queued": scale}
    finally:
        get_engine().dispose()
        get_engine.cache_clear()
        drop_database(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from benchmarks.api_load import machine

    results = [one_run(args.workers, args.seed + r) for r in range(args.repeats)]
    if args.json:
        print(json.dumps({"machine": machine(), "workers": args.workers, "runs": results}, indent=2))
        return
    print(f"machine: {machine()}; {args.workers} simulated devices; seeds {args.seed}..{args.seed + args.repeats - 1}")
    for i, r in enumerate(results):
        print(f"--- seed {args.seed + i}")
        for name in ("policy", "fifo"):
            p = r[name]
            w = "  ".join(f"{t}: p50 {v['p50']:.2f} p95 {v['p95']:.2f} max {v['max']:.2f}"
                          for t, v in p["waits"].items())
            print(f"{name:6} waits (h) {w}")
            gaps = " ".join(f"{t} {h:.2f}" for t, h in p["unserved_h"].items())
            print(f"{'':6} Jain {p['jain']:.3f}  longest unserved (h) {gaps} (bound {p['unserved_bound_h']:.1f})  "
                  f"same-tenant overtaking {p['same_tenant_overtaking_h']:.2f} h  worst wait/bound "
                  f"{p['wait_bound']['ratio']:.3f} ({p['wait_bound']['wait_h']:.2f} h of "
                  f"{p['wait_bound']['bound_h']:.1f} h)")
            print(f"{'':6} claim ms p50 {p['claim_ms']['p50']:.2f} p95 {p['claim_ms']['p95']:.2f} "
                  f"(n={p['claim_ms']['n']})")
        s = r["claim_ms_10k_queued"]
        print(f"claim with 10,000 queued: p50 {s['p50']:.2f} ms  p95 {s['p95']:.2f} ms  p99 {s['p99']:.2f} ms  "
              f"max {s['max']:.2f} ms (n={s['n']})")


if __name__ == "__main__":
    main()
