"""`tunequeue admin`: tenants and API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from common import auth
from common.db import session_scope
from common.errors import InvalidRequest, NotFound
from common.models import ApiKey
from common.models.base import DEFAULT_USER
from common.services import quotas


def create_tenant(name: str) -> str:
    """Create a tenant; returns a line that names it."""
    with session_scope() as session:
        tenant = auth.create_tenant(session, name)
        return f"created tenant {tenant.name} ({tenant.id})"


def create_key(tenant_name: str, role: str, label: str, *, create_tenant: bool = False,
               expires_in_days: float | None = None, user: str = DEFAULT_USER) -> str:
    """A new API key for `user` of the tenant (created first when `create_tenant`); the only time it is shown in
    clear."""
    if expires_in_days is not None and expires_in_days <= 0:
        raise InvalidRequest("--expires-in-days must be more than 0", param="expires_in_days")
    expires_at = None if expires_in_days is None else datetime.now(UTC) + timedelta(days=expires_in_days)
    with session_scope() as session:
        try:
            tenant = auth.get_tenant_by_name(session, tenant_name)
        except NotFound:
            if not create_tenant:
                raise
            tenant = auth.create_tenant(session, tenant_name)
        _, plaintext = auth.create_key(session, tenant, role=role, name=label, expires_at=expires_at, user=user)
    return plaintext


def list_keys(tenant_name: str) -> str:
    """One line per key of the tenant, newest first: id, user, role, state, prefix, dates and name."""
    with session_scope() as session:
        tenant = auth.get_tenant_by_name(session, tenant_name)
        keys = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)
                               .order_by(ApiKey.created_at.desc())).all()
        now = datetime.now(UTC)
        lines = [f"{'id':18} {'user':16} {'role':8} {'state':8} {'prefix':11} {'created':20} {'last used':20} "
                 f"{'expires':20} name"]
        for k in keys:
            state = "revoked" if k.revoked_at else "expired" if not auth.is_usable(k, now) else "active"
            lines.append(f"{k.id:18} {k.user_name:16} {k.role:8} {state:8} {k.prefix:11} {_when(k.created_at):20} "
                         f"{_when(k.last_used_at):20} {_when(k.expires_at):20} {k.name}")
        return "\n".join(lines)


def revoke_key(key_id: str) -> str:
    """Revoke a key of any tenant by its id (the operator's way; a tenant admin uses DELETE /keys/{id})."""
    with session_scope() as session:
        key = session.get(ApiKey, key_id, with_for_update=True)
        if key is None:
            raise NotFound(f"no key with id {key_id!r}", param="key_id")
        if key.revoked_at is None:
            key.revoked_at = datetime.now(UTC)
        return f"revoked {key.id} ({key.role}, {key.name or 'no name'}); API workers refuse it within " \
               "TUNEQUEUE_KEY_CACHE_SECONDS"


def set_quota(tenant_name: str, values: dict[str, float | None], weight: Any = None) -> str:
    """Set or remove quotas of a tenant (common/services/quotas.py), and its weight when one is given (a number, or
    None for the default); returns its weight, limits and use, one per line."""
    with session_scope() as session:
        tenant = auth.get_tenant_by_name(session, tenant_name)
        quotas.set_quotas(session, tenant.id, values)
        if weight is not None:
            quotas.set_weight(session, tenant.id, weight)
        now = quotas.usage(session, tenant.id)
    return "\n".join([f"weight: {now['weight']}", *(
        f"{name}: {'no limit' if limit is None else limit} (in use: {now['usage'][name]})"
        for name, limit in now["limits"].items())])


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
