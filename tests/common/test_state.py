"""The job state machine on the real Postgres: every (status, event) pair against the table, the fenced
operations built on it, and the row lock of the one event writer."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from common import state
from common.db import session_scope
from common.errors import InvalidRequest
from common.models import Job
from tests.support.factories import make_job_row
from tests.support.jobs import another_writer_holds_an_event, job_events, job_row


def _row(job: Job) -> tuple[object, ...]:
    return (job.status, job.attempt, job.worker, job.lease_until, job.cancel_requested, job.error, job.finished_at)


def _claim(job_id: str, worker: str = "w1") -> int | None:
    with session_scope() as session:
        return state.claim(session, job_id, worker=worker, lease_seconds=60)


def _expire(job_id: str, max_attempts: int = 3) -> str:
    """What the reaper does once the lease has expired."""
    with session_scope() as session:
        job = state.lock_job(session, job_id)
        assert job is not None
        return state.expire_lease(session, job, max_attempts=max_attempts)


# --- the table ------------------------------------------------------------------------------------------


def test_the_table_names_only_known_statuses_and_events() -> None:
    for (status, event), target in state.TRANSITIONS.items():
        assert status in state.STATUSES and target in state.STATUSES and event in state.EVENTS
    assert not any(status in state.TERMINAL for status, _ in state.TRANSITIONS), "a terminal status is final"
    assert set(state.FINISH_EVENTS.values()) <= set(state.EVENTS)


@pytest.mark.parametrize("event", state.EVENTS)
@pytest.mark.parametrize("status", state.STATUSES)
def test_every_status_event_pair_follows_the_table(tenant: tuple[str, str], status: str, event: str) -> None:
    job_id = make_job_row(tenant[0], status)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(attempt=1))
    before = job_row(job_id)
    expected = state.TRANSITIONS.get((status, event))
    if expected is None:
        with session_scope() as session, pytest.raises(state.IllegalTransition):
            job = state.lock_job(session, job_id)
            assert job is not None
            state.transition(session, job, event, "walk")
        assert _row(job_row(job_id)) == _row(before) and before.status == status
        assert job_events(job_id) == []
        return
    with session_scope() as session:
        job = state.lock_job(session, job_id)
        assert job is not None
        assert state.transition(session, job, event, "walk") == expected
    assert job_row(job_id).status == expected
    [written] = job_events(job_id)
    assert (written.type, written.message, written.data, written.attempt) == ("state", "walk", {"status": expected}, 1)


# --- the operations -------------------------------------------------------------------------------------


def test_claim_is_exclusive_and_counts_attempts(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    assert _claim(job_id, "w1") == 1
    assert _claim(job_id, "w2") is None  # a second delivery of the same message finds nothing to claim
    job = job_row(job_id)
    assert (job.status, job.attempt, job.worker) == ("running", 1, "w1")
    assert job.lease_until is not None and job.started_at is not None


def test_stale_attempt_changes_nothing(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    assert _claim(job_id, "old") == 1
    assert _expire(job_id) == "queued"
    assert _claim(job_id, "new") == 2
    with session_scope() as session:
        assert state.heartbeat(session, job_id, 1, lease_seconds=60) == (False, False)
        assert state.record_progress(session, job_id, 1, {"step": 99, "loss": 0.1}) is False
        assert state.finish(session, job_id, 1, "succeeded", fine_tuned_model="ft:stale") is False
        assert state.finish(session, job_id, 1, "failed", error={"code": "x", "message": "y"}) is False
        assert state.requeue(session, job_id, 1, "stale") is False
        assert state.add_event(session, job_id, "stale", owner_attempt=1) is None
    job = job_row(job_id)
    assert (job.status, job.attempt, job.worker, job.fine_tuned_model, job.last_progress) == (
        "running", 2, "new", None, None)
    assert "stale" not in [e.message for e in job_events(job_id)]
    with session_scope() as session:
        assert state.heartbeat(session, job_id, 2, lease_seconds=60) == (True, False)
        assert state.record_progress(session, job_id, 2, {"step": 3, "trained_tokens": 10}) is True
        written = state.add_event(session, job_id, "mine", owner_attempt=2)
        assert written is not None and written.attempt == 2
        assert state.finish(session, job_id, 2, "succeeded", fine_tuned_model="ft:new") is True
    job = job_row(job_id)
    assert (job.status, job.fine_tuned_model, job.trained_tokens, job.lease_until) == ("succeeded", "ft:new", 10, None)
    with session_scope() as session:  # terminal: even the current owner cannot write again
        assert state.finish(session, job_id, 2, "failed", error={"code": "x", "message": "y"}) is False
        assert state.add_event(session, job_id, "late", owner_attempt=2) is None


def test_finish_takes_only_a_terminal_status(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    with session_scope() as session, pytest.raises(ValueError, match="terminal status"):
        state.finish(session, job_id, attempt or 0, "queued")
    assert job_row(job_id).status == "running"


def test_the_owner_requeues_its_job_for_the_next_attempt(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    with session_scope() as session:
        assert state.requeue(session, job_id, attempt or 0, "the worker is shutting down") is True
    job = job_row(job_id)
    assert (job.status, job.attempt, job.worker, job.lease_until) == ("queued", 1, None, None)
    last = job_events(job_id)[-1]
    assert (last.type, last.level, last.data, last.attempt) == (
        "state", "warning", {"status": "queued", "reason": "the worker is shutting down"}, 1)
    assert _claim(job_id) == 2


def test_a_cancelled_job_is_not_requeued_by_its_owner(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    with session_scope() as session:
        state.request_cancel(session, session.get_one(Job, job_id))
    with session_scope() as session:
        assert state.requeue(session, job_id, attempt or 0, "the worker is shutting down") is False
    assert job_row(job_id).status == "running"


@pytest.mark.parametrize(("cancel", "attempts", "max_attempts", "status"), [
    (False, 1, 3, "queued"), (False, 3, 3, "failed"), (True, 1, 3, "cancelled"), (True, 3, 3, "cancelled"),
])
def test_an_expired_lease_requeues_fails_or_cancels(tenant: tuple[str, str], cancel: bool, attempts: int,
                                                    max_attempts: int, status: str) -> None:
    job_id = make_job_row(tenant[0])
    for _ in range(attempts):
        assert _claim(job_id) is not None
        if job_row(job_id).attempt < attempts:
            assert _expire(job_id, max_attempts) == "queued"
    if cancel:
        with session_scope() as session:
            state.request_cancel(session, session.get_one(Job, job_id))
    assert _expire(job_id, max_attempts) == status
    job = job_row(job_id)
    assert (job.status, job.attempt, job.lease_until) == (status, attempts, None)
    last = job_events(job_id)[-1]
    assert last.type == "state" and last.data is not None and last.data["status"] == status
    assert last.message.startswith({"queued": "Requeued: worker w1 stopped renewing its lease",
                                    "failed": "The job failed: worker w1 stopped renewing its lease",
                                    "cancelled": "The job was cancelled (worker w1"}[status])
    if status == "failed":
        assert job.error is not None and job.error["code"] == "worker_lost" and job.finished_at is not None


def test_cancel_queued_is_immediate_and_never_claimed(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    with session_scope() as session:
        state.request_cancel(session, session.get_one(Job, job_id))
    job = job_row(job_id)
    assert (job.status, job.cancel_requested) == ("cancelled", True) and job.finished_at is not None
    assert _claim(job_id) is None


def test_cancel_running_flags_and_blocks_success(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    assert attempt == 1
    with session_scope() as session:
        state.request_cancel(session, session.get_one(Job, job_id))
    assert job_row(job_id).status == "running"  # the worker stops it
    assert job_events(job_id)[-1].message == "Cancellation requested; stopping the training process"
    with session_scope() as session:
        assert state.heartbeat(session, job_id, attempt, lease_seconds=60) == (True, True)
        assert state.finish(session, job_id, attempt, "succeeded", fine_tuned_model="ft:x") is False
        assert state.finish(session, job_id, attempt, "cancelled") is True
    assert job_row(job_id).status == "cancelled"


def test_cancel_finished_job_is_refused(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0], status="succeeded")
    with session_scope() as session, pytest.raises(InvalidRequest) as info:
        state.request_cancel(session, session.get_one(Job, job_id))
    assert info.value.code == "job_not_cancellable"


def test_files_checked_queues_and_a_rejection_fails_with_the_error(tenant: tuple[str, str]) -> None:
    queued, rejected = make_job_row(tenant[0], "validating_files"), make_job_row(tenant[0], "validating_files")
    error = {"code": "invalid_training_file", "message": "row 3 has no messages", "param": "training_file"}
    with session_scope() as session:
        state.mark_queued(session, session.get_one(Job, queued))
        state.fail_unclaimed(session, session.get_one(Job, rejected), error)
    assert job_row(queued).status == "queued"
    job = job_row(rejected)
    assert (job.status, job.error) == ("failed", error) and job.finished_at is not None
    last = job_events(rejected)[-1]
    assert (last.level, last.message, last.data) == (
        "error", "The job failed: row 3 has no messages", {"status": "failed", "error": error})


def test_state_changes_are_recorded_as_events(tenant: tuple[str, str]) -> None:
    job_id = make_job_row(tenant[0])
    attempt = _claim(job_id)
    with session_scope() as session:
        state.finish(session, job_id, attempt or 0, "failed", error={"code": "cuda_oom", "message": "lower it"})
    events = job_events(job_id)
    assert [e.data["status"] for e in events if e.type == "state" and e.data] == ["running", "failed"]
    assert events[0].data == {"status": "running", "worker": "w1"} and events[0].attempt == 1
    assert events[-1].level == "error" and events[-1].data and events[-1].data["error"]["code"] == "cuda_oom"


# --- the event writer -----------------------------------------------------------------------------------


def test_an_event_waits_for_the_job_row_lock(tenant: tuple[str, str]) -> None:
    """SSE readers follow `seq`: a job's events are written one transaction at a time, so they commit in `seq`
    order. (Holding the row FOR UPDATE alone would block the insert anyway, through the foreign key.)"""
    job_id = make_job_row(tenant[0])
    with another_writer_holds_an_event(job_id) as session, pytest.raises(OperationalError, match="lock timeout"):
        state.add_event(session, job_id, "must wait")
    with session_scope() as session:
        written = state.add_event(session, job_id, "after the lock", attempt=7)
        assert written is not None and (written.tenant_id, written.attempt) == (tenant[0], 7)
    assert [e.message for e in job_events(job_id)] == ["after the lock"]


def test_an_event_for_no_job_writes_nothing() -> None:
    with session_scope() as session:
        assert state.add_event(session, "ftjob-none", "nobody") is None
    assert job_events("ftjob-none") == []

