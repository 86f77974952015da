"""The reaper and the reconciler (worker/maintenance.py) on the real Postgres and Redis. Each reconciler test
reads its own broker queue (a fresh name), so what it finds there is what the test put there."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from common import state
from common.db import session_scope
from common.models import Job
from common.redis_client import get_redis
from common.settings import Settings, get_settings
from tests.support.factories import make_job_row
from tests.support.jobs import another_writer_holds_an_event, claim, job_events, job_row, lose_lease, queued_job
from worker import maintenance
from worker.maintenance import broker_job_ids, reap_expired, reconcile_queued

REPUBLISHED = "Published to the queue again: the broker had no message for this job"


@pytest.fixture
def settings() -> Iterator[Settings]:
    """The run's settings with queues of their own and no grace period before a job counts as lost."""
    run = secrets.token_hex(4)
    own = get_settings().model_copy(update={"celery_queue": f"tunequeue.test.maintenance.{run}",
                                            "validate_queue": f"tunequeue.test.maintenance-validate.{run}",
                                            "reconcile_after_seconds": 0.0, "max_attempts": 2})
    yield own
    get_redis().delete(own.celery_queue, own.validate_queue)


def _running_with_expired_lease(tenant_id: str, attempts: int = 1) -> str:
    """A job claimed `attempts` times whose last owner stopped renewing its lease."""
    job_id = queued_job(tenant_id)
    claim(job_id)
    for _ in range(attempts - 1):
        lose_lease(job_id)
        claim(job_id)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_until=state.now() - timedelta(seconds=1)))
    return job_id


def _reap(settings: Settings) -> list[str]:
    with session_scope() as session:
        return reap_expired(session, settings)


# --- the reaper -------------------------------------------------------------------------------------------


def test_the_reaper_requeues_a_job_whose_lease_expired(tenant, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _running_with_expired_lease(tenant[0])
    assert job_id in _reap(settings)
    job = job_row(job_id)
    assert (job.status, job.attempt, job.worker, job.lease_until) == ("queued", 1, None, None)
    last = job_events(job_id)[-1]
    assert (last.type, last.level, last.data) == ("state", "warning", {"status": "queued", "reason": "lease_expired"})
    assert last.message.startswith("Requeued: worker test-host:1 stopped renewing its lease (attempt 1)")


def test_the_reaper_fails_a_job_after_max_attempts(tenant, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _running_with_expired_lease(tenant[0], attempts=settings.max_attempts)
    assert job_id not in _reap(settings)
    job = job_row(job_id)
    assert (job.status, job.attempt, job.lease_until) == ("failed", settings.max_attempts, None)
    assert job.error is not None and job.error["code"] == "worker_lost" and job.finished_at is not None
    last = job_events(job_id)[-1]
    assert (last.type, last.level, last.data) == ("state", "error", {"status": "failed", "error": job.error})


def test_the_reaper_cancels_a_job_whose_cancel_was_requested(tenant, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _running_with_expired_lease(tenant[0])
    with session_scope() as session:
        state.request_cancel(session, session.get_one(Job, job_id))
    assert job_id not in _reap(settings)
    job = job_row(job_id)
    assert (job.status, job.lease_until) == ("cancelled", None) and job.finished_at is not None
    last = job_events(job_id)[-1]
    assert (last.type, last.data) == ("state", {"status": "cancelled"})
    assert last.message.startswith("The job was cancelled (worker test-host:1 stopped renewing its lease")


def test_the_reaper_leaves_a_live_lease_alone(tenant, settings) -> None:  # type: ignore[no-untyped-def]
    job_id = queued_job(tenant[0])
    claim(job_id)
    before = job_events(job_id)
    assert job_id not in _reap(settings)
    assert (job_row(job_id).status, [e.id for e in job_events(job_id)]) == ("running", [e.id for e in before])


def test_a_maintenance_pass_requeues_and_rings_the_workers(tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = _running_with_expired_lease(tenant[0])
    requeued, _ = maintenance.run_pass()
    assert job_id in requeued and job_row(job_id).status == "queued"
    assert job_id in broker_job_ids(get_redis(), get_settings().celery_queue)


def test_the_owner_hands_its_job_back_and_rings_the_workers(tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = queued_job(tenant[0])
    attempt = claim(job_id)
    assert maintenance.requeue(job_id, attempt + 1, "stale") is False
    assert maintenance.requeue(job_id, attempt, "the worker is shutting down") is True
    assert job_row(job_id).status == "queued"
    assert job_id in broker_job_ids(get_redis(), get_settings().celery_queue)


# --- the reconciler ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "queue"), [("queued", "celery_queue"), ("validating_files", "validate_queue")])
def test_the_reconciler_republishes_what_the_broker_lost(tenant, settings, status, queue) -> None:  # type: ignore[no-untyped-def]
    lost = make_job_row(tenant[0], status, queue=settings.celery_queue)
    held = make_job_row(tenant[0], status, queue=settings.celery_queue)
    get_redis().rpush(getattr(settings, queue), f'{{"headers": {{"argsrepr": "(\'{held}\',)"}}}}')
    with session_scope() as session:
        missing = reconcile_queued(session, settings, get_redis(), status=status)
    assert lost in missing and held not in missing
    assert [(e.level, e.message) for e in job_events(lost)] == [("warning", REPUBLISHED)]
    assert job_events(held) == []


def test_the_reconciler_writes_its_event_under_the_job_row_lock(tenant, settings) -> None:  # type: ignore[no-untyped-def]
    """SSE readers follow `seq`: while another writer's event is uncommitted, the reconciler's waits."""
    job_id = make_job_row(tenant[0], "queued", queue=settings.celery_queue)
    with another_writer_holds_an_event(job_id) as session, pytest.raises(OperationalError, match="lock timeout"):
        reconcile_queued(session, settings, get_redis())
    assert job_events(job_id) == []
