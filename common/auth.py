"""API keys: random, shown once, stored as sha256. The API looks a key up by its hash (`find_identity`, on the
asyncpg read pool) and remembers what it found for `TUNEQUEUE_KEY_CACHE_SECONDS` (`KeyCache`), so that a revoked
key stops working within that many seconds."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from common.errors import Conflict, NotFound
from common.ids import new_id
from common.models import ApiKey, Tenant

if TYPE_CHECKING:
    from common.read_pool import Reader

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


@dataclass(frozen=True)
class KeyIdentity:
    """What a valid key says about its caller."""

    key_id: str
    tenant_id: str
    role: str


_BY_HASH = select(ApiKey.id, ApiKey.tenant_id, ApiKey.role, ApiKey.revoked_at).where(
    ApiKey.key_hash == bindparam("key_hash"))  # one statement object: its SQLAlchemy cache key is computed once


async def find_identity(reader: Reader, key_hash: str) -> KeyIdentity | None:
    """The key with this sha256, unless it does not exist or is revoked: one indexed query."""
    row = await reader.first(_BY_HASH, {"key_hash": key_hash})
    if row is None or row["revoked_at"] is not None:
        return None
    return KeyIdentity(key_id=row["id"], tenant_id=row["tenant_id"], role=row["role"])


class KeyCache:
    """Valid keys this process has looked up, by sha256 (never the key itself), each for `ttl()` seconds from
    its lookup. Unknown and revoked keys are not remembered: a key made a moment ago works at once."""

    def __init__(self, ttl: Callable[[], float], max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, KeyIdentity]] = {}

    def get(self, key_hash: str) -> KeyIdentity | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(key_hash, None)
            return None
        return entry[1]

    def put(self, key_hash: str, identity: KeyIdentity) -> None:
        ttl = self._ttl()
        if ttl <= 0:
            return
        now = self._clock()
        if len(self._entries) >= self._max:
            self._entries = {h: e for h, e in self._entries.items() if e[0] > now}
            while len(self._entries) >= self._max:  # still full: drop the oldest lookups
                self._entries.pop(next(iter(self._entries)))
        self._entries[key_hash] = (now + ttl, identity)

    def hashes(self) -> list[str]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
