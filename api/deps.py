"""Typed dependencies: one session per request (committed here), the caller's tenant from the API key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from common.artifacts import LocalArtifactStore, get_store
from common.auth import lookup_key
from common.db import session_scope
from common.errors import AuthenticationError, PermissionDenied
from common.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    """One transaction per request (common.db.session_scope). scope="function" at the use sites: the commit runs
    before the response is sent, so a client never gets an id it cannot read back yet."""
    with session_scope() as session:
        yield session


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def get_caller(session: Annotated[Session, Depends(get_session, scope="function")],
               authorization: Annotated[str | None, Header()] = None) -> Caller:
    if not authorization:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
            "(an admin makes keys with `tunequeue admin create-key`).", code="missing_api_key")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("The Authorization header must be 'Bearer <key>'.", code="invalid_api_key")
    row = lookup_key(session, token.strip())
    if row is None:
        raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
    return Caller(tenant_id=row.tenant_id, key_id=row.id, role=row.role)


def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise PermissionDenied("this endpoint needs an admin key")
    return caller


def get_artifact_store() -> LocalArtifactStore:
    return get_store()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CurrentCaller = Annotated[Caller, Depends(get_caller)]
AdminCaller = Annotated[Caller, Depends(require_admin)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[LocalArtifactStore, Depends(get_artifact_store)]
