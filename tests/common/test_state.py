"""The job state machine: fenced transitions on the real Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from common import state
from common.db import session_scope
from common.errors import InvalidRequest
from common.models import Job, JobEvent
from tests.factories import make_job_row


def _job(job_id: str) -> Job:
    with session_scope() as session:
        return session.get_one(Job, job_id)


def _claim(job_id: str, worker: str = "w1") -> int | None:
    with session_scope() as session:
        return state.claim(session, job_id, worker=worker, lease_seconds=60)


def _requeue(job_id: str) -> None:
    """What the reaper does after a lease expires."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="queued", lease_until=None))


def test_claim_is_exclusive_and_counts_attempts(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    assert _claim(job_id, "w1") == 1
    assert _claim(job_id, "w2") is None  # a second delivery of the same message finds nothing to claim
    job = _job(job_id)
    assert (job.status, job.attempt, job.worker) == ("running", 1, "w1")
    assert job.lease_until is not None


def test_stale_attempt_changes_nothing(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    assert _claim(job_id, "old") == 1
    _requeue(job_id)
    assert _claim(job_id, "new") == 2
    with session_scope() as session:
        assert state.heartbeat(session, job_id, 1, lease_seconds=60) == (False, False)
        assert state.record_progress(session, job_id, 1, {"step": 99, "loss": 0.1}) is False
        assert state.finish(session, job_id, 1, "succeeded", fine_tuned_model="ft:stale") is False
        assert state.finish(session, job_id, 1, "failed", error={"code": "x", "message": "y"}) is False
    job = _job(job_id)
    assert (job.status, job.attempt, job.worker, job.fine_tuned_model, job.last_progress) == (
        "running", 2, "new", None, None)
    with session_scope() as session:
        assert state.heartbeat(session, job_id, 2, lease_seconds=60) == (True, False)
        assert state.record_progress(session, job_id, 2, {"step": 3, "trained_tokens": 10}) is True
        assert state.finish(session, job_id, 2, "succeeded", fine_tuned_model="ft:new") is True
    job = _job(job_id)
    assert (job.status, job.fine_tuned_model, job.trained_tokens) == ("succeeded", "ft:new", 10)
    with session_scope() as session:  # terminal: even the current owner cannot write again
        assert state.finish(session, job_id, 2, "failed", error={"code": "x", "message": "y"}) is False


def test_cancel_queued_is_immediate_and_never_claimed(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    with session_scope() as session:
        state.request_cancel(session, session.get_one(Job, job_id))
    assert _job(job_id).status == "cancelled"
    assert _claim(job_id) is None


def test_cancel_running_flags_and_blocks_success(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    assert attempt == 1
    with session_scope() as session:
        state.request_cancel(session, session.get_one(Job, job_id))
    assert _job(job_id).status == "running"  # the worker stops it
    with session_scope() as session:
        assert state.heartbeat(session, job_id, attempt, lease_seconds=60) == (True, True)
        assert state.finish(session, job_id, attempt, "succeeded", fine_tuned_model="ft:x") is False
        assert state.finish(session, job_id, attempt, "cancelled") is True
    assert _job(job_id).status == "cancelled"


def test_cancel_finished_job_is_refused(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0], status="succeeded")
    with session_scope() as session, pytest.raises(InvalidRequest) as info:
        state.request_cancel(session, session.get_one(Job, job_id))
    assert info.value.code == "job_not_cancellable"


def test_state_changes_are_recorded_as_events(tenant: tuple[str, str]) -> None:
    from sqlalchemy import select

    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    with session_scope() as session:
        state.finish(session, job_id, attempt or 0, "failed", error={"code": "cuda_oom", "message": "lower it"})
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
    assert [e.data["status"] for e in events if e.type == "state"] == ["running", "failed"]
    assert events[-1].level == "error" and events[-1].data["error"]["code"] == "cuda_oom"


def test_illegal_transition_raises() -> None:
    with pytest.raises(ValueError):
        state._check("succeeded", "running")
