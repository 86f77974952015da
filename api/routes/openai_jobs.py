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
from common.schemas.job_spec import JobSpec
from common.schemas.jobs import JobPublic
from common.schemas.strings import BAD_REQUEST_ERRORS, Metadata, Name
from common.services import jobs as service

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai-compatible"])

BASE_LEARNING_RATE = 2e-4  # what learning_rate_multiplier 1.0 means for a LoRA adapter here


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
    type: Literal["supervised", "dpo"]
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
    integrations: list[Any] | None = None


def to_spec(body: OpenAIJobCreate) -> JobSpec:
    stage = "dpo" if body.method and body.method.type == "dpo" else "sft"
    params = (body.method.dpo if stage == "dpo" else body.method.supervised) if body.method else None
    hp = (params.hyperparameters if params else None) or body.hyperparameters or OpenAIHyperparameters()
    if body.integrations:
        raise SchemaError("integrations are not supported by this server; send none", param="integrations",
                          code="unsupported_parameter")
    native_hp: dict[str, Any] = {"n_epochs": hp.n_epochs, "batch_size": hp.batch_size}
    if hp.learning_rate_multiplier != "auto":
        native_hp["learning_rate"] = BASE_LEARNING_RATE * float(hp.learning_rate_multiplier)
    raw: dict[str, Any] = {"base_model": body.model, "training_file": body.training_file,
                           "validation_file": body.validation_file, "stage": stage, "hyperparameters": native_hp,
                           "suffix": body.suffix, "metadata": body.metadata}
    if body.seed is not None:
        raw["seed"] = body.seed
    if stage == "dpo" and hp.beta is not None:
        raw["dpo"] = {"beta": hp.beta}
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
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
        job = service.submit(session, settings, tenant_id=caller.tenant_id, user=caller.user, spec=spec,
                             idempotency_key=idempotency_key)
        return JobPublic.of(job, None)
