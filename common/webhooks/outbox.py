"""The outbox: one `webhook_deliveries` row per webhook event and endpoint, written in the transaction of the job
event that causes it, and the retry schedule the senders (worker/webhook_delivery.py) keep.

`record` is called by common/state.py `add_event` for every job event: a state change (queued, running,
succeeded, failed, cancelled), a preemption or a checkpoint becomes a delivery to each live endpoint of the job's
tenant that subscribed to it, in one INSERT … SELECT (a tenant without endpoints costs that one statement, and
other job events cost nothing). Committed with the event, rolled back with it: no event without its deliveries,
no delivery of an event that did not happen.

Retries: the first attempt is due at once; after a failed attempt n the next waits FIRST_DELAY × 2^(n-1), at most
MAX_DELAY, and the last is made RETRY_FOR after the first attempt; when that one fails the delivery is `failed`.
With the defaults: 15 s, 30 s, 1 min, … 2 h 8 min, then every 4 h, and the 16th attempt 24 h after the first."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from common.models import JobEvent
from common.webhooks.events import event_id, payload, webhook_type

FIRST_DELAY = timedelta(seconds=15)
MAX_DELAY = timedelta(hours=4)
RETRY_FOR = timedelta(hours=24)

PENDING, DELIVERED, FAILED, CANCELLED = "pending", "delivered", "failed", "cancelled"
STATES = (PENDING, DELIVERED, FAILED, CANCELLED)

# The delivery's id is derived from the event and the endpoint: the same pair can never make two rows, and the
# unique (endpoint_id, event_id) constraint says so to the database too.
_RECORD = text("""
    INSERT INTO webhook_deliveries (id, endpoint_id, tenant_id, event_id, event_type, job_id, payload, state,
                                    attempts, next_attempt_at, created_at)
    SELECT 'whdel-' || substr(md5(CAST(:event_id AS text) || '/' || e.id), 1, 24), e.id, e.tenant_id,
           CAST(:event_id AS varchar), CAST(:event_type AS varchar), CAST(:job_id AS varchar), CAST(:payload AS text),
           'pending', 0, now(), now()
    FROM webhook_endpoints e
    WHERE e.tenant_id = CAST(:tenant_id AS varchar) AND e.deleted_at IS NULL
      AND CAST(:event_type AS varchar) = ANY(e.events)
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
""")


def record(session: Session, event: JobEvent) -> int:
    """The deliveries of a job event this transaction just flushed; returns how many were written."""
    kind = webhook_type(event.type, event.data)
    if kind is None:
        return 0
    eid = event_id(event.id)
    body = payload(kind, event_id=eid, created_at=int(event.created_at.timestamp()), job_id=event.job_id,
                   attempt=event.attempt, data=event.data)
    result = session.execute(_RECORD, {"event_id": eid, "event_type": kind, "job_id": event.job_id,
                                       "payload": body, "tenant_id": event.tenant_id})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def retry_delay(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt."""
    return min(FIRST_DELAY * (2 ** min(max(attempts - 1, 0), 30)), MAX_DELAY)


def next_attempt(first_attempt_at: datetime, attempted_at: datetime, attempts: int) -> datetime | None:
    """When to try again after a failed attempt, or None: the day of retries is over."""
    end = first_attempt_at + RETRY_FOR
    if attempted_at >= end:
        return None
    return min(attempted_at + retry_delay(attempts), end)
