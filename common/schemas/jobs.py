from __future__ import annotations

from typing import Any, Literal

from common.models import Job
from common.schemas.common import PublicModel, error_obj, unix
from common.schemas.job_spec import PRIORITY_NAMES, ResolvedHyperparameters


class JobPublic(PublicModel):
    """The OpenAI fine_tuning.job object, plus the native spec and live progress. `hyperparameters` are the
    resolved ones that the job trains with (common/schemas/job_spec.py `resolve_spec`)."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    started_at: int | None
    finished_at: int | None
    model: str
    base_model: str
    fine_tuned_model: str | None
    organization_id: str
    user: str  # who submitted it within the organization: its key's user
    priority: str  # low, normal or high: its order among its organization's jobs (docs/scheduling.md)
    status: str
    training_file: str
    validation_file: str | None
    stage: str
    method: dict[str, Any]
    hyperparameters: ResolvedHyperparameters
    resources: dict[str, Any] = {"devices": 1}  # the devices it trains on at once (docs/job-spec.md, resources)
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    error: dict[str, Any] | None
    trained_tokens: int | None
    attempt: int
    cancel_requested: bool
    pause_requested: bool = False  # a running job asked to pause: it checkpoints, then holds in `paused`
    progress: dict[str, Any] | None = None
    result_files: list[str] = []
    estimated_finish: int | None = None
    queue_position: int | None = None
    estimate: dict[str, Any] | None = None  # peak memory per device kind, and the measured peak once it ran
    estimated_start_at: int | None = None  # while queued: when it should start (common/scheduling/forecast.py)
    integrations: list[Any] | None = None  # the spec's trackers, in OpenAI's shape (never a credential)

    @classmethod
    def of(cls, job: Job, progress: dict[str, Any] | None = None) -> JobPublic:
        spec = job.spec
        estimated = None
        if progress and progress.get("eta_seconds") is not None and job.status == "running":
            estimated = int((progress.get("updated_at") or 0) + progress["eta_seconds"]) or None
        return cls(
            id=job.id, created_at=unix(job.created_at) or 0, started_at=unix(job.started_at),
            finished_at=unix(job.finished_at), model=job.base_model, base_model=job.base_model,
            fine_tuned_model=job.fine_tuned_model, organization_id=job.tenant_id, user=job.user_name,
            priority=PRIORITY_NAMES.get(job.priority, "normal"),
            status=job.status,
            training_file=job.training_file_id, validation_file=job.validation_file_id,
            stage=spec.get("stage", "sft"), method=spec.get("method", {}),
            hyperparameters=ResolvedHyperparameters.model_validate(spec["resolved_hyperparameters"]),
            resources=spec.get("resources") or {"devices": 1},
            suffix=spec.get("suffix"), seed=spec.get("seed", 42), metadata=spec.get("metadata"),
            error=error_obj(job.error), trained_tokens=job.trained_tokens, attempt=job.attempt,
            cancel_requested=job.cancel_requested, pause_requested=bool(job.pause_requested), progress=progress,
            estimated_finish=estimated,
            estimate=job.estimate, result_files=list(job.result_files or []),
            estimated_start_at=unix(job.estimated_start_at) if job.status == "queued" else None,
            integrations=spec.get("integrations"),
        )


class MetricPoint(PublicModel):
    """One recorded step of a job, for plotting (`GET /jobs/{id}/metrics`)."""

    step: int
    epoch: float | None = None
    loss: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    valid_preference_accuracy: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    trained_tokens: int | None = None
    gpu_memory_mb: float | None = None
    peak_memory_mb: float | None = None
    process_rss_mb: float | None = None
    attempt: int
    created_at: int


class MetricsPage(PublicModel):
    object: Literal["list"] = "list"
    job_id: str
    data: list[MetricPoint]
    has_more: bool


class CheckpointPublic(PublicModel):
    """The OpenAI fine_tuning.job.checkpoint object."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, Any]
    fine_tuning_job_id: str


class WorkerPublic(PublicModel):
    """One GPU of a worker (or a worker without a GPU), from its registration in Redis (`GET /workers`)."""

    id: str
    object: Literal["worker"] = "worker"
    host: str | None
    worker: str | None
    gpu: dict[str, Any] | None
    host_memory_available_mb: float | None = None
    busy: bool
    job: dict[str, Any] | None
    updated_at: float | None
    expires_in: int | None
    online: bool = True  # false: registered before (Postgres), not live now (Redis)
    device: dict[str, Any] | None = None  # what the device can run: kind, memory, bf16, bitsandbytes, …
