"""`job_runs` (what fair share and GPU-hours count) as the state machine writes it, and the use read from it
(common/scheduling/usage.py), against the real Postgres."""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy import select, update

from common import state
from common.db import session_scope
from common.models import Job, JobRun
from common.scheduling.usage import decayed_use, gpu_seconds_in_window
from common.settings import get_settings
from tests.support.factories import make_tenant
from tests.support.jobs import claim, queued_job
from tests.support.scheduling import record_run
from worker.maintenance import reap_expired

HALF_LIFE = 4 * 3600.0


def runs(job_id: str) -> list[JobRun]:
    with session_scope() as session:
        return list(session.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.attempt)))


def test_a_claim_opens_a_run_and_the_finish_closes_it_with_the_outcome() -> None:
    tenant = make_tenant()[0]
    job_id = queued_job(tenant)
    attempt = claim(job_id)
    (run,) = runs(job_id)
    assert (run.attempt, run.ended_at, run.worker, run.user_name) == (attempt, None, "test-host:1", "default")
    with session_scope() as session:
        assert state.finish(session, job_id, attempt, "succeeded")
    (run,) = runs(job_id)
    assert run.end_reason == "succeeded" and run.ended_at is not None and run.ended_at >= run.started_at


def test_a_run_whose_worker_was_lost_ends_at_its_last_heartbeat_not_when_the_reaper_noticed() -> None:
    tenant = make_tenant()[0]
    job_id = queued_job(tenant)
    claim(job_id)
    last_seen = state.now() - timedelta(minutes=10)
    with session_scope() as session:
        session.execute(update(JobRun).where(JobRun.job_id == job_id).values(last_seen_at=last_seen))
        session.execute(update(Job).where(Job.id == job_id).values(lease_until=state.now() - timedelta(seconds=1)))
    with session_scope() as session:
        assert job_id in reap_expired(session, get_settings())
    (run,) = runs(job_id)
    assert (run.end_reason, run.ended_at) == ("worker_lost", last_seen)


def test_heartbeats_move_the_runs_last_seen() -> None:
    tenant = make_tenant()[0]
    job_id = queued_job(tenant)
    attempt = claim(job_id)
    before = runs(job_id)[0].last_seen_at
    with session_scope() as session:
        assert state.heartbeat(session, job_id, attempt, lease_seconds=60) == (True, False)
    assert runs(job_id)[0].last_seen_at > before


def test_use_that_ended_one_half_life_ago_counts_half_as_much_as_the_same_use_ending_now() -> None:
    recent, older = make_tenant()[0], make_tenant()[0]
    record_run(recent, 1.0)
    record_run(older, 1.0, ended_ago=timedelta(seconds=HALF_LIFE))
    with session_scope() as session:
        tenants, users = decayed_use(session, {recent, older}, now=state.now(), half_life_seconds=HALF_LIFE)
    expected = HALF_LIFE / math.log(2) * (1 - 2 ** (-3600 / HALF_LIFE))  # ∫ of 2^(−age/H) over the last hour
    assert math.isclose(tenants[recent], expected, rel_tol=1e-3)
    assert math.isclose(tenants[older] / tenants[recent], 0.5, rel_tol=1e-3)
    assert users == {(recent, "default"): tenants[recent], (older, "default"): tenants[older]}


def test_a_running_job_counts_up_to_now_in_the_gpu_hours_window() -> None:
    tenant = make_tenant()[0]
    job_id = queued_job(tenant)
    claim(job_id)
    with session_scope() as session:
        session.execute(update(JobRun).where(JobRun.job_id == job_id)
                        .values(started_at=state.now() - timedelta(hours=2)))
    with session_scope() as session:
        seconds = gpu_seconds_in_window(session, tenant, now=state.now(), window=timedelta(days=30))
    assert math.isclose(seconds["default"], 7200, abs_tol=5)
