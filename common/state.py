"""The job state machine and the one writer of job events.

Every status change is an event fired at the job's current status; `TRANSITIONS` says where each legal
(status, event) pair leads, and `transition` refuses every other pair. Each change writes a `state` event.

    status             event          → status     function: fired by
    validating_files   files_checked  → queued     mark_queued: worker/check_job_files.py
    validating_files   reject         → failed     fail_unclaimed: worker/check_job_files.py
    validating_files   cancel         → cancelled  request_cancel: POST /jobs/{id}/cancel
    queued             claim          → running    claim: worker/runner.py
    queued             cancel         → cancelled  request_cancel: POST /jobs/{id}/cancel
    running            succeed        → succeeded  finish: worker/publish.py
    running            fail           → failed     finish: worker/runner.py; expire_lease after max_attempts
    running            stop           → cancelled  finish: worker/runner.py after a cancel request; expire_lease
    running            requeue        → queued     requeue: the owner hands it back (worker/maintenance.py);
                                                   expire_lease: the reaper after a lost lease (same file);
                                                   preempt: the owner, after the scheduler asked it to step aside
    queued             pause          → paused     request_pause: POST /jobs/{id}/pause
    running            hold           → paused     hold: the owner, after a pause request (worker/maintenance.py)
    paused             resume         → queued     request_resume: POST /jobs/{id}/resume
    paused             cancel         → cancelled  request_cancel: POST /jobs/{id}/cancel

A cancel request on a running job changes no status: it sets `cancel_requested`, and the owner (or the reaper,
when the owner is gone) then fires `stop`. A pause request on a running job likewise sets `pause_requested`; the
owner has the child checkpoint and stop, and fires `hold`. A paused job holds no worker and no lease; resumed, it is
claimed again like a requeued one (attempt + 1, from its newest checkpoint).

Every write by a worker is fenced by `attempt`: an owner whose attempt is no longer current (the job was
requeued and claimed again) changes nothing.

Event order: `job_events.seq` is an identity, so its values are handed out at INSERT time, not at COMMIT time.
A reader that follows `seq > last_seen` (the SSE stream of api/routes/jobs.py) could skip an event whose
transaction committed after a later one. `add_event` therefore takes the job's row lock before it inserts:
serialised per job, a job's events commit in `seq` order. Once they have, the streams waiting on the job are
woken (common/job_events_channel.py): `add_event` notes the job, and the session announces it after its commit.

Webhooks: `add_event` also writes the outbox rows of an event that is a webhook event (a state change, a
preemption, a checkpoint; common/webhooks/outbox.py) in the same transaction, so the two commit or roll back
together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidRequest
from common.ids import new_id
from common.job_events_channel import note_new_events
from common.models import Job, JobEvent, JobRun
from common.webhooks import outbox as webhook_outbox

STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
EVENTS = ("files_checked", "reject", "cancel", "claim", "succeed", "fail", "stop", "requeue", "pause", "hold",
          "resume")
TRANSITIONS: dict[tuple[str, str], str] = {
    ("validating_files", "files_checked"): "queued",
    ("validating_files", "reject"): "failed",
    ("validating_files", "cancel"): "cancelled",
    ("queued", "claim"): "running",
    ("queued", "cancel"): "cancelled",
    ("queued", "pause"): "paused",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "stop"): "cancelled",
    ("running", "requeue"): "queued",
    ("running", "hold"): "paused",  # its owner saw pause_requested and the child checkpointed
    ("paused", "resume"): "queued",
    ("paused", "cancel"): "cancelled",
}
FINISH_EVENTS = {"succeeded": "succeed", "failed": "fail", "cancelled": "stop"}


class IllegalTransition(ValueError):
    """An event fired at a status that has no transition for it: a bug in the caller, never a race (the
    callers that race, such as a second claim, check `can_fire` first)."""


def now() -> datetime:
    return datetime.now(UTC)


def can_fire(status: str, event: str) -> bool:
    return (status, event) in TRANSITIONS


def lock_job(session: Session, job_id: str) -> Job | None:
    """The job row, locked until the transaction ends and read fresh (not the session's cached copy)."""
    return session.scalar(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    )


def add_event(
    session: Session,
    job: Job | str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    attempt: int | None = None,
    owner_attempt: int | None = None,
) -> JobEvent | None:
    """Append an event to the job's log, holding the job's row lock (see the module docstring).

    `attempt` is recorded with the event (default: the job's current attempt). With `owner_attempt` the event
    is written only while that attempt owns the running job, and recorded under it: a stale worker writes
    nothing. Returns None when nothing was written (a stale owner, or no such job)."""
    job_id = job if isinstance(job, str) else job.id
    stmt = select(Job.tenant_id, Job.attempt).where(Job.id == job_id).with_for_update()
    if owner_attempt is not None:
        stmt = stmt.where(Job.attempt == owner_attempt, Job.status == "running")
        attempt = owner_attempt
    row = session.execute(stmt).one_or_none()
    if row is None:
        return None
    event = JobEvent(
        id=new_id("ftevent"), job_id=job_id, tenant_id=row.tenant_id, level=level, type=type, message=message,
        data=data, attempt=row.attempt if attempt is None else attempt,
    )
    session.add(event)
    session.flush()
    webhook_outbox.record(session, event)  # its webhook deliveries, if any, commit with it (common/webhooks/)
    note_new_events(session, job_id)  # announced after the commit, never before the event is durable
    return event


def add_first_events(session: Session, job: Job, messages: Sequence[str], warnings: Sequence[str] = ()) -> None:
    """The first events of a job that this transaction inserted, in one INSERT. No other transaction can see the
    job before this one commits, let alone write its events, so these need not take its row lock (`add_event`'s
    SELECT … FOR UPDATE, a round trip each): `POST /jobs` answers sooner. Nor are they announced (no stream can
    be waiting on a job that nobody can see yet), so `POST /jobs` costs no Redis round trip."""
    session.add_all([JobEvent(id=new_id("ftevent"), job_id=job.id, tenant_id=job.tenant_id, level=level,
                              type="message", message=message, data=None, attempt=job.attempt)
                     for level, message in [*(("info", m) for m in messages), *(("warning", w) for w in warnings)]])
    session.flush()


def transition(session: Session, job: Job, event: str, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None, changes: Mapping[str, Any] | None = None) -> str:
    """Fire `event` at a job whose row the caller holds (`lock_job`, or a SELECT … FOR UPDATE): set its new
    status and `changes`, and record a `state` event. Returns the new status; raises IllegalTransition (and
    changes nothing) when the job's status has no transition for `event`."""
    target = TRANSITIONS.get((job.status, event))
    if target is None:
        raise IllegalTransition(f"illegal job transition: {event} at status {job.status} (job {job.id})")
    job.status = target
    for name, value in (changes or {}).items():
        setattr(job, name, value)
    add_event(session, job, message, type="state", level=level, data={"status": target, **(data or {})})
    return target


def claim(session: Session, job_id: str, *, worker: str, lease_seconds: int) -> int | None:
    """queued → running. Returns the new attempt (the caller's fencing epoch), or None if not claimable
    (already claimed: a broker may deliver a message twice; cancelled; finished)."""
    job = lock_job(session, job_id)
    if job is None or job.cancel_requested or not can_fire(job.status, "claim"):
        return None
    attempt = job.attempt + 1
    at = now()
    transition(session, job, "claim", f"Job started on {worker} (attempt {attempt})", data={"worker": worker},
               changes={"attempt": attempt, "lease_until": at + timedelta(seconds=lease_seconds),
                        "worker": worker, "started_at": at, "preempt_requested": False,
                        "queue_position": None, "estimated_start_at": None})
    session.add(JobRun(job_id=job.id, attempt=attempt, tenant_id=job.tenant_id, user_name=job.user_name,
                       queue=job.queue, worker=worker, devices=job.needs_devices or 1, started_at=at,
                       last_seen_at=at))
    return attempt


def _close_run(session: Session, job: Job, reason: str, *, at: datetime | None = None) -> None:
    """End the current attempt's run (what fair share and GPU-hours count) at `at`, by default now."""
    session.execute(update(JobRun).where(JobRun.job_id == job.id, JobRun.attempt == job.attempt,
                                         JobRun.ended_at.is_(None))
                    .values(ended_at=at or now(), end_reason=reason))


def heartbeat(session: Session, job_id: str, attempt: int, *, lease_seconds: int) -> tuple[bool, bool]:
    """Extend the lease. Returns (still_owner, cancel_requested)."""
    at = now()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
        .values(lease_until=at + timedelta(seconds=lease_seconds))
        .returning(Job.cancel_requested)
    ).one_or_none()
    if row is None:
        return False, False
    session.execute(update(JobRun).where(JobRun.job_id == job_id, JobRun.attempt == attempt)
                    .values(last_seen_at=at))
    return True, bool(row.cancel_requested)


