"""`/webhooks`: a tenant admin registers, lists, rotates and deletes the tenant's webhook endpoints, reads their
deliveries and asks for one again (common/services/webhooks.py; docs/webhooks.md). A member key gets 403, another
tenant's endpoint is a 404."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.admission import db_slot
from api.deps import AdminCaller, AdminDbCaller, settings_dep
from common.db import session_scope
from common.errors import InvalidRequest
from common.schemas.common import ListPage
from common.schemas.strings import Name
from common.schemas.webhooks import DeliveryPublic, WebhookCreate, WebhookCreated, WebhookPublic, WebhookRotate
from common.services import webhooks as service
from common.webhooks.allow import DestinationRefused, destination, parse_allow, parse_url

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _check_url(url: str, allow_setting: str) -> None:
    """The URL's own rules and where it leads now (the sender checks the address again at each attempt)."""
    try:
        destination(parse_url(url), parse_allow(allow_setting))
    except DestinationRefused as exc:
        raise InvalidRequest(str(exc), param="url", code=exc.code) from None


@router.post("", response_model=WebhookCreated)
async def create_webhook(body: WebhookCreate, caller: AdminCaller) -> WebhookCreated:
    """A new endpoint. The answer holds its signing secret (whsec_…): the only time it is shown."""
    events = service.check_events(body.events)
    settings = await settings_dep()
    await run_in_threadpool(_check_url, body.url, settings.webhook_allow)  # a name resolves with no slot held

    def create() -> WebhookCreated:
        with session_scope() as session:
            row = service.create(session, caller.tenant_id, url=body.url, events=events,
                                 description=body.description, user=caller.user)
            return WebhookCreated.made(row)

    async with db_slot():
        return await run_in_threadpool(create)


@router.get("", response_model=ListPage[WebhookPublic])
def list_webhooks(caller: AdminDbCaller, after: Name | None = None, limit: int = 20) -> ListPage[WebhookPublic]:
    """Your tenant's endpoints, newest first; never their secrets."""
    with session_scope() as session:
        rows, has_more = service.list_endpoints(session, caller.tenant_id, after=after, limit=limit)
        data = [WebhookPublic.of(r) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: Name, caller: AdminDbCaller) -> WebhookPublic:
    with session_scope() as session:
        return WebhookPublic.of(service.get(session, caller.tenant_id, webhook_id))


@router.delete("/{webhook_id}", response_model=WebhookPublic)
def delete_webhook(webhook_id: Name, caller: AdminDbCaller) -> WebhookPublic:
    """No more deliveries to it; its pending ones are cancelled."""
    with session_scope() as session:
        return WebhookPublic.of(service.delete(session, caller.tenant_id, webhook_id))


@router.post("/{webhook_id}/rotate_secret", response_model=WebhookCreated)
def rotate_secret(webhook_id: Name, caller: AdminDbCaller, body: WebhookRotate | None = None) -> WebhookCreated:
    """A new signing secret, shown this once; the old one stops signing now, or after `grace_seconds`."""
    with session_scope() as session:
        row = service.rotate(session, caller.tenant_id, webhook_id,
                             grace_seconds=(body or WebhookRotate()).grace_seconds)
        return WebhookCreated.made(row)


@router.get("/{webhook_id}/deliveries", response_model=ListPage[DeliveryPublic])
def list_deliveries(webhook_id: Name, caller: AdminDbCaller, state: Name | None = None, after: Name | None = None,
                    limit: int = 20) -> ListPage[DeliveryPublic]:
    """The endpoint's deliveries, newest first: attempts, the last answer's status and first bytes, the next
    attempt of a pending one."""
    with session_scope() as session:
        rows, has_more = service.list_deliveries(session, caller.tenant_id, webhook_id, state=state, after=after,
                                                 limit=limit)
        data = [DeliveryPublic.of(r) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryPublic)
def redeliver(webhook_id: Name, delivery_id: Name, caller: AdminDbCaller) -> DeliveryPublic:
    """Send this delivery again now (same webhook-id, same body); a failed or delivered one too."""
    with session_scope() as session:
        return DeliveryPublic.of(service.redeliver(session, caller.tenant_id, webhook_id, delivery_id))
