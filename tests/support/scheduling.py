"""History for scheduling and quota tests: finished runs written straight into `job_runs`."""

from __future__ import annotations

from datetime import timedelta

from common import state
from common.db import session_scope
from common.models import JobRun
from tests.support.factories import make_job_row


def record_run(tenant: str, hours: float, *, user: str = "default", ended_ago: timedelta = timedelta(0),
               queue: str = "tunequeue.test.history") -> str:
    """A finished job that trained `hours` device-hours in pool `queue` and ended `ended_ago`; returns its id."""
    job_id = make_job_row(tenant, "succeeded", queue=queue, user_name=user)
    end = state.now() - ended_ago
    with session_scope() as session:
        session.add(JobRun(job_id=job_id, attempt=1, tenant_id=tenant, user_name=user, queue=queue,
                           worker="w", started_at=end - timedelta(hours=hours), last_seen_at=end, ended_at=end))
    return job_id
