"""API keys: random, shown once, stored as sha256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.errors import Conflict, NotFound
from common.ids import new_id
from common.models import ApiKey, Tenant

KEY_PREFIX = "tq-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> Tenant:
    if session.scalar(select(Tenant).where(Tenant.name == name)):
        raise Conflict(f"tenant {name!r} already exists", param="name", code="tenant_exists")
    tenant = Tenant(id=new_id("tenant", 16), name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}", param="tenant")
    return tenant


def create_key(session: Session, tenant: Tenant, *, role: str = "member", name: str = "") -> tuple[ApiKey, str]:
    """Return the row and the plaintext key; the plaintext is never stored."""
    if role not in ("member", "admin"):
        raise ValueError(f"role must be 'member' or 'admin'; got {role!r}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key", 16), tenant_id=tenant.id, name=name, prefix=plaintext[:10],
                 key_hash=hash_key(plaintext), role=role)
    session.add(row)
    session.flush()
    return row, plaintext


def lookup_key(session: Session, plaintext: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if row is None or row.revoked_at is not None:
        return None
    return row
