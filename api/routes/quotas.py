"""Quotas (common/services/quotas.py): a tenant sees its own with its use (`GET /quota`, and its GPU time per user:
`GET /usage`); the platform operator
sets any tenant's (`PUT /tenants/{tenant_id}/quota`, as `tunequeue admin set-quota` does)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DbCaller, OperatorDbCaller
from common.db import session_scope
from common.schemas.quotas import QuotaPublic, QuotaUpdate, UsagePublic
from common.schemas.strings import Name
from common.services import quotas as service

router = APIRouter(tags=["quotas"])


@router.get("/quota", response_model=QuotaPublic)
def get_quota(caller: DbCaller) -> QuotaPublic:
    """Your organization's quotas and what it uses of each now."""
    with session_scope() as session:
        return QuotaPublic(organization_id=caller.tenant_id, **service.usage(session, caller.tenant_id))


@router.get("/usage", response_model=UsagePublic)
def get_usage(caller: DbCaller) -> UsagePublic:
    """Your organization's GPU time in the rolling 30 days that the gpu_hours quota counts, per user."""
    with session_scope() as session:
        return UsagePublic(organization_id=caller.tenant_id, **service.gpu_usage(session, caller.tenant_id))


@router.put("/tenants/{tenant_id}/quota", response_model=QuotaPublic)
def set_quota(tenant_id: Name, body: QuotaUpdate, _: OperatorDbCaller) -> QuotaPublic:
    """The platform operator's: set or remove a tenant's quotas and its fair-share weight (the ones in the body;
    the rest stay)."""
    with session_scope() as session:
        service.set_quotas(session, tenant_id, body.given())
        if "weight" in body.model_fields_set:
            service.set_weight(session, tenant_id, body.weight)
        return QuotaPublic(organization_id=tenant_id, **service.usage(session, tenant_id))
