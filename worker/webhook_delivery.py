"""The webhook sender: every Celery worker runs `WebhookSender`, a thread that every `webhook_poll_seconds` sends
the deliveries that are due (common/webhooks/outbox.py wrote them beside their job events).

One delivery at a time, in one transaction: the row is claimed with SELECT … FOR UPDATE SKIP LOCKED (another
sender skips it, so two never send it at once), the destination is resolved and checked again (the name may
point elsewhere since it was registered), the request is signed and sent, and the outcome is written before the
commit releases the row. A sender that dies mid-attempt commits nothing: the row is still pending and the next
pass sends it again, with the same webhook-id and body (receivers dedupe on webhook-id; delivery is at least
once). Nothing lives outside Postgres, so a restart loses nothing."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import session_scope
from common.models import WebhookDelivery, WebhookEndpoint
from common.settings import Settings, get_settings
from common.webhooks import outbox, signing
from common.webhooks.allow import AllowList, DestinationRefused, destination, parse_allow, parse_url
from worker.webhook_http import Outcome, post

log = logging.getLogger("tunequeue.webhooks")
MAX_PER_PASS = 100  # then the loop sleeps once, so a backlog never starves the stop signal


def now() -> datetime:
    return datetime.now(UTC)


def _claim(session: Session, at: datetime) -> tuple[WebhookDelivery, WebhookEndpoint] | None:
    row = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.state == outbox.PENDING, WebhookDelivery.next_attempt_at <= at)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(1)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def secrets_in_force(endpoint: WebhookEndpoint, at: datetime) -> list[str]:
    """The current secret, and the previous one during a rotation's grace period."""
    previous = endpoint.previous_secret
    expires = endpoint.previous_secret_expires_at
    return [endpoint.secret, *([previous] if previous and expires is not None and expires > at else [])]


def attempt(delivery: WebhookDelivery, endpoint: WebhookEndpoint, allow: AllowList, timeout: float) -> Outcome:
    """Check where the URL leads now, sign, send."""
    try:
        target = parse_url(endpoint.url)
        addresses = destination(target, allow)
    except DestinationRefused as exc:
        return Outcome(None, None, f"not sent: {exc}")
    body = delivery.payload.encode()
    headers = signing.headers(secrets_in_force(endpoint, now()), delivery.event_id, int(time.time()), body)
    return post(target, addresses, body, headers, timeout)


def record(delivery: WebhookDelivery, outcome: Outcome, at: datetime) -> None:
    delivery.attempts += 1
    delivery.first_attempt_at = delivery.first_attempt_at or at
    delivery.last_attempt_at = at
    delivery.last_status_code, delivery.last_response, delivery.last_error = (outcome.status, outcome.excerpt,
                                                                              outcome.error)
    if outcome.delivered:
        delivery.state, delivery.delivered_at, delivery.next_attempt_at = outbox.DELIVERED, at, None
        return
    retry = outbox.next_attempt(delivery.first_attempt_at, at, delivery.attempts)
    if retry is None:
        delivery.state, delivery.next_attempt_at = outbox.FAILED, None
    else:
        delivery.next_attempt_at = retry


def deliver_one(settings: Settings, allow: AllowList) -> bool:
    """Send one due delivery, if there is one; returns whether there was."""
    with session_scope() as session:
        claimed = _claim(session, now())
        if claimed is None:
            return False
        delivery, endpoint = claimed
        if endpoint.deleted_at is not None:
            delivery.state, delivery.next_attempt_at = outbox.CANCELLED, None
            return True
        try:
            outcome = attempt(delivery, endpoint, allow, settings.webhook_timeout_seconds)
        except Exception as exc:  # a bug must not make one row fail every pass forever: it backs off like the rest
            log.exception("webhook %s: the attempt raised", delivery.id)
            outcome = Outcome(None, None, f"not sent: internal error ({type(exc).__name__})")
        record(delivery, outcome, now())
        if not outcome.delivered:
            log.info("webhook %s to %s failed (attempt %d): %s", delivery.id, endpoint.id, delivery.attempts,
                     outcome.error)
        return True


def deliver_due(settings: Settings | None = None, limit: int = MAX_PER_PASS) -> int:
    """Send what is due now, at most `limit`; returns how many were handled."""
    settings = settings or get_settings()
    allow = parse_allow(settings.webhook_allow)
    done = 0
    while done < limit and deliver_one(settings, allow):
        done += 1
    return done


class WebhookSender(threading.Thread):
    """Runs `deliver_due` every `webhook_poll_seconds` in a worker process until stopped."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(daemon=True, name="tunequeue-webhooks")
        self.settings = settings or get_settings()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.webhook_poll_seconds):
            try:
                deliver_due(self.settings)
            except Exception:  # Postgres away: try again next period
                log.exception("webhook pass failed")

    def stop(self) -> None:
        self.stopped.set()
