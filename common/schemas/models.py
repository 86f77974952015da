from __future__ import annotations

from typing import Any, Literal

from common.schemas.common import PublicModel


class ModelPublic(PublicModel):
    """The OpenAI model object; `parent` is the base model of an adapter."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    root: str | None = None
    job_id: str | None = None
    kind: Literal["base", "adapter"] = "adapter"
    available: bool = True
    manifest: dict[str, Any] | None = None
