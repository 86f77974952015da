"""A tenant's secrets: the credentials of its experiment trackers (docs/trackers.md), stored encrypted
(common/secrets_box.py) and handed only to the training children of its own jobs that name the tracker, through
their environment (worker/runner.py). No route returns a value; nothing here logs one.

Names are an allowlist (common/schemas/integrations.py `ALLOWED_SECRET_NAMES`): each is an environment variable a
tracker library reads, so a tenant cannot set anything else in a child's environment."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.errors import InvalidRequest, NotFound
from common.models import TenantSecret
from common.models.base import utcnow
from common.schemas.integrations import ALLOWED_SECRET_NAMES, REQUIRED_SECRETS, SECRET_NAMES, tracker_types
from common.secrets_box import decrypt, encrypt
from common.settings import Settings

MAX_VALUE_LENGTH = 4096


def check_name(name: str) -> str:
    if name not in ALLOWED_SECRET_NAMES:
        raise InvalidRequest(f"{name[:80]!r} is not a secret name this server uses; the names are the credentials of "
                             f"the trackers: {', '.join(ALLOWED_SECRET_NAMES)}", param="name",
                             code="invalid_secret_name")
    return name


def check_value(value: Any) -> str:
    """The value's problems, in words that never quote it."""
    if not isinstance(value, str):
        raise InvalidRequest(f"`value` must be a string; got a {type(value).__name__}", param="value",
                             code="invalid_secret_value")
    if not value.strip():
        raise InvalidRequest("`value` must not be empty or blank", param="value", code="invalid_secret_value")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidRequest(f"`value` must be at most {MAX_VALUE_LENGTH} characters; got {len(value)}",
                             param="value", code="invalid_secret_value")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidRequest("`value` must be printable text: no control characters (newline, tab, NUL) and no "
                             "lone surrogates; an environment variable carries it", param="value",
                             code="invalid_secret_value")
    return value


def put(session: Session, settings: Settings, tenant_id: str, name: str, value: Any, *, user: str) -> TenantSecret:
    check_name(name)
    token = encrypt(settings, check_value(value))
    now = utcnow()
    stmt = insert(TenantSecret).values(tenant_id=tenant_id, name=name, ciphertext=token, created_by=user,
                                       created_at=now, updated_at=now)
    session.execute(stmt.on_conflict_do_update(index_elements=["tenant_id", "name"],
                                               set_={"ciphertext": token, "updated_at": now}))
    return session.get_one(TenantSecret, (tenant_id, name), populate_existing=True)


def list_names(session: Session, tenant_id: str) -> list[TenantSecret]:
    return list(session.scalars(select(TenantSecret).where(TenantSecret.tenant_id == tenant_id)
                                .order_by(TenantSecret.name)))


def remove(session: Session, tenant_id: str, name: str) -> None:
    check_name(name)
    gone = session.execute(delete(TenantSecret).where(TenantSecret.tenant_id == tenant_id,
                                                      TenantSecret.name == name).returning(TenantSecret.name))
    if gone.first() is None:
        raise NotFound(f"no secret named {name!r}", param="name", code="secret_not_found")


def stored_names(session: Session, tenant_id: str) -> set[str]:
    return set(session.scalars(select(TenantSecret.name).where(TenantSecret.tenant_id == tenant_id)))


def check_job_secrets(session: Session, tenant_id: str, integrations: list[Any] | None) -> None:
    """POST /jobs: every tracker the job names has the secrets it cannot work without (W&B's key)."""
    have = None
    for index, kind in enumerate(tracker_types(integrations)):
        for name in REQUIRED_SECRETS.get(kind, ()):
            have = stored_names(session, tenant_id) if have is None else have
            if name not in have:
                raise InvalidRequest(f"integrations[{index}] reports to {kind}, which needs the secret {name}: "
                                     f"store it first (an admin key: PUT /secrets/{name} with {{\"value\": …}}), "
                                     "or remove the integration", param=f"integrations[{index}]",
                                     code="missing_secret")


def child_environment(session: Session, settings: Settings, tenant_id: str,
                      integrations: list[Any] | None) -> dict[str, str]:
    """The secrets a job's trackers read, decrypted, by environment variable: only the tenant's own, only those
    of the trackers the job names."""
    wanted = {name for kind in tracker_types(integrations) for name in SECRET_NAMES.get(kind, ())}
    if not wanted:
        return {}
    rows = session.scalars(select(TenantSecret).where(TenantSecret.tenant_id == tenant_id,
                                                      TenantSecret.name.in_(sorted(wanted))))
    return {row.name: decrypt(settings, row.ciphertext, name=row.name) for row in rows}
