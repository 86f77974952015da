"""API keys: random, shown once, stored as sha256. The API looks a key up by its hash (`find_identity`, on the
asyncpg read pool, stamping `last_used_at`) and remembers what it found for `TUNEQUEUE_KEY_CACHE_SECONDS`
(`KeyCache`), so that a revoked key stops working within that many seconds, and an expiring one at its
`expires_at`.

Roles: `member` (the tenant's files, jobs and models), `admin` (also its keys: common/services/keys.py) and
`operator`, the platform's, made by the CLI only (every tenant's jobs on `GET /workers`, `/metrics`)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from common.errors import Conflict, NotFound
from common.ids import new_id
from common.models import ApiKey, Tenant
from common.models.base import DEFAULT_USER
from common.schemas.strings import check_user_name

if TYPE_CHECKING:
    from common.read_pool import Reader

KEY_PREFIX = "tq-"
TENANT_ROLES = ("member", "admin")  # what a tenant admin may hand out
ROLES = (*TENANT_ROLES, "operator")


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


def create_key(session: Session, tenant: Tenant, *, role: str = "member", name: str = "",
               expires_at: datetime | None = None, user: str = DEFAULT_USER) -> tuple[ApiKey, str]:
    """Return the row and the plaintext key; the plaintext is never stored. `user`: who holds it within the
    tenant (checked: `check_user_name`); the jobs and files the key makes record it."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    check_user_name(user)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key", 16), tenant_id=tenant.id, name=name, prefix=plaintext[:10],
                 key_hash=hash_key(plaintext), role=role, expires_at=expires_at, user_name=user)
    session.add(row)
    session.flush()
    return row, plaintext


def lookup_key(session: Session, plaintext: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if row is None or not is_usable(row):
        return None
    return row


def is_usable(key: ApiKey, now: datetime | None = None) -> bool:
    """Neither revoked nor past its `expires_at`."""
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > (now or datetime.now(UTC)))


@dataclass(frozen=True)
class KeyIdentity:
    """What a valid key says about its caller."""

    key_id: str
    tenant_id: str
    role: str
    expires_at: datetime | None = None
    user: str = DEFAULT_USER


# `last_used_at` is kept to this resolution: a key in constant use is written once a minute, not at every lookup
# (every worker looks it up again each TUNEQUEUE_KEY_CACHE_SECONDS, and an UPDATE takes the row's lock).
LAST_USED_RESOLUTION = timedelta(seconds=60)

# One statement object each (its SQLAlchemy cache key is computed once).
_USABLE_BY_HASH = select(ApiKey.id, ApiKey.tenant_id, ApiKey.role, ApiKey.expires_at, ApiKey.last_used_at,
                         ApiKey.user_name).where(
    ApiKey.key_hash == bindparam("hash"), ApiKey.revoked_at.is_(None),
    or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > func.now()))
_STAMP_USED = update(ApiKey).where(
    ApiKey.id == bindparam("key_id"),
    or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < func.now() - LAST_USED_RESOLUTION),
).values(last_used_at=func.now())


async def find_identity(reader: Reader, key_hash: str) -> KeyIdentity | None:
    """The key with this sha256 unless it does not exist, is revoked or has expired: one indexed SELECT; and, when
    its `last_used_at` is older than LAST_USED_RESOLUTION, an UPDATE that stamps it (a no-op for all but the first
    of several workers doing it at once)."""
    row = await reader.first(_USABLE_BY_HASH, {"hash": key_hash})
    if row is None:
        return None
    if row["last_used_at"] is None or row["last_used_at"] < datetime.now(UTC) - LAST_USED_RESOLUTION:
        await reader.execute(_STAMP_USED, {"key_id": row["id"]})
    return KeyIdentity(key_id=row["id"], tenant_id=row["tenant_id"], role=row["role"], expires_at=row["expires_at"],
                       user=row["user_name"])


class KeyCache:
    """Valid keys this process has looked up, by sha256 (never the key itself), each for `ttl()` seconds from
    its lookup, never past its `expires_at`. Unknown and revoked keys are not remembered: a key made a moment ago
    works at once."""

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
        if identity.expires_at is not None:
            ttl = min(ttl, (identity.expires_at - datetime.now(UTC)).total_seconds())
            if ttl <= 0:
                return
        now = self._clock()
        if len(self._entries) >= self._max:
            self._entries = {h: e for h, e in self._entries.items() if e[0] > now}
            while len(self._entries) >= self._max:  # still full: drop the oldest lookups
                self._entries.pop(next(iter(self._entries)))
        self._entries[key_hash] = (now + ttl, identity)

    def forget_key(self, key_id: str) -> None:
        """Drop the entry of this key (by its id): revoked or rotated here, refused here at once."""
        self._entries = {h: e for h, e in self._entries.items() if e[1].key_id != key_id}

    def hashes(self) -> list[str]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
