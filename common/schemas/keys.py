"""`/keys`: a tenant's API keys as its admins see them. The key itself appears once, in the answer that made it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from common.models import ApiKey
from common.models.base import DEFAULT_USER
from common.schemas.common import PublicModel, unix
from common.schemas.strings import INVALID_STRING, Name, UserName

MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last moment a timestamp column holds


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(default="", max_length=128, description="A label, e.g. who or what uses the key")
    role: Literal["member", "admin"] = Field(default="member", description="admin: may also manage keys")
    expires_at: int | None = Field(default=None, gt=0, le=MAX_UNIX_SECONDS,
                                   description="Unix seconds after which the key stops working")
    user: UserName = Field(default=DEFAULT_USER, description="Who holds the key within the organization; the jobs "
                           "and files it makes record this user")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise PydanticCustomError(INVALID_STRING, "must not contain control characters (NUL, newline, tab, …)")
        return value

    def expires(self) -> datetime | None:
        return None if self.expires_at is None else datetime.fromtimestamp(self.expires_at, UTC)


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(default=0, ge=0, le=7 * 24 * 3600,
                               description="How long the old key keeps working (0: revoked now)")


class KeyPublic(PublicModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    role: str
    user: str
    prefix: str = Field(description="The key's first characters, to recognise it; the rest is never shown again")
    created_at: int
    expires_at: int | None
    last_used_at: int | None
    revoked_at: int | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyPublic:
        return cls(id=row.id, name=row.name, role=row.role, user=row.user_name, prefix=row.prefix,
                   created_at=unix(row.created_at) or 0,
                   expires_at=unix(row.expires_at), last_used_at=unix(row.last_used_at),
                   revoked_at=unix(row.revoked_at))


class KeyCreated(KeyPublic):
    key: str = Field(description="The API key. Shown this once: store it now")

    @classmethod
    def made(cls, row: ApiKey, plaintext: str) -> KeyCreated:
        return cls(**KeyPublic.of(row).model_dump(), key=plaintext)
