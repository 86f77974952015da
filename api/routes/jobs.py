from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sqlalchemy import select

from api.deps import CurrentCaller, SessionDep, SettingsDep
from common.errors import InvalidRequest
from common.models import Job, JobEvent
from common.progress import ProgressChannel
from common.queue import enqueue_job
from common.schemas.common import ListPage
from common.schemas.job_spec import JobSpec
from common.schemas.jobs import JobPublic
from common.services import jobs as service
from common.services.queries import check_limit, get_owned

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger("tunequeue.api")


def live_progress(job: Job) -> dict[str, Any] | None:
    """Redis has the freshest view; Postgres has the last one a worker recorded (Redis may have been flushed)."""
    if job.status == "running":
        try:
            live = ProgressChannel().read_progress(job.id)
        except Exception:  # Redis down: Postgres still knows
            live = None
        if live:
            return live
    return job.last_progress


@router.post("", response_model=JobPublic)
def create_job(spec: JobSpec, caller: CurrentCaller, session: SessionDep, settings: SettingsDep,
               idempotency_key: Annotated[str | None, Header()] = None) -> JobPublic:
    job, created = service.create_job(session, settings, tenant_id=caller.tenant_id, spec=spec,
                                      idempotency_key=idempotency_key)
    session.commit()  # enqueue only what is durable
    if created:
        try:
            enqueue_job(job.id)
        except Exception:
            # The job is queued in Postgres; the reconciler republishes jobs the broker never got.
            log.exception("could not enqueue %s; it stays queued for the reconciler", job.id)
    return JobPublic.of(job, None)


@router.get("", response_model=ListPage[JobPublic])
def list_jobs(caller: CurrentCaller, session: SessionDep, after: str | None = None, limit: int = 20,
              status: str | None = None) -> ListPage[JobPublic]:
    rows, has_more = service.list_jobs(session, caller.tenant_id, after=after, limit=limit, status=status)
    data = [JobPublic.of(r, live_progress(r)) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, caller: CurrentCaller, session: SessionDep) -> JobPublic:
    job = get_owned(session, Job, job_id, caller.tenant_id, what="job", param="job_id")
    return JobPublic.of(job, live_progress(job)).model_copy(
        update={"queue_position": service.queue_position(session, job)})


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, caller: CurrentCaller, session: SessionDep) -> JobPublic:
    job = service.cancel_job(session, caller.tenant_id, job_id)
    return JobPublic.of(job, live_progress(job))


@router.get("/{job_id}/events", response_model=ListPage[dict[str, Any]])
def list_events(job_id: str, caller: CurrentCaller, session: SessionDep, after: str | None = None,
                limit: int = 20) -> ListPage[dict[str, Any]]:
    """Newest first, like OpenAI's; `after` is an event id."""
    get_owned(session, Job, job_id, caller.tenant_id, what="job", param="job_id")
    check_limit(limit)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        anchor = session.scalar(select(JobEvent.seq).where(JobEvent.id == after, JobEvent.job_id == job_id))
        if anchor is None:
            raise InvalidRequest(f"`after` names no event of this job: {after!r}", param="after")
        stmt = stmt.where(JobEvent.seq < anchor)
    rows = list(session.scalars(stmt.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    data = [event_public(e) for e in rows[:limit]]
    return ListPage(data=data, has_more=len(rows) > limit, first_id=data[0]["id"] if data else None,
                    last_id=data[-1]["id"] if data else None)


def event_public(e: JobEvent) -> dict[str, Any]:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": int(e.created_at.timestamp()),
            "level": e.level, "message": e.message, "type": e.type, "data": e.data, "seq": e.seq}
