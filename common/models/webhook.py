"""Signed webhooks (docs/webhooks.md): a tenant's endpoints, and the outbox of deliveries to them.

A delivery is written in the transaction of the job event that causes it (common/webhooks/outbox.py, called by
common/state.py `add_event`), so that a committed event is never without its deliveries and a rolled-back one has
none. The senders (worker/webhook_delivery.py) claim due rows with FOR UPDATE SKIP LOCKED."""

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base, TimestampMixin


class WebhookEndpoint(TimestampMixin, Base):
    """Where a tenant's events go. `secret` is the signing key (`whsec_` + base64), kept because every delivery is
    signed with it; `previous_secret` signs too until `previous_secret_expires_at` after a rotation with a grace
    period. A deleted endpoint (`deleted_at`) is not found and sent nothing more."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_id_created_at", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    description: Mapped[str] = mapped_column(String(256), default="", server_default="")
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_by: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class WebhookDelivery(TimestampMixin, Base):
    """One event for one endpoint. `event_id` is the payload's `id` and the `webhook-id` header of every attempt
    (receivers dedupe on it); `payload` is the exact body, sent byte for byte on each attempt.

    state: `pending` (due at `next_attempt_at`), `delivered` (a 2xx answer), `failed` (a day of retries ran out)
    or `cancelled` (its endpoint was deleted)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("endpoint_id", "event_id"),
                      Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at", "id"),
                      # what a sender reads: the due rows only
                      Index("ix_webhook_deliveries_due", "next_attempt_at",
                            postgresql_where=text("state = 'pending'")))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    last_response: Mapped[str | None] = mapped_column(Text, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
