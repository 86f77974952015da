"""The native job spec (DESIGN.md "The job spec"). Unknown fields are an error at every level.

Validated once at `POST /jobs`; the worker receives the same model, with `"auto"` values still in place
(the training side resolves them against the real data and device)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Stage = Literal["sft", "dpo", "orpo", "kto", "pt", "rm"]
MethodType = Literal["lora", "qlora", "dora", "full", "freeze"]
Auto = Literal["auto"]

# What the workers of this build can run; the rest of the menu is refused at POST /jobs with a clear message.
SUPPORTED_STAGES: tuple[str, ...] = ("sft",)
SUPPORTED_METHODS: tuple[str, ...] = ("lora", "dora")

_SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(StrictModel):
    r: int = Field(default=16, ge=1, le=256, description="LoRA rank. Higher fits more, costs more memory.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        default="all-linear", description="'all-linear' or a list of module names such as ['q_proj', 'v_proj']."
    )

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError("must be 'all-linear' or a list of module names, e.g. ['q_proj', 'v_proj']")
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return value


class Method(StrictModel):
    type: MethodType = Field(default="lora", description="lora, qlora, dora, full or freeze.")
    lora: LoraOptions = Field(default_factory=LoraOptions, description="Adapter options for lora/qlora/dora.")


class Hyperparameters(StrictModel):
    n_epochs: int | Auto = Field(default="auto", description="Passes over the data; auto: 3, fewer for big sets.")
    batch_size: int | Auto = Field(default="auto", description="Examples per optimizer step; auto: 8 or fewer.")
    learning_rate: float | Auto = Field(default="auto", description="Peak learning rate; auto: 2e-4 for LoRA.")
    max_seq_length: int = Field(default=2048, ge=16, le=131072, description="Longer rows are truncated.")
    logging_steps: int = Field(default=1, ge=1, description="Report progress every this many steps.")
    packing: bool = Field(default=False, description="Pack short rows into max_seq_length windows, no cross-attention.")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 100:
            raise ValueError(f"must be between 1 and 100 (or 'auto'); got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1024:
            raise ValueError(f"must be between 1 and 1024 (or 'auto'); got {value}")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0 < value <= 1:
            raise ValueError(f"must be > 0 and ≤ 1 (or 'auto'); got {value}")
        return value


class JobSpec(StrictModel):
    base_model: str = Field(description="A registered base model id; GET /v1/models lists them.")
    training_file: str = Field(description="A processed file id (file-…).")
    validation_file: str | None = Field(default=None, description="Optional processed file id for evaluation.")
    validation_split: float | None = Field(default=None, gt=0, lt=0.5,
                                           description="Hold out this fraction of training_file for evaluation.")
    template: str | None = Field(default=None, description="Chat template for base models without one: chatml, "
                                 "llama-3 or default. None: the tokenizer's own, else the registry's.")
    train_on_inputs: bool = Field(default=False, description="Also train on system/user tokens (default: "
                                  "assistant tokens only).")
    stage: Stage = Field(default="sft", description="sft, dpo, orpo, kto, pt or rm.")
    method: Method = Field(default_factory=Method)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: str | None = Field(default=None, description="Up to 40 of [a-z0-9-]; part of the model name.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, description="Up to 16 string pairs for your own use.")

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not _SUFFIX_RE.match(value):
            raise ValueError(
                f"must be 1-40 characters of a-z, 0-9 and '-', starting with a letter or digit; got {value!r}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > 16:
            raise ValueError(f"may hold at most 16 pairs; got {len(value)}")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> JobSpec:
        if self.validation_file and self.validation_split:
            raise ValueError("give validation_file or validation_split, not both")
        return self


def resolved_hyperparameters(spec: JobSpec, n_rows: int) -> dict[str, Any]:
    """Turn "auto" into numbers. One place, used by the worker and shown back to the user."""
    hp = spec.hyperparameters
    batch_size = hp.batch_size if hp.batch_size != "auto" else max(1, min(8, n_rows // 4 or 1))
    n_epochs = hp.n_epochs if hp.n_epochs != "auto" else (3 if n_rows < 10_000 else 1)
    if hp.learning_rate != "auto":
        learning_rate = float(hp.learning_rate)
    else:
        learning_rate = 2e-4 if spec.method.type in ("lora", "qlora", "dora") else 2e-5
    return {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_seq_length": hp.max_seq_length,
        "logging_steps": hp.logging_steps,
        "packing": hp.packing,
    }
