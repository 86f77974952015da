"""`/secrets`: a tenant's tracker credentials (docs/api.md, "Secrets"). The value goes in with PUT and never comes
out: the objects carry the name and the timestamps only."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.models import TenantSecret
from common.schemas.common import PublicModel, unix


class SecretPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any, checked by the service: a pydantic error would quote the value it refuses (common/http_errors.py)
    value: Any = Field(description="The secret, 1-4096 printable characters; stored encrypted, never shown again.")


class SecretPublic(PublicModel):
    object: Literal["secret"] = "secret"
    name: str
    created_at: int
    updated_at: int
    created_by: str  # the user of the key that first stored it

    @classmethod
    def of(cls, row: TenantSecret) -> SecretPublic:
        return cls(name=row.name, created_at=unix(row.created_at) or 0, updated_at=unix(row.updated_at) or 0,
                   created_by=row.created_by)


class SecretDeleted(BaseModel):
    object: Literal["secret.deleted"] = "secret.deleted"
    name: str
    deleted: bool
