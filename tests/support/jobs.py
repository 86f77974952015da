"""A job driven by hand through the real state machine (common/state.py) and the worker's real relay
(worker/relay.py), over the real Postgres and Redis: no queue, no worker, no training child."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from common import state
from common.db import session_factory, session_scope
from common.models import Job, JobEvent
from common.settings import get_settings
from tests.support.factories import make_job_row
from worker.relay import ProgressRelay
from worker.train.protocol import ProgressEvent


def queued_job(tenant_id: str) -> str:
    """A job whose files passed validation: `queued`, with its `Job queued` state event."""
    job_id = make_job_row(tenant_id, "validating_files")
    with session_scope() as session:
        state.mark_queued(session, session.get_one(Job, job_id))
    return job_id


def claim(job_id: str) -> int:
    with session_scope() as session:
        attempt = state.claim(session, job_id, worker="test-host:1", lease_seconds=60)
    assert attempt is not None
    return attempt


def lose_lease(job_id: str) -> None:
    """What the reaper does when the owner's lease has expired: the job is requeued for the next attempt."""
    with session_scope() as session:
        job = state.lock_job(session, job_id)
        assert job is not None
        assert state.expire_lease(session, job, max_attempts=job.attempt + 1) == "queued"


def finish(job_id: str, attempt: int, status: str = "succeeded") -> None:
    with session_scope() as session:
        assert state.finish(session, job_id, attempt, status)


def relay(job_id: str, tenant_id: str, attempt: int, **overrides: Any) -> ProgressRelay:
    settings = get_settings().model_copy(update=overrides)
    return ProgressRelay(job_id, tenant_id, attempt, settings)


def progress(step: int, total: int = 8, **extra: Any) -> ProgressEvent:
    """A `progress` event as the training child reports it (worker/train/protocol.py); `extra` sets more keys."""
    event: ProgressEvent = {
        "type": "progress", "step": step, "total_steps": total, "epoch": step / total * 2,
        "loss": round(3.0 - 0.2 * step, 3), "learning_rate": 1e-3, "grad_norm": 0.5,
        "tokens_per_second": 1000.0 + step, "trained_tokens": 128 * step, "eta_seconds": (total - step) * 0.5,
        "peak_memory_mb": None,
    }
    return cast(ProgressEvent, {**event, **extra})


def job_row(job_id: str) -> Job:
    """The job as Postgres holds it now (detached)."""
    with session_scope() as session:
        return session.get_one(Job, job_id)


def job_events(job_id: str) -> list[JobEvent]:
    """The job's events in `seq` order."""
    with session_scope() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


@contextlib.contextmanager
def another_writer_holds_an_event(job_id: str) -> Iterator[Session]:
    """While another session has written an event of `job_id` and not committed it, yields a session whose lock
    waits give up after 200 ms: a writer that takes the job's row lock raises OperationalError "lock timeout"."""
    holder = session_factory()()
    try:
        assert state.add_event(holder, job_id, "another writer's event, not committed yet") is not None
        with session_scope() as session:
            session.execute(text("SET LOCAL lock_timeout = '200ms'"))
            yield session
            session.rollback()
    finally:
        holder.rollback()
        holder.close()
