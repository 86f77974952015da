"""The reaper and the reconciler. Postgres holds every job; the broker is a doorbell that may lose messages
(a Redis restart without persistence) or ring twice (visibility timeout). Both passes are idempotent, so every
worker may run them; an advisory lock keeps two from doing the same pass at once.

- reaper: a `running` job whose lease expired lost its worker. Requeue it (the next claim makes attempt + 1 and
  resumes from the newest checkpoint), or fail it with `worker_lost` after `max_attempts` claims.
- reconciler: a `queued` job that no broker message carries is published again.
- preemption (worker/preemption.py) and the projection of the queue (common/scheduling/forecast.py) for its pool.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common import state
from common.db import session_scope
from common.models import Job
from common.queue import enqueue_job, enqueue_run
from common.scheduling import forecast
from common.settings import Settings, get_settings
from worker.preemption import preemption_pass

log = logging.getLogger("tunequeue.maintenance")
LOCK_ID = 0x7475_6E65  # "tune": pg_try_advisory_xact_lock key for one maintenance pass at a time


def reap_expired(session: Session, settings: Settings) -> list[str]:
    """Requeue, fail or cancel running jobs whose lease has expired (common/state.py: expire_lease). Returns the
    ids that were requeued."""
    expired = session.scalars(
        select(Job).where(Job.status == "running", Job.lease_until < state.now()).with_for_update(skip_locked=True)
    ).all()
    requeued = [job.id for job in expired
                if state.expire_lease(session, job, max_attempts=settings.max_attempts) == "queued"]
    session.flush()
    return requeued


def broker_job_ids(client: redis.Redis, queue: str) -> str:
    """Everything the broker holds for `queue` (waiting and delivered-unacked), as one string to search."""
    waiting = client.lrange(queue, 0, -1)
    unacked = client.hvals("unacked")
    return "\n".join(m.decode(errors="replace") for m in [*waiting, *unacked])  # type: ignore[union-attr]


def reconcile_queued(session: Session, settings: Settings, client: redis.Redis,
                     status: str = "queued") -> list[str]:
    """Publish again the `status` jobs (queued, or validating_files) of this pool, older than
    `reconcile_after_seconds`, that the broker has no message for.

    A validation message names its job. A run message is a doorbell (the woken worker claims the best job of its
    pool, common/scheduling/claim.py): while the queue holds at least as many messages as there are queued jobs,
    every one of them will wake a worker, whichever job each names. So queued jobs are published again only for
    the shortfall, the oldest of those no message names first."""
    cutoff = state.now() - timedelta(seconds=settings.reconcile_after_seconds)
    candidates = session.scalars(select(Job.id).where(Job.status == status, Job.queue == settings.celery_queue,
                                                      Job.created_at < cutoff).order_by(Job.created_at)).all()
    if not candidates:
        return []
    queue = settings.celery_queue if status == "queued" else settings.validate_queue
    held = broker_job_ids(client, queue)
    missing = [job_id for job_id in candidates if job_id not in held]
    if status == "queued":
        doorbells = int(client.llen(queue))  # type: ignore[arg-type]
        waiting = int(session.scalar(select(func.count()).select_from(Job).where(
            Job.status == "queued", Job.queue == settings.celery_queue)) or 0)
        missing = missing[:max(waiting - doorbells, 0)]
    for job_id in missing:
        state.add_event(session, job_id, "Published to the queue again: the broker had no message for this job",
                        level="warning")
    return missing


def run_pass(settings: Settings | None = None) -> tuple[list[str], list[str]]:
    """One reaper + reconciler pass. Returns (requeued, republished); enqueues after the commit."""
    from common.redis_client import get_redis

    settings = settings or get_settings()
    with session_scope() as session:
        if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LOCK_ID}):
            return [], []
        requeued = reap_expired(session, settings)
        preemption_pass(session, settings)
        forecast.refresh(session, settings, state.now())
        republished = reconcile_queued(session, settings, get_redis())
        revalidate = reconcile_queued(session, settings, get_redis(), status="validating_files")
    for job_id in [*requeued, *republished]:
        enqueue_run(job_id)
    for job_id in revalidate:
        enqueue_job(job_id)
    republished += revalidate
    if requeued or republished:
        log.warning("maintenance: requeued %s, republished %s", requeued, republished)
    return requeued, republished


class MaintenanceLoop(threading.Thread):
    """Runs `run_pass` every `maintenance_seconds` in a worker process until stopped."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(daemon=True, name="tunequeue-maintenance")
        self.settings = settings or get_settings()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.maintenance_seconds):
            try:
                run_pass(self.settings)
            except Exception:  # Postgres or Redis away: try again next period
                log.exception("maintenance pass failed")

    def stop(self) -> None:
        self.stopped.set()


def requeue(job_id: str, attempt: int, reason: str) -> bool:
    """The owner hands its job back at once (common/state.py: requeue) and publishes it again after the commit."""
    with session_scope() as session:
        if not state.requeue(session, job_id, attempt, reason):
            return False
    enqueue_run(job_id)
    return True


def hold(job_id: str, attempt: int) -> bool:
    """The owner's job checkpointed after a pause request (common/state.py: hold): it waits in `paused`, published to
    no queue, until POST /jobs/{id}/resume puts it back."""
    with session_scope() as session:
        return state.hold(session, job_id, attempt)


def preempt(job_id: str, attempt: int) -> bool:
    """The owner's job stepped aside for one the scheduler puts first (common/state.py: preempt); it is published
    again after the commit, and resumes from its checkpoint when claimed."""
    with session_scope() as session:
        if not state.preempt(session, job_id, attempt):
            return False
    enqueue_run(job_id)
    return True
