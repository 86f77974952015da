"""`/secrets`: a tenant admin stores, lists and deletes the tenant's tracker credentials
(common/services/secrets.py; docs/api.md, "Secrets"). Values go in and never come out. A member key gets 403;
another tenant's secrets are neither listed nor used."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDbCaller, SettingsDep
from common.db import session_scope
from common.schemas.common import ListPage
from common.schemas.secrets import SecretDeleted, SecretPublic, SecretPut
from common.schemas.strings import Name
from common.services import secrets as service

router = APIRouter(prefix="/secrets", tags=["secrets"])


@router.put("/{name}", response_model=SecretPublic)
def put_secret(name: Name, body: SecretPut, caller: AdminDbCaller, settings: SettingsDep) -> SecretPublic:
    """Store (or replace) the secret `name`, encrypted. The answer has its name and timestamps, never the value."""
    with session_scope() as session:
        return SecretPublic.of(service.put(session, settings, caller.tenant_id, name, body.value, user=caller.user))


@router.get("", response_model=ListPage[SecretPublic])
def list_secrets(caller: AdminDbCaller) -> ListPage[SecretPublic]:
    """The tenant's secrets by name, with when they were stored; never their values."""
    with session_scope() as session:
        data = [SecretPublic.of(row) for row in service.list_names(session, caller.tenant_id)]
    return ListPage(data=data, has_more=False, first_id=data[0].name if data else None,
                    last_id=data[-1].name if data else None)


@router.delete("/{name}", response_model=SecretDeleted)
def delete_secret(name: Name, caller: AdminDbCaller) -> SecretDeleted:
    """Jobs that start after this run without it (a job whose tracker needs it fails to start its tracker)."""
    with session_scope() as session:
        service.remove(session, caller.tenant_id, name)
    return SecretDeleted(name=name, deleted=True)
