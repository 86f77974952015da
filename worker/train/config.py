"""What the worker parent hands the training child: `<job_dir>/job.json`, parsed once into `JobConfig`.

Keys this child does not know are ignored, so a newer parent can add fields (checkpoint settings, say)
before the child reads them. Everything the child does read is validated here; the spec strictly, by the same
model the API validated it with (common/schemas/job_spec.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.schemas.job_spec import ResolvedJobSpec

JOB_FILE = "job.json"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


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
        description="A template name from common/text/named_templates.py (e.g. 'chatml'); None: the tokenizer's own.",
    )


class JobConfig(_Lenient):
    """One attempt of one job, as the child sees it."""

    job_id: str = Field(description="ftjob-…; used in messages only.")
    attempt: int = Field(default=1, ge=1, description="The claim epoch; used in messages only.")
    spec: ResolvedJobSpec = Field(description="The job spec with its resolved hyperparameters "
                                  "(common/schemas/job_spec.py `training_spec`).")
    base_model: BaseModelRef
    training_file: Path = Field(description="Absolute path of the chat JSONL to train on.")
    validation_file: Path | None = Field(default=None, description="Optional chat JSONL for a loss per epoch.")
    output_dir: Path = Field(description="Where the adapter is written (output_dir/adapter), checkpoints "
                             "(output_dir/checkpoints/checkpoint-N) and the merged model (output_dir/merged).")
    resume_from_checkpoint: Path | None = Field(default=None, description="A Trainer checkpoint dir to continue "
                                                "from: weights, optimizer, scheduler, RNG and step.")
    init_adapter_dir: Path | None = Field(default=None, description="A published adapter to start from instead "
                                          "of a fresh one (spec.from_model).")
    eval_sample_max_tokens: int = Field(default=128, ge=1, description="spec.hyperparameters.eval_samples: the "
                                        "most tokens of one generated answer (TUNEQUEUE_EVAL_SAMPLE_MAX_TOKENS).")
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
