"""A tenant's webhook endpoints and their deliveries, managed by its admins (`/webhooks`, api/routes/webhooks.py).

Every endpoint and delivery is its tenant's: another tenant's id is a 404, as everywhere. A URL is checked for
where it leads (common/webhooks/allow.py) by the route before a session is opened (resolving a name may take the
resolver's time); this module checks the rest and writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.errors import Conflict, InvalidRequest
from common.ids import new_id
from common.models import Tenant, WebhookDelivery, WebhookEndpoint
from common.services.queries import get_owned, not_found, paginate
from common.webhooks import outbox
from common.webhooks.events import EVENT_TYPES
from common.webhooks.signing import new_secret

MAX_ENDPOINTS_PER_TENANT = 20


def check_events(events: list[str] | None) -> list[str]:
    """The subscribed event types, in EVENT_TYPES' order; all of them when none were named."""
    if events is None:
        return list(EVENT_TYPES)
    if not events:
        raise InvalidRequest("events is empty: name at least one of " + ", ".join(EVENT_TYPES) +
                             " (or leave it out for all of them)", param="events", code="invalid_events")
    for i, name in enumerate(events):
        if name not in EVENT_TYPES:
            raise InvalidRequest(f"unknown event type {name[:80]!r}: the events are " + ", ".join(EVENT_TYPES),
                                 param=f"events[{i}]", code="unknown_event")
    return [name for name in EVENT_TYPES if name in events]


def create(session: Session, tenant_id: str, *, url: str, events: list[str], description: str,
           user: str) -> WebhookEndpoint:
    """A new endpoint with a new secret, at most MAX_ENDPOINTS_PER_TENANT live ones per tenant (the tenant row
    is locked while they are counted, so two requests cannot both take the last place)."""
    session.scalar(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    live = session.scalar(select(func.count()).select_from(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))) or 0
    if live >= MAX_ENDPOINTS_PER_TENANT:
        raise InvalidRequest(f"your organization has {live} webhook endpoints, the most it may have: delete one "
                             "(DELETE /webhooks/{id}) or send several event types to one endpoint",
                             code="too_many_webhooks")
    row = WebhookEndpoint(id=new_id("wh"), tenant_id=tenant_id, url=url, events=events, description=description,
                          secret=new_secret(), created_by=user)
    session.add(row)
    session.flush()
    return row


def list_endpoints(session: Session, tenant_id: str, *, after: str | None,
                   limit: int) -> tuple[list[WebhookEndpoint], bool]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id,
                                         WebhookEndpoint.deleted_at.is_(None))
    return paginate(session, stmt, WebhookEndpoint, after=after, limit=limit, tenant_id=tenant_id)


def get(session: Session, tenant_id: str, webhook_id: str, *, for_update: bool = False) -> WebhookEndpoint:
    return get_owned(session, WebhookEndpoint, webhook_id, tenant_id, what="webhook", param="webhook_id",
                     for_update=for_update)


def delete(session: Session, tenant_id: str, webhook_id: str) -> WebhookEndpoint:
    """No more deliveries to it: its pending ones are cancelled (one being sent right now finishes its attempt,
    and the sender then cancels it), and it is not found from now on."""
    row = get(session, tenant_id, webhook_id, for_update=True)
    row.deleted_at = datetime.now(UTC)
    pending = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == row.id,
                                               WebhookDelivery.state == outbox.PENDING
                                               ).with_for_update(skip_locked=True)
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(pending))
                    .values(state=outbox.CANCELLED, next_attempt_at=None))
    return row


def rotate(session: Session, tenant_id: str, webhook_id: str, *, grace_seconds: int) -> WebhookEndpoint:
    """A new secret; the old one signs beside it for `grace_seconds` (both signatures in webhook-signature), or
    stops at once (0)."""
    row = get(session, tenant_id, webhook_id, for_update=True)
    now = datetime.now(UTC)
    if grace_seconds > 0:
        row.previous_secret, row.previous_secret_expires_at = row.secret, now + timedelta(seconds=grace_seconds)
    else:
        row.previous_secret, row.previous_secret_expires_at = None, None
    row.secret = new_secret()
    return row


def list_deliveries(session: Session, tenant_id: str, webhook_id: str, *, state: str | None, after: str | None,
                    limit: int) -> tuple[list[WebhookDelivery], bool]:
    """An endpoint's deliveries, newest first (of one state, given `state`)."""
    endpoint = get(session, tenant_id, webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id,
                                         WebhookDelivery.tenant_id == tenant_id)
    if state is not None:
        if state not in outbox.STATES:
            raise InvalidRequest(f"state must be one of {', '.join(outbox.STATES)}; got {state[:40]!r}",
                                 param="state")
        stmt = stmt.where(WebhookDelivery.state == state)
    return paginate(session, stmt, WebhookDelivery, after=after, limit=limit, tenant_id=tenant_id)


def redeliver(session: Session, tenant_id: str, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    """Send it again now, with the same webhook-id and body, and a new day of retries if this attempt fails.
    409 while a sender holds it (an attempt is in flight: ask again in a few seconds)."""
    endpoint = get(session, tenant_id, webhook_id)
    exists = session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id,
                                                             WebhookDelivery.endpoint_id == endpoint.id))
    if exists is None:
        raise not_found("delivery", delivery_id, "delivery_id")
    row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                         .with_for_update(skip_locked=True))
    if row is None:
        raise Conflict("this delivery is being sent right now; ask again in a few seconds",
                       param="delivery_id", code="delivery_in_progress")
    row.state, row.next_attempt_at, row.first_attempt_at = outbox.PENDING, datetime.now(UTC), None
    return row