def record_progress(session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
        .values(last_progress=progress, trained_tokens=progress.get("trained_tokens"))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _owned(session: Session, job_id: str, attempt: int) -> Job | None:
    """The locked job if `attempt` owns it and it runs; None for a stale owner."""
    job = lock_job(session, job_id)
    if job is None or job.attempt != attempt or job.status != "running":
        return None
    return job


def _end(session: Session, job: Job, status: str, *, error: dict[str, Any] | None = None,
         fine_tuned_model: str | None = None, message: str | None = None) -> None:
    """running → succeeded | failed | cancelled for a job whose row the caller holds."""
    changes: dict[str, Any] = {"finished_at": now(), "lease_until": None}
    if error is not None:
        changes["error"] = error
    if fine_tuned_model is not None:
        changes["fine_tuned_model"] = fine_tuned_model
    _close_run(session, job, status)
    text = message or {"succeeded": "The job has successfully completed",
                       "failed": f"The job failed: {(error or {}).get('message', '')}",
                       "cancelled": "The job was cancelled"}[status]
    transition(session, job, FINISH_EVENTS[status], text, level="error" if status == "failed" else "info",
               data={"error": error} if error else None, changes=changes)


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    status: str,
    *,
    error: dict[str, Any] | None = None,
    fine_tuned_model: str | None = None,
    message: str | None = None,
) -> bool:
    """running → succeeded | failed | cancelled, only for the current owner. Returns whether it applied."""
    if status not in FINISH_EVENTS:
        raise ValueError(f"finish() takes a terminal status; got {status!r}")
    job = _owned(session, job_id, attempt)
    if job is None or (status == "succeeded" and job.cancel_requested):  # nothing is published after a cancel
        return False
    _end(session, job, status, error=error, fine_tuned_model=fine_tuned_model, message=message)
    return True


