"""The preemption pass (worker/preemption.py) and the owner's side of it (common/state.py `preempt`), against the
real Postgres: which running job is asked to step aside, when, and what stepping aside records."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from common import state
from common.db import session_scope
from common.models import Job, JobEvent, JobRun
from common.settings import Settings, get_settings
from tests.support.factories import make_job_row, make_tenant
from tests.support.scheduling import record_run
from worker.preemption import preemption_pass

LOW, NORMAL, HIGH = 0, 1, 2


@pytest.fixture
def settings() -> Settings:
    return get_settings().model_copy(update={"celery_queue": f"tunequeue.test.pool.{secrets.token_hex(4)}",
                                            "preempt_after_seconds": 60.0, "preempt_interval_minutes": 30.0})


def running(tenant: str, settings: Settings, priority: int) -> str:
    job_id = make_job_row(tenant, queue=settings.celery_queue, priority=priority,
                          created_at=state.now() - timedelta(minutes=30))
    with session_scope() as session:
        assert state.claim(session, job_id, worker="test-host:1", lease_seconds=600) == 1
    return job_id


def waiting(tenant: str, settings: Settings, priority: int, waited: timedelta = timedelta(minutes=2)) -> str:
    return make_job_row(tenant, queue=settings.celery_queue, priority=priority, created_at=state.now() - waited)


def run_pass(settings: Settings) -> str | None:
    with session_scope() as session:
        return preemption_pass(session, settings)


def asked(job_id: str) -> bool:
    with session_scope() as session:
        return bool(session.scalar(select(Job.preempt_requested).where(Job.id == job_id)))


def test_a_waiting_high_job_has_a_running_low_job_of_its_tenant_asked_to_step_aside(settings) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    low = running(tenant, settings, LOW)
    waiting(tenant, settings, HIGH)
    assert run_pass(settings) == low and asked(low)
    with session_scope() as session:
        last = session.scalars(select(JobEvent).where(JobEvent.job_id == low).order_by(JobEvent.seq.desc())).first()
    assert last is not None and last.message.startswith("Asked to checkpoint and step aside")
    assert run_pass(settings) is None, "already asked: not asked twice"


def test_a_job_that_has_not_waited_preempt_after_seconds_preempts_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    low = running(tenant, settings, LOW)
    waiting(tenant, settings, HIGH, waited=timedelta(seconds=10))
    assert run_pass(settings) is None and not asked(low)


def test_only_low_priority_jobs_are_preempted(settings) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    normal = running(tenant, settings, NORMAL)
    waiting(tenant, settings, HIGH)
    assert run_pass(settings) is None and not asked(normal)


def test_a_tenant_below_its_fair_share_preempts_another_tenants_low_job(settings) -> None:  # type: ignore[no-untyped-def]
    rich, poor = make_tenant()[0], make_tenant()[0]
    record_run(rich, 2.0)
    low = running(rich, settings, LOW)
    waiting(poor, settings, NORMAL)
    assert run_pass(settings) == low


def test_a_tenant_above_its_fair_share_does_not_preempt_a_poorer_tenants_low_job(settings) -> None:  # type: ignore[no-untyped-def]
    rich, poor = make_tenant()[0], make_tenant()[0]
    record_run(rich, 2.0)
    low = running(poor, settings, LOW)
    waiting(rich, settings, HIGH)
    assert run_pass(settings) is None and not asked(low)


def test_a_job_preempted_within_the_interval_is_not_preempted_again(settings) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    low = running(tenant, settings, LOW)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == low).values(preempted_at=state.now() - timedelta(minutes=29)))
    waiting(tenant, settings, HIGH)
    assert run_pass(settings) is None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == low).values(preempted_at=state.now() - timedelta(minutes=31)))
    assert run_pass(settings) == low


def test_stepping_aside_requeues_with_a_preempted_event_and_ends_the_run(settings) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    low = running(tenant, settings, LOW)
    with session_scope() as session:
        assert state.preempt(session, low, 2) is False, "a stale owner changes nothing"
        assert state.preempt(session, low, 1) is True
    with session_scope() as session:
        job = session.get_one(Job, low)
        assert (job.status, job.preempt_requested, job.worker) == ("queued", False, None)
        assert job.preempted_at is not None
        types = list(session.scalars(select(JobEvent.type).where(JobEvent.job_id == low).order_by(JobEvent.seq)))
        run = session.scalars(select(JobRun).where(JobRun.job_id == low)).one()
    assert types[-2:] == ["preempted", "state"]
    assert run.end_reason == "preempted" and run.ended_at is not None
