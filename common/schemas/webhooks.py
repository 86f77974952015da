"""`/webhooks`: a tenant's webhook endpoints and their deliveries (docs/webhooks.md). The secret appears in the
answer that made it and in the answer to a rotation, never again."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from common.models import WebhookDelivery, WebhookEndpoint
from common.schemas.common import PublicModel, unix
from common.schemas.strings import INVALID_STRING, Name
from common.webhooks.events import EVENT_TYPES

MAX_GRACE_SECONDS = 7 * 24 * 3600


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where to POST the events: an https:// (or http://) URL that this server may "
                     "reach (docs/webhooks.md, 'Where webhooks may go')")
    events: list[str] | None = Field(default=None, description="The event types to send; default: all of them: "
                                     + ", ".join(EVENT_TYPES))
    description: Name = Field(default="", max_length=256, description="A label, e.g. what receives the events")

    @field_validator("description")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise PydanticCustomError(INVALID_STRING, "must not contain control characters (NUL, newline, tab, …)")
        return value


class WebhookRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(default=0, ge=0, le=MAX_GRACE_SECONDS, description="How long the old secret keeps "
                               "signing beside the new one (two entries in webhook-signature); 0: replaced now")


class WebhookPublic(PublicModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    description: str
    created_at: int
    created_by: str = Field(description="The user of the key that registered it")
    previous_secret_expires_at: int | None = Field(description="While set (after a rotation with a grace period), "
                                                   "the old secret signs too, until this moment")

    @classmethod
    def of(cls, row: WebhookEndpoint) -> WebhookPublic:
        return cls(id=row.id, url=row.url, events=list(row.events), description=row.description,
                   created_at=unix(row.created_at) or 0, created_by=row.created_by,
                   previous_secret_expires_at=unix(row.previous_secret_expires_at)
                   if row.previous_secret is not None else None)


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="The signing secret (whsec_…). Shown this once: store it now")

    @classmethod
    def made(cls, row: WebhookEndpoint) -> WebhookCreated:
        return cls(**WebhookPublic.of(row).model_dump(), secret=row.secret)


class DeliveryPublic(PublicModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str = Field(description="The endpoint")
    event_id: str = Field(description="The event's id: the payload's `id` and the webhook-id header of every attempt")
    event_type: str
    job_id: str | None
    state: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    created_at: int
    first_attempt_at: int | None
    last_attempt_at: int | None
    next_attempt_at: int | None = Field(description="When a pending delivery is tried next")
    delivered_at: int | None
    last_status_code: int | None = Field(description="The HTTP status of the last attempt; null if it got none")
    last_response: str | None = Field(description="The first bytes of the last answer's body")
    last_error: str | None = Field(description="Why the last attempt failed, when it did")
    payload: dict[str, Any] = Field(description="The body sent, parsed")

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryPublic:
        return cls(id=row.id, webhook_id=row.endpoint_id, event_id=row.event_id, event_type=row.event_type,
                   job_id=row.job_id, state=row.state,  # type: ignore[arg-type]
                   attempts=row.attempts, created_at=unix(row.created_at) or 0,
                   first_attempt_at=unix(row.first_attempt_at), last_attempt_at=unix(row.last_attempt_at),
                   next_attempt_at=unix(row.next_attempt_at) if row.state == "pending" else None,
                   delivered_at=unix(row.delivered_at), last_status_code=row.last_status_code,
                   last_response=row.last_response, last_error=row.last_error, payload=json.loads(row.payload))