def _requeue(session: Session, job: Job, why: str, *, reason: str, run_end: str = "requeued") -> None:
    """`reason` goes into the event's data; `run_end` (at most 32 characters) ends the attempt's `job_runs` row."""
    _close_run(session, job, run_end)
    transition(session, job, "requeue", f"Requeued: {why}; the next attempt resumes from the newest checkpoint",
               level="warning", data={"reason": reason}, changes={"lease_until": None, "worker": None})


def requeue(session: Session, job_id: str, attempt: int, reason: str) -> bool:
    """running → queued: the owner hands its job back at once (shutting down, or its child was killed from
    outside) instead of waiting for its lease to expire. Not after a cancel request: that job is stopped.
    Returns whether it applied."""
    job = _owned(session, job_id, attempt)
    if job is None or job.cancel_requested:
        return False
    _requeue(session, job, reason, reason=reason)
    return True


def preempt(session: Session, job_id: str, attempt: int) -> bool:
    """running → queued for a job the scheduler asked to step aside (`preempt_requested`; worker/preemption.py),
    once its owner saw it checkpoint: a `preempted` event, and `preempted_at` so that it is not preempted again
    soon. Returns whether it applied (not for a stale owner, nor after a cancel request)."""
    job = _owned(session, job_id, attempt)
    if job is None or job.cancel_requested:
        return False
    add_event(session, job, "Preempted: a job that goes first under the scheduling policy needed the device; this "
              "one checkpointed and waits in the queue again", level="warning", type="preempted")
    _requeue(session, job, "preempted by the scheduler", reason="preempted", run_end="preempted")
    job.preempted_at = now()
    job.preempt_requested = False
    return True


def hold(session: Session, job_id: str, attempt: int) -> bool:
    """running → paused for a job whose owner saw `pause_requested` and had its child checkpoint and stop: it waits,
    claimed by no one, until it is resumed or cancelled. Returns whether it applied (not for a stale owner, nor
    after a cancel request: that job is stopped)."""
    job = _owned(session, job_id, attempt)
    if job is None or job.cancel_requested:
        return False
    _close_run(session, job, "paused")
    transition(session, job, "hold", "Paused: the job checkpointed and holds; resume continues from that "
               "checkpoint", changes={"lease_until": None, "worker": None, "pause_requested": False})
    return True


