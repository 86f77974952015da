from __future__ import annotations

from typing import Any, Literal

from common.models import Job
from common.schemas.common import PublicModel, error_obj, unix


class JobPublic(PublicModel):
    """The OpenAI fine_tuning.job object, plus the native spec and live progress."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    started_at: int | None
    finished_at: int | None
    model: str
    base_model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str
    training_file: str
    validation_file: str | None
    stage: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    error: dict[str, Any] | None
    trained_tokens: int | None
    attempt: int
    cancel_requested: bool
    progress: dict[str, Any] | None = None
    result_files: list[str] = []
    estimated_finish: int | None = None
    queue_position: int | None = None
    integrations: list[Any] | None = None

    @classmethod
    def of(cls, job: Job, progress: dict[str, Any] | None = None) -> JobPublic:
        spec = job.spec
        estimated = None
        if progress and progress.get("eta_seconds") is not None and job.status == "running":
            estimated = int(progress.get("updated_at", 0) + progress["eta_seconds"]) or None
        return cls(
            id=job.id, created_at=unix(job.created_at) or 0, started_at=unix(job.started_at),
            finished_at=unix(job.finished_at), model=job.base_model, base_model=job.base_model,
            fine_tuned_model=job.fine_tuned_model, organization_id=job.tenant_id, status=job.status,
            training_file=job.training_file_id, validation_file=job.validation_file_id,
            stage=spec.get("stage", "sft"), method=spec.get("method", {}),
            hyperparameters=spec.get("resolved_hyperparameters") or spec.get("hyperparameters", {}),
            suffix=spec.get("suffix"), seed=spec.get("seed", 42), metadata=spec.get("metadata"),
            error=error_obj(job.error), trained_tokens=job.trained_tokens, attempt=job.attempt,
            cancel_requested=job.cancel_requested, progress=progress, estimated_finish=estimated,
        )
