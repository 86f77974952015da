"""The webhook events and their payloads.

Three are OpenAI's, with OpenAI's names and body (`{"id": "evt_…", "object": "event", "type": …, "created_at": …,
"data": {"id": "ftjob-…"}}`); four are TuneQueue's own, in the same envelope, with a few more fields in `data`.
Each comes from one job event (common/state.py `add_event`) and its id is that event's: one job event, one
webhook event, whatever the number of endpoints."""

from __future__ import annotations

import json
from typing import Any

SUCCEEDED = "fine_tuning.job.succeeded"
FAILED = "fine_tuning.job.failed"
CANCELLED = "fine_tuning.job.cancelled"
QUEUED = "fine_tuning.job.queued"
RUNNING = "fine_tuning.job.running"
PREEMPTED = "fine_tuning.job.preempted"
CHECKPOINT = "fine_tuning.job.checkpoint.created"

OPENAI_EVENTS = (SUCCEEDED, FAILED, CANCELLED)
EVENT_TYPES = (*OPENAI_EVENTS, QUEUED, RUNNING, PREEMPTED, CHECKPOINT)

# a `state` job event's new status → the webhook event it is
_BY_STATUS = {"queued": QUEUED, "running": RUNNING, "succeeded": SUCCEEDED, "failed": FAILED,
              "cancelled": CANCELLED}
# job event types whose webhook does not depend on their data
_BY_EVENT_TYPE = {"preempted": PREEMPTED, "checkpoint": CHECKPOINT}


def webhook_type(event_type: str, data: dict[str, Any] | None) -> str | None:
    """The webhook event a job event is, or None (a log line, a metrics sample: not sent)."""
    if event_type == "state":
        return _BY_STATUS.get(str((data or {}).get("status")))
    return _BY_EVENT_TYPE.get(event_type)


def event_id(job_event_id: str) -> str:
    """`ftevent-XXXX` → `evt_XXXX`: the webhook event's id, stable for as long as the job event exists."""
    return "evt_" + job_event_id.split("-", 1)[-1]


def payload(kind: str, *, event_id: str, created_at: int, job_id: str, attempt: int,
            data: dict[str, Any] | None) -> str:
    """The body, as the exact bytes every attempt sends (compact JSON, ASCII)."""
    body: dict[str, Any] = {"id": job_id}
    if kind == RUNNING:
        body["attempt"] = attempt
    elif kind == QUEUED and data and data.get("reason"):
        body["reason"] = data["reason"]  # back in the queue after a running attempt: lease_expired, preempted, …
    elif kind == CHECKPOINT and data:
        body.update(checkpoint_id=data.get("checkpoint_id"), step=data.get("step"))
    return json.dumps({"id": event_id, "object": "event", "type": kind, "created_at": created_at, "data": body},
                      separators=(",", ":"))
