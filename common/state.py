"""The job state machine. Every write by a worker is fenced by `attempt`: an owner whose attempt is no
longer current (the job was requeued and claimed again) changes nothing.

    validating_files → queued → running → succeeded | failed | cancelled
                                running → queued   (requeued after a lost lease)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.errors import InvalidRequest
from common.ids import new_id
from common.models import Job, JobEvent

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"validating_files", "queued", "running"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def now() -> datetime:
    return datetime.now(UTC)


def add_event(
    session: Session,
    job: Job | str,
    message: str,
    *,
    tenant_id: str | None = None,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    attempt: int | None = None,
) -> JobEvent:
    job_id = job if isinstance(job, str) else job.id
    if tenant_id is None:
        tenant_id = job.tenant_id if isinstance(job, Job) else session.scalar(
            select(Job.tenant_id).where(Job.id == job_id)
        )
    event = JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        tenant_id=tenant_id,
        level=level,
        type=type,
        message=message,
        data=data,
        attempt=attempt if attempt is not None else (job.attempt if isinstance(job, Job) else 0),
    )
    session.add(event)
    session.flush()
    return event


def claim(session: Session, job_id: str, *, worker: str, lease_seconds: int) -> int | None:
    """queued → running. Returns the new attempt (the caller's fencing epoch), or None if not claimable."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(
            status="running",
            attempt=Job.attempt + 1,
            lease_until=now() + timedelta(seconds=lease_seconds),
            worker=worker,
            started_at=now(),
        )
        .returning(Job.attempt, Job.tenant_id)
    ).one_or_none()
    if row is None:
        return None
    add_event(session, job_id, f"Job started on {worker} (attempt {row.attempt})", tenant_id=row.tenant_id,
              type="state", data={"status": "running", "worker": worker}, attempt=row.attempt)
    return int(row.attempt)


def heartbeat(session: Session, job_id: str, attempt: int, *, lease_seconds: int) -> tuple[bool, bool]:
    """Extend the lease. Returns (still_owner, cancel_requested)."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
        .values(lease_until=now() + timedelta(seconds=lease_seconds))
        .returning(Job.cancel_requested)
    ).one_or_none()
    if row is None:
        return False, False
    return True, bool(row.cancel_requested)


def record_progress(session: Session, job_id: str, attempt: int, progress: dict[str, Any]) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
        .values(last_progress=progress, trained_tokens=progress.get("trained_tokens"))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


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
    if status not in TRANSITIONS["running"] - {"queued"}:
        raise ValueError(f"finish() takes a terminal status; got {status!r}")
    values: dict[str, Any] = {"status": status, "finished_at": now(), "lease_until": None}
    if error is not None:
        values["error"] = error
    if fine_tuned_model is not None:
        values["fine_tuned_model"] = fine_tuned_model
    fence = [Job.id == job_id, Job.attempt == attempt, Job.status == "running"]
    if status == "succeeded":
        fence.append(Job.cancel_requested.is_(False))  # nothing is published after a cancel
    row = session.execute(
        update(Job)
        .where(*fence)
        .values(**values)
        .returning(Job.tenant_id)
    ).one_or_none()
    if row is None:
        return False
    text = message or {"succeeded": "The job has successfully completed",
                       "failed": f"The job failed: {(error or {}).get('message', '')}",
                       "cancelled": "The job was cancelled"}[status]
    add_event(session, job_id, text, tenant_id=row.tenant_id, type="state",
              level="error" if status == "failed" else "info",
              data={"status": status, **({"error": error} if error else {})}, attempt=attempt)
    return True


def fail_unclaimed(session: Session, job: Job, error: dict[str, Any]) -> None:
    """validating_files/queued → failed (before any worker owns it)."""
    _check(job.status, "failed")
    job.status = "failed"
    job.error = error
    job.finished_at = now()
    add_event(session, job, f"The job failed: {error['message']}", type="state", level="error",
              data={"status": "failed", "error": error})


def mark_queued(session: Session, job: Job) -> None:
    _check(job.status, "queued")
    job.status = "queued"
    add_event(session, job, "Job queued", type="state", data={"status": "queued"})


def request_cancel(session: Session, job: Job) -> None:
    """A queued (or validating) job is cancelled at once; a running one is flagged and its worker stops it."""
    if job.status in TERMINAL:
        raise InvalidRequest(
            f"job {job.id} is already {job.status}; only queued or running jobs can be cancelled",
            param="job_id", code="job_not_cancellable",
        )
    if job.status == "running":
        if not job.cancel_requested:
            job.cancel_requested = True
            add_event(session, job, "Cancellation requested; stopping the training process", type="message")
        return
    # queued / validating_files: nothing runs yet, so cancel now. The claim refuses cancelled jobs.
    job.cancel_requested = True
    job.status = "cancelled"
    job.finished_at = now()
    add_event(session, job, "The job was cancelled", type="state", data={"status": "cancelled"})


def _check(current: str, target: str) -> None:
    if target not in TRANSITIONS[current]:
        raise ValueError(f"illegal job transition {current} → {target}")
