"""`/keys`: a tenant admin lists, makes, rotates and revokes the tenant's API keys (common/services/keys.py).
Another tenant's key is a 404, as everywhere. A member key gets 403."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDbCaller, key_cache
from common.db import session_scope
from common.schemas.common import ListPage
from common.schemas.keys import KeyCreate, KeyCreated, KeyPublic, KeyRotate
from common.schemas.strings import Name
from common.services import keys as service

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", response_model=KeyCreated)
def create_key(body: KeyCreate, caller: AdminDbCaller) -> KeyCreated:
    """A new key of your tenant. The answer holds the key itself: the only time it is shown."""
    with session_scope() as session:
        row, plaintext = service.create(session, caller.tenant_id, role=body.role, name=body.name,
                                        expires_at=body.expires(), user=body.user)
        return KeyCreated.made(row, plaintext)


@router.get("", response_model=ListPage[KeyPublic])
def list_keys(caller: AdminDbCaller, after: Name | None = None, limit: int = 20) -> ListPage[KeyPublic]:
    """Your tenant's keys, newest first, revoked and expired ones included; never the keys themselves."""
    with session_scope() as session:
        rows, has_more = service.list_keys(session, caller.tenant_id, after=after, limit=limit)
        data = [KeyPublic.of(r) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.delete("/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: Name, caller: AdminDbCaller) -> KeyPublic:
    """Revoke a key: refused from then on (by every API worker within TUNEQUEUE_KEY_CACHE_SECONDS), and its open
    event streams end within a minute. A key cannot revoke itself."""
    with session_scope() as session:
        row = service.revoke(session, caller.tenant_id, key_id, by_key_id=caller.key_id)
        public = KeyPublic.of(row)
    key_cache().forget_key(key_id)  # this worker at once; the others when their cache entry ends
    return public


@router.post("/{key_id}/rotate", response_model=KeyCreated)
def rotate_key(key_id: Name, caller: AdminDbCaller, body: KeyRotate | None = None) -> KeyCreated:
    """A new key with this one's name, role and expiry; this one revoked now, or expiring after
    `grace_seconds` so that whatever uses it can switch first."""
    with session_scope() as session:
        row, plaintext = service.rotate(session, caller.tenant_id, key_id,
                                        grace_seconds=(body or KeyRotate()).grace_seconds)
        created = KeyCreated.made(row, plaintext)
    key_cache().forget_key(key_id)
    return created
