"""The projection (projection.py) fed from Postgres and stored back: for one pool, the queued jobs and the devices
each needs, the use and weights the claim weighs (claim.py), the pool's workers (from the devices they registered)
and when the jobs running on them are expected to end; then each projected job's `queue_position` and
`estimated_start_at`. Run by the maintenance pass (worker/maintenance.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from math import ceil
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.models import Job, JobRun, Worker
from common.scheduling.claim import ANY_DEVICE, Tenants, aging, weighing
from common.scheduling.policy import Candidate
from common.scheduling.projection import DEFAULT_RUN_SECONDS, Slot, project
from common.settings import Settings

RECENT = timedelta(days=7)  # the run times the expected one is the median of; workers seen this recently count


def expected_run_seconds(session: Session, queue: str, now: datetime) -> float:
    median = session.scalar(
        select(func.percentile_cont(0.5).within_group(func.extract("epoch", JobRun.ended_at - JobRun.started_at)))
        .where(JobRun.queue == queue, JobRun.end_reason == "succeeded", JobRun.ended_at > now - RECENT))
    return float(median) if median else DEFAULT_RUN_SECONDS


def _expected_end(started_at: datetime | None, progress: dict[str, Any] | None, run_seconds: float,
                  now: datetime) -> datetime:
    if progress and progress.get("eta_seconds") is not None and progress.get("updated_at"):
        return datetime.fromtimestamp(float(progress["updated_at"]) + float(progress["eta_seconds"]), tz=now.tzinfo)
    return (started_at or now) + timedelta(seconds=run_seconds)


def workers_of(rows: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The pool's workers, (host, devices) each, from its registered devices' (host, devices): a worker of N GPUs
    registers one row per GPU, each saying N, and a CPU worker one row for the host saying its
    TUNEQUEUE_WORKER_DEVICES; so a host's rows of N count as ⌈rows / N⌉ workers of N."""
    count = Counter((host, max(devices or 1, 1)) for host, devices in rows)
    return [(host, devices) for (host, devices), n in sorted(count.items()) for _ in range(ceil(n / devices))]


def slots(workers: Sequence[tuple[str, int]], running: Sequence[tuple[str | None, int, datetime]],
          now: datetime) -> list[Slot]:
    """One slot per worker, busy until its running job's expected end. A running job (its worker's host, its
    devices, its expected end) goes to a free worker of its host with enough devices, the fewest first, else to any
    such worker; one no registered worker can hold (its worker has not registered lately) is a busy slot of its
    own. With no worker and nothing running, one idle slot for any job: the queue still has an order."""
    free = list(workers)
    out: list[Slot] = []
    for host, devices, end in sorted(running, key=lambda r: -r[1]):  # the largest jobs first: they fit fewest
        fits = [(w_host != host, w_devices, i) for i, (w_host, w_devices) in enumerate(free) if w_devices >= devices]
        if fits:
            out.append(Slot(end, free.pop(min(fits)[2])[1]))
        else:
            out.append(Slot(end, devices))
    out += [Slot(now, devices) for _, devices in free]
    return out or [Slot(now, ANY_DEVICE.devices)]


def refresh(session: Session, settings: Settings, now: datetime) -> int:
    """Project the pool's queue and store the positions and starts; returns how many jobs were projected."""
    queue = settings.celery_queue
    rows = session.execute(select(Job.id, Job.tenant_id, Job.user_name, Job.priority, Job.created_at,
                                  Job.needs_devices)
                           .where(Job.queue == queue, Job.status == "queued", ~Job.cancel_requested)).all()
    if not rows:
        return 0
    queued = [Candidate(job_id=r.id, tenant_id=r.tenant_id, user_name=r.user_name, priority=r.priority,
                        created_at=r.created_at) for r in rows]
    run_seconds = expected_run_seconds(session, queue, now)
    running = [((r.worker or "").rpartition(":")[0] or None, r.needs_devices or 1,
                _expected_end(r.started_at, r.last_progress, run_seconds, now))
               for r in session.execute(select(Job.worker, Job.needs_devices, Job.started_at, Job.last_progress)
                                        .where(Job.queue == queue, Job.status == "running"))]
    registered = [(r.host, r.devices) for r in session.execute(select(Worker.host, Worker.devices).where(
        Worker.queue == queue, Worker.last_seen_at > now - RECENT))]
    tenants = Tenants.read(session, {c.tenant_id for c in queued}, queue)
    projected = project(queued, weighing(session, tenants, settings, now), aging(settings), now,
                        workers=slots(workers_of(registered), running, now), run_seconds=run_seconds,
                        needs_devices={r.id: r.needs_devices or 1 for r in rows})
    session.execute(update(Job).where(Job.queue == queue, Job.status == "queued", Job.queue_position.is_not(None))
                    .values(queue_position=None, estimated_start_at=None))
    if projected:
        session.execute(update(Job), [{"id": job_id, "queue_position": p.position, "estimated_start_at": p.start_at}
                                      for job_id, p in projected.items()])
    return len(projected)
