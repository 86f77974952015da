"""`validating_files → queued`: check a new job's files against what the job will really do, before any GPU
is involved. Runs on the CPU validation queue (jobs.validate)."""

from __future__ import annotations

import logging

from sqlalchemy import select

from common import state
from common.db import session_scope
from common.models import Job
from common.queue import enqueue_run

log = logging.getLogger("tunequeue.validate")


def validate_job(job_id: str) -> str:
    """Returns the job's status afterwards. Idempotent: a job no longer validating is left alone."""
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != "validating_files":
            return job.status if job else "missing"
        state.mark_queued(session, job)
    enqueue_run(job_id)
    return "queued"
