"""`tunequeue admin`: tenants and API keys."""

from __future__ import annotations

from common import auth
from common.db import session_scope
from common.errors import NotFound


def create_tenant(name: str) -> str:
    """Create a tenant; returns a line that names it."""
    with session_scope() as session:
        tenant = auth.create_tenant(session, name)
        return f"created tenant {tenant.name} ({tenant.id})"


def create_key(tenant_name: str, role: str, label: str, *, create_tenant: bool = False) -> str:
    """A new API key for the tenant (created first when `create_tenant`); the only time it is shown in clear."""
    with session_scope() as session:
        try:
            tenant = auth.get_tenant_by_name(session, tenant_name)
        except NotFound:
            if not create_tenant:
                raise
            tenant = auth.create_tenant(session, tenant_name)
        _, plaintext = auth.create_key(session, tenant, role=role, name=label)
    return plaintext
