"""What the worker parent hands the training child: `<job_dir>/job.json`, parsed once into `JobConfig`.

Keys this child does not know are ignored, so a newer parent can add fields (checkpoint settings, say)
before the child reads them. Everything the child does read is validated here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.schemas.job_spec import JobSpec

JOB_FILE = "job.json"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TrainHyperparameters(_Lenient):
    """Hyperparameters with the data-dependent "auto" values resolved by the parent (`resolved_hyperparameters`);
    precision, attention and gradient_checkpointing may still be "auto" (the worker decides, see runtime.py).
    Older parents wrote fewer keys: everything past the first four has the spec's default."""

    n_epochs: int = Field(ge=1, le=100, description="Passes over the training rows.")
    batch_size: int = Field(ge=1, le=1024, description="Rows per optimizer step (micro batch × accumulation).")
    learning_rate: float = Field(gt=0, le=1, description="Peak learning rate.")
    max_seq_length: int = Field(ge=16, description="Tokens kept per row; longer rows are cut at the end.")
    logging_steps: int = Field(default=1, ge=1, description="Emit a progress event every this many steps.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (overrides epochs).")
    micro_batch_size: int | None = Field(default=None, ge=1, description="Rows per forward pass; None: batch_size "
                                         "/ gradient_accumulation_steps. Set by the parent's OOM retry.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro batches per optimizer step.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=0.5)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0)
    packing: bool = False
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = "adamw"
    neftune_noise_alpha: float | None = None
    eval_steps: int | Literal["auto"] | None = Field(default="auto", description="None: never evaluate.")
    save_steps: int | Literal["auto"] | None = Field(default=None, description="None or 0: no checkpoints.")
    early_stopping_patience: int | None = None

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or max(1, self.batch_size // self.gradient_accumulation_steps)


class Fault(_Lenient):
    """Test-only fault injection, written by tests (and the parent's tests) into job.json."""

    oom_at_step: int | None = Field(default=None, ge=1, description="Raise a CUDA OOM as step N starts.")


class BaseModelRef(_Lenient):
    """The registry entry of the base model, resolved by the parent."""

    id: str = Field(description="The registered model id, e.g. 'tiny-llama'; used in messages.")
    path: str = Field(description="A local directory (absolute path) or a hub id to load from.")
    revision: str | None = Field(default=None, description="Hub revision; ignored for local directories.")
    trust_remote_code: bool = Field(default=False, description="Run the model's own Python code. Admin-only.")
    template: str | None = Field(
        default=None,
        description="A template name from worker.train.templates (e.g. 'chatml'); None: the tokenizer's own.",
    )


class JobConfig(_Lenient):
    """One attempt of one job, as the child sees it."""

    job_id: str = Field(description="ftjob-…; used in messages only.")
    attempt: int = Field(default=1, ge=1, description="The claim epoch; used in messages only.")
    spec: JobSpec = Field(description="The job spec as submitted (may still hold 'auto' values).")
    hyperparameters: TrainHyperparameters
    base_model: BaseModelRef
    training_file: Path = Field(description="Absolute path of the chat JSONL to train on.")
    validation_file: Path | None = Field(default=None, description="Optional chat JSONL for a loss per epoch.")
    output_dir: Path = Field(description="Where the adapter is written (output_dir/adapter), checkpoints "
                             "(output_dir/checkpoints/checkpoint-N) and the merged model (output_dir/merged).")
    resume_from_checkpoint: Path | None = Field(default=None, description="A Trainer checkpoint dir to continue "
                                                "from: weights, optimizer, scheduler, RNG and step.")
    init_adapter_dir: Path | None = Field(default=None, description="A published adapter to start from instead "
                                          "of a fresh one (spec.from_model).")
    fault: Fault | None = Field(default=None, description="Test-only fault injection.")

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def merged_dir(self) -> Path:
        return self.output_dir / "merged"


class JobFileError(Exception):
    """job.json is missing or malformed: a bug or a version mismatch between parent and child."""


def load_job(job_dir: str | Path) -> JobConfig:
    """Read and validate `<job_dir>/job.json`."""
    job_file = Path(job_dir) / JOB_FILE
    try:
        raw = json.loads(job_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise JobFileError(f"{job_file} does not exist; the worker must write it before starting the child") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobFileError(f"{job_file} is not readable JSON ({exc})") from exc
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise JobFileError(f"{job_file} does not match what this worker expects: {exc}") from exc
