"""`GET /quota` and `PUT /tenants/{id}/quota`: a tenant's quotas and its use of them (common/services/quotas.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.schemas.common import PublicModel


class QuotaUpdate(BaseModel):
    """The limits to set (a number) or remove (null); a limit left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(default=None, ge=0, description="Jobs the tenant may have running at once; "
                                    "null: no limit")
    max_queued: int | None = Field(default=None, ge=0, description="Jobs the tenant may have waiting "
                                   "(validating_files or queued) at once; null: no limit")
    gpu_hours: float | None = Field(default=None, ge=0, description="Device-hours of training in the rolling "
                                    "last 30 days; null: no limit")
    max_job_hours: float | None = Field(default=None, ge=0, description="Hours one job may train, all its "
                                        "attempts together; beyond, it fails with time_limit_exceeded")
    storage_gb: float | None = Field(default=None, ge=0, description="GB (10^9 bytes) of uploaded files and "
                                     "published models; null: no limit")

    weight: float | None = Field(default=None, gt=0, le=1000, description="The tenant's share of GPU time against "
                                 "the other tenants' (default 1; docs/scheduling.md); null: back to 1")

    def given(self) -> dict[str, float | None]:
        """The quotas given (not the weight)."""
        return {name: getattr(self, name) for name in self.model_fields_set if name != "weight"}


class QuotaPublic(PublicModel):
    object: Literal["quota"] = "quota"
    organization_id: str
    weight: float = Field(description="Its share of GPU time against the other organizations' (fair share)")
    limits: dict[str, Any] = Field(description="Each quota's value; null: no limit")
    usage: dict[str, Any] = Field(description="What the organization uses of each now")


class UserUsage(BaseModel):
    user: str
    gpu_hours: float = Field(description="Device-hours of training in the rolling window")


class UsagePublic(PublicModel):
    """`GET /usage`: GPU time of the organization, per user, in the rolling window the `gpu_hours` quota counts."""

    object: Literal["usage"] = "usage"
    organization_id: str
    window_days: int
    gpu_hours: float = Field(description="All users together")
    gpu_hours_limit: float | None = Field(description="The `gpu_hours` quota; null: no limit")
    users: list[UserUsage] = Field(description="Every user with use in the window, most first")