def request_pause(session: Session, job: Job) -> None:
    """For a job whose row the caller holds: a queued job is paused at once; a running one is flagged, and its owner
    checkpoints and holds it (`hold`). Pausing a paused job, or one already asked, changes nothing."""
    if job.status == "paused" or (job.status == "running" and job.pause_requested):
        return
    if job.status == "running" and not job.cancel_requested:
        job.pause_requested = True
        add_event(session, job, "Pause requested; the job checkpoints and holds")
        return
    if job.status != "queued":
        raise Conflict(f"job {job.id} is {job.status}" + (" and being cancelled" if job.cancel_requested else "")
                       + "; only a queued or running job can be paused", param="job_id", code="job_not_pausable")
    transition(session, job, "pause", "Paused before it started; resume puts it back in the queue",
               changes={"queue_position": None, "estimated_start_at": None})


def request_resume(session: Session, job: Job) -> bool:
    """paused → queued, for a job whose row the caller holds; it resumes from its newest checkpoint when claimed.
    Returns whether it went back to the queue (False: it was still running, asked to pause: the request is
    withdrawn and it goes on)."""
    if job.status == "running" and job.pause_requested:
        job.pause_requested = False
        add_event(session, job, "Resumed before it paused; it goes on")
        return False
    if job.status != "paused":
        raise Conflict(f"job {job.id} is {job.status}; only a paused job can be resumed", param="job_id",
                       code="job_not_paused")
    transition(session, job, "resume", "Resumed; it waits in the queue and continues from its newest checkpoint")
    return True


def expire_lease(session: Session, job: Job, *, max_attempts: int) -> str:
    """A running job whose lease expired (the caller holds its row) lost its worker: cancelled if a cancel was
    requested, failed with `worker_lost` after `max_attempts` claims, else requeued (the next claim makes
    attempt + 1 and resumes from the newest checkpoint). Returns the new status."""
    lost = f"worker {job.worker} stopped renewing its lease (attempt {job.attempt})"
    # its GPU time ends at the last heartbeat, not when the reaper noticed (the close below then finds it closed)
    last_seen = session.scalar(select(JobRun.last_seen_at).where(JobRun.job_id == job.id,
                                                                 JobRun.attempt == job.attempt))
    _close_run(session, job, "worker_lost", at=last_seen)
    if job.cancel_requested:
        _end(session, job, "cancelled", message=f"The job was cancelled ({lost})")
    elif job.attempt >= max_attempts:
        _end(session, job, "failed", error={
            "code": "worker_lost", "param": None,
            "message": f"{lost}; it was tried {job.attempt} times (max_attempts), so it is not retried"})
    else:
        _requeue(session, job, lost, reason="lease_expired")
    return job.status


def fail_unclaimed(session: Session, job: Job, error: dict[str, Any]) -> None:
    """validating_files → failed (its files did not pass the check), for a job whose row the caller holds."""
    transition(session, job, "reject", f"The job failed: {error['message']}", level="error", data={"error": error},
               changes={"error": error, "finished_at": now()})


def mark_queued(session: Session, job: Job) -> None:
    """validating_files → queued, for a job whose row the caller holds."""
    transition(session, job, "files_checked", "Job queued")


def request_cancel(session: Session, job: Job) -> None:
    """For a job whose row the caller holds: a queued (or validating) job is cancelled at once; a running one
    is flagged and its worker stops it."""
    if job.status in TERMINAL:
        raise InvalidRequest(
            f"job {job.id} is already {job.status}; only queued or running jobs can be cancelled",
            param="job_id", code="job_not_cancellable",
        )
    if job.status == "running":
        if not job.cancel_requested:
            job.cancel_requested = True
            add_event(session, job, "Cancellation requested; stopping the training process")
        return
    # queued / validating_files: nothing runs yet, so cancel now. The claim refuses cancelled jobs.
    transition(session, job, "cancel", "The job was cancelled",
               changes={"cancel_requested": True, "finished_at": now()})
