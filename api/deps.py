"""Typed dependencies: the caller's tenant from the API key (async, cached briefly), a database slot for the
routes that still run synchronous services, settings and the artifact store.

No request path opens a session here. An async route reads on the asyncpg pool inside its admission slot
(`common.read_pool.read`, `common/services/reads.py`); a sync route runs its whole unit of work —
`common.db.session_scope()`: open, work, commit, close — inside its one thread-pool call, after `DbCaller` has
given it a slot. So a thread that holds a connection never waits for another thread, and the commit still runs
before the response is sent (a client never gets an id it cannot read back yet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection

from api.admission import db_slot
from common.artifacts import ArtifactStore, get_store
from common.auth import KeyCache, KeyIdentity, find_identity, hash_key
from common.errors import AuthenticationError, PermissionDenied
from common.models.base import DEFAULT_USER
from common.read_pool import read
from common.settings import Settings, get_settings


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    role: str
    user: str = DEFAULT_USER  # the key's user within its tenant: what it makes records it

    @property
    def is_admin(self) -> bool:
        """May manage its tenant's keys (an operator may too, for its own tenant)."""
        return self.role in ("admin", "operator")

    @property
    def is_operator(self) -> bool:
        """The platform's operator: sees every tenant's jobs on /workers and the service's /metrics."""
        return self.role == "operator"


@lru_cache
def key_cache() -> KeyCache:
    """This process's cache of looked-up keys (TUNEQUEUE_KEY_CACHE_SECONDS, read at each insert)."""
    return KeyCache(lambda: get_settings().key_cache_seconds)


class ApiKeyHeader(HTTPBearer):
    """The API key, sent as `Authorization: Bearer <key>`: documented as OpenAPI's bearer scheme, read straight
    from the headers (a `Header()` parameter costs FastAPI more per request than the rest of a cached lookup),
    and handed back as sent, so that `get_caller` words its own errors."""

    async def __call__(self, request: HTTPConnection) -> str | None:  # type: ignore[override]
        return request.headers.get("authorization")


api_key_header = ApiKeyHeader(scheme_name="ApiKey", description="An API key: `tunequeue admin create-key`",
                              auto_error=False)


async def get_caller(authorization: Annotated[str | None, Depends(api_key_header)]) -> Caller:
    if not authorization:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
            "(an admin makes keys with `tunequeue admin create-key`).", code="missing_api_key")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("The Authorization header must be 'Bearer <key>'.", code="invalid_api_key")
    key_hash = hash_key(token.strip())
    identity = key_cache().get(key_hash) or await _look_up(key_hash)
    if identity is None:
        raise AuthenticationError("Incorrect API key provided (or it was revoked, or it has expired).",
                                  code="invalid_api_key")
    return Caller(tenant_id=identity.tenant_id, key_id=identity.key_id, role=identity.role, user=identity.user)


_lookups: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task[KeyIdentity | None]] = {}


async def _look_up(key_hash: str) -> KeyIdentity | None:
    """One lookup per key at a time in this worker: when the cache entry of a busy key ends, the requests that
    arrive meanwhile wait for the one lookup instead of each taking a slot and a connection for the same row."""
    loop = asyncio.get_running_loop()
    task = _lookups.get((loop, key_hash))
    if task is None:
        task = _lookups[(loop, key_hash)] = loop.create_task(_look_up_now(key_hash))
        task.add_done_callback(lambda done: _forget_lookup(loop, key_hash, done))
    return await asyncio.shield(task)  # a caller that goes away leaves the lookup to the others


def _forget_lookup(loop: asyncio.AbstractEventLoop, key_hash: str, done: asyncio.Task[KeyIdentity | None]) -> None:
    _lookups.pop((loop, key_hash), None)
    if not done.cancelled():
        done.exception()  # retrieved: its waiters got it; a lookup whose callers all left logs no warning


async def _look_up_now(key_hash: str) -> KeyIdentity | None:
    async with db_slot():
        identity = await read(lambda reader: find_identity(reader, key_hash))
    if identity is not None:
        key_cache().put(key_hash, identity)
    return identity


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise PermissionDenied("this endpoint needs an admin key")
    return caller


async def require_operator(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_operator:
        raise PermissionDenied("this endpoint is the platform operator's (a key made with "
                               "`tunequeue admin create-key --role operator`)")
    return caller


async def caller_with_slot(caller: Annotated[Caller, Depends(get_caller)]) -> AsyncIterator[Caller]:
    """Authenticate first (its own short slot on a cache miss), then hold one admission slot until the sync
    endpoint returns (scope="function"): never two slots at once, so waiting for one cannot deadlock."""
    async with db_slot():
        yield caller


async def admin_with_slot(caller: Annotated[Caller, Depends(require_admin)]) -> AsyncIterator[Caller]:
    async with db_slot():
        yield caller


async def operator_with_slot(caller: Annotated[Caller, Depends(require_operator)]) -> AsyncIterator[Caller]:
    async with db_slot():
        yield caller


async def slot_only() -> AsyncIterator[None]:
    async with db_slot():
        yield


async def settings_dep() -> Settings:
    return get_settings()


async def get_artifact_store() -> ArtifactStore:
    return get_store()


CurrentCaller = Annotated[Caller, Depends(get_caller)]
AdminCaller = Annotated[Caller, Depends(require_admin)]
# For sync routes that use the database: authenticated, and an admission slot held while the endpoint runs.
DbCaller = Annotated[Caller, Depends(caller_with_slot, scope="function")]
AdminDbCaller = Annotated[Caller, Depends(admin_with_slot, scope="function")]
OperatorDbCaller = Annotated[Caller, Depends(operator_with_slot, scope="function")]
DbSlot = Annotated[None, Depends(slot_only, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
StoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]
