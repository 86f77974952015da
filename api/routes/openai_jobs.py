"""`POST /v1/fine_tuning/jobs` in OpenAI's shape, so `openai.OpenAI(base_url=…/v1).fine_tuning.jobs.create(...)`
works unchanged. The body is translated into the native JobSpec and submitted like POST /jobs
(common/services/jobs.py: submit); the other /v1/fine_tuning/jobs routes are the native jobs router mounted
under /v1/fine_tuning (same objects)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import DbCaller, SettingsDep
from common.db import session_scope
from common.errors import InvalidRequest, SchemaError
from common.schemas.job_spec import DEFAULT_LEARNING_RATES, JobSpec
from common.schemas.jobs import JobPublic
from common.schemas.strings import BAD_REQUEST_ERRORS, Metadata, Name
from common.services import jobs as service

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai-compatible"])

# OpenAI's method types this server trains, and the native stage each becomes. The others (reinforcement) are refused
# by name; the native POST /jobs has more stages (kto, orpo, rm, pt).
METHOD_STAGES = {"supervised": "sft", "dpo": "dpo"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIHyperparameters(_Strict):
    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    beta: float | Literal["auto"] | None = None  # DPO only


class OpenAIMethodParams(_Strict):
    hyperparameters: OpenAIHyperparameters = Field(default_factory=OpenAIHyperparameters)


class OpenAIMethod(_Strict):
    type: str = Field(description="supervised or dpo; reinforcement is refused with unsupported_method.")
    supervised: OpenAIMethodParams | None = None
    dpo: OpenAIMethodParams | None = None


class OpenAIJobCreate(_Strict):
    model: Name = Field(description="A registered base model id.")
    training_file: Name
    validation_file: Name | None = None
    hyperparameters: OpenAIHyperparameters | None = None
    method: OpenAIMethod | None = None
    suffix: Name | None = None
    seed: int | None = None
    metadata: Metadata | None = None
    integrations: list[Any] | None = Field(
        default=None, description="OpenAI's [{'type': 'wandb', 'wandb': {...}}], plus mlflow and tensorboard: the "
        "native spec's integrations (docs/trackers.md), validated by it.")


def base_learning_rate(stage: str) -> float:
    """What learning_rate_multiplier 1.0 means: the native default of the job's stage for a LoRA adapter (the method
    an OpenAI-shaped job trains), e.g. 2e-4 for supervised and 5e-6 for dpo."""
    return DEFAULT_LEARNING_RATES[(stage, True)]


def to_spec(body: OpenAIJobCreate) -> JobSpec:
    if body.method and body.method.type not in METHOD_STAGES:
        raise InvalidRequest(f"`method.type` {body.method.type!r} is not supported by this server: use 'supervised' "
                             "or 'dpo' here, or the native POST /jobs for the kto, orpo, rm and pt stages",
                             param="method.type", code="unsupported_method")
    stage = METHOD_STAGES[body.method.type] if body.method else "sft"
    params = (body.method.dpo if stage == "dpo" else body.method.supervised) if body.method else None
    hp = (params.hyperparameters if params else None) or body.hyperparameters or OpenAIHyperparameters()
    native_hp: dict[str, Any] = {"n_epochs": hp.n_epochs, "batch_size": hp.batch_size}
    if hp.learning_rate_multiplier != "auto":
        native_hp["learning_rate"] = base_learning_rate(stage) * float(hp.learning_rate_multiplier)
    raw: dict[str, Any] = {"base_model": body.model, "training_file": body.training_file,
                           "validation_file": body.validation_file, "stage": stage, "hyperparameters": native_hp,
                           "suffix": body.suffix, "metadata": body.metadata, "integrations": body.integrations}
    if body.seed is not None:
        raw["seed"] = body.seed
    if stage == "dpo" and hp.beta is not None:
        raw["dpo"] = {"beta": hp.beta}
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        param = {"base_model": "model", "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
                 }.get(loc, loc)
        message = f"`{param}`: {err['msg'].removeprefix('Value error, ')}"
        if err["type"] in BAD_REQUEST_ERRORS:  # a value the service cannot store: 400, as on the native route
            raise InvalidRequest(message, param=param, code=err["type"]) from None
        raise SchemaError(message, param=param) from None


@router.post("", response_model=JobPublic)
def create_fine_tuning_job(body: OpenAIJobCreate, caller: DbCaller, settings: SettingsDep,
                           idempotency_key: Annotated[str | None, Header()] = None) -> JobPublic:
    spec = to_spec(body)
    with session_scope() as session:
        job = service.submit(session, settings, tenant_id=caller.tenant_id, user=caller.user,
                             is_admin=caller.is_admin, spec=spec, idempotency_key=idempotency_key)
        return JobPublic.of(job, None)
