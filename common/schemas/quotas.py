"""`GET /quota` and `PUT /tenants/{id}/quota`: a tenant's quotas and its use of them (common/services/quotas.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.schemas.common import PublicModel


class QuotaUpdate(BaseModel):
    """The limits to set (a number) or remove (null); a limit left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    max_queued: int | None = Field(default=None, ge=0, description="Jobs the tenant may have waiting "
                                   "(validating_files or queued) at once; null: no limit")

    def given(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class QuotaPublic(PublicModel):
    object: Literal["quota"] = "quota"
    organization_id: str
    limits: dict[str, Any] = Field(description="Each quota's value; null: no limit")
    usage: dict[str, Any] = Field(description="What the organization uses of each now")
