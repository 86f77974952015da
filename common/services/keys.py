"""A tenant's API keys, managed by its admins (`/keys`, api/routes/keys.py) and by the CLI (`tunequeue admin`).

A key is shown once, when it is made; afterwards only its id, name, role, the first characters (`prefix`) and its
dates. Revoking is immediate in the database; an API worker that looked the key up in the last
TUNEQUEUE_KEY_CACHE_SECONDS may still accept it that long, and an open event stream ends at its next key check
(api/routes/jobs.py). Rotating makes a new key with the same name and role and ends the old one, at once or after
a grace period (the old one's `expires_at`), so that a deployment can switch without an outage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import auth
from common.errors import InvalidRequest
from common.models import ApiKey, Tenant
from common.models.base import DEFAULT_USER
from common.services.queries import get_owned, paginate

MAX_GRACE = timedelta(days=7)


def create(session: Session, tenant_id: str, *, role: str, name: str,
           expires_at: datetime | None, user: str = DEFAULT_USER) -> tuple[ApiKey, str]:
    """A new key of the tenant; `role` one a tenant may hand out (an operator key is made by the CLI only)."""
    if role not in auth.TENANT_ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(auth.TENANT_ROLES)}; got {role!r}", param="role")
    now = datetime.now(UTC)
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("expires_at is in the past; give a moment in the future (unix seconds) or null",
                             param="expires_at")
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None  # the caller's own tenant
    return auth.create_key(session, tenant, role=role, name=name, expires_at=expires_at, user=user)


def list_keys(session: Session, tenant_id: str, *, after: str | None, limit: int) -> tuple[list[ApiKey], bool]:
    """Every key of the tenant, newest first, revoked and expired ones included (they say so)."""
    return paginate(session, select(ApiKey).where(ApiKey.tenant_id == tenant_id), ApiKey, after=after, limit=limit,
                    tenant_id=tenant_id)


def revoke(session: Session, tenant_id: str, key_id: str, *, by_key_id: str | None) -> ApiKey:
    """Revoke one of the tenant's keys (idempotent). Not the key making the request: an admin who revoked their
    own last admin key would lock the tenant out; make another admin key first and revoke with that."""
    key = get_owned(session, ApiKey, key_id, tenant_id, what="key", param="key_id", for_update=True)
    if key_id == by_key_id:
        raise InvalidRequest("a key cannot revoke itself: revoke it with another admin key of your tenant",
                             param="key_id", code="cannot_revoke_own_key")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    return key


def rotate(session: Session, tenant_id: str, key_id: str, *, grace_seconds: int) -> tuple[ApiKey, str]:
    """A new key with the old one's name, role and expiry; the old one revoked now (grace 0) or expiring after
    `grace_seconds` (at most seven days), whichever comes first with its own expiry."""
    if not 0 <= grace_seconds <= MAX_GRACE.total_seconds():
        raise InvalidRequest(f"grace_seconds must be between 0 and {int(MAX_GRACE.total_seconds())}; "
                             f"got {grace_seconds}", param="grace_seconds")
    old = get_owned(session, ApiKey, key_id, tenant_id, what="key", param="key_id", for_update=True)
    now = datetime.now(UTC)
    if not auth.is_usable(old, now):
        raise InvalidRequest(f"key {key_id} is revoked or expired; make a new key instead (POST /keys)",
                             param="key_id", code="key_not_active")
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None
    new, plaintext = auth.create_key(session, tenant, role=old.role, name=old.name, expires_at=old.expires_at,
                                     user=old.user_name)
    if grace_seconds == 0:
        old.revoked_at = now
    else:
        end = now + timedelta(seconds=grace_seconds)
        old.expires_at = end if old.expires_at is None else min(old.expires_at, end)
    return new, plaintext
