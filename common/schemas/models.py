"""The OpenAI model object, with TuneQueue's additions (kind, job, manifest, the vLLM serving note)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from common.schemas.common import PublicModel


class VllmCompatibility(BaseModel):
    """Whether a vLLM server started with `--enable-lora --max-lora-rank N` can load this adapter."""

    compatible: bool
    lora_rank: int | None = Field(description="The largest rank of the adapter's LoRA layers.")
    max_lora_rank: int = Field(description="The vLLM --max-lora-rank the check assumed "
                                           "(TUNEQUEUE_SERVE_VLLM_MAX_LORA_RANK).")
    modules_to_save: list[str] | None = None
    problems: list[str] = Field(default_factory=list, description="Why vLLM cannot load it, fix by fix.")


class ModelPublic(PublicModel):
    """The OpenAI model object; `parent` is the base model of an adapter. `vllm` is null for base models and
    adapters whose adapter_config.json cannot be read."""

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
    vllm: VllmCompatibility | None = None
