"""The job spec's `integrations` (docs/trackers.md): experiment trackers the training child reports to, in
OpenAI's shape (`{"type": "wandb", "wandb": {...}}`) plus our own `mlflow` and `tensorboard`.

Which tenant secrets (common/services/secrets.py) each tracker uses, and under which environment variable the
training child gets them, is decided here too (`SECRET_NAMES`, `REQUIRED_SECRETS`): the allowlist of secret names
is exactly the credentials of the trackers, so a tenant cannot place any other variable (LD_PRELOAD, PYTHONPATH…)
in a child's environment."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from common.schemas.strings import Name, string_problem

MAX_INTEGRATIONS = 3  # one of each type
MAX_TAGS = 20
MAX_TAG_LENGTH = 64
MAX_URL_LENGTH = 2048

# tracker type → the secrets (environment variables) it reads, all optional but those in REQUIRED_SECRETS
SECRET_NAMES: dict[str, tuple[str, ...]] = {
    "wandb": ("WANDB_API_KEY",),
    "mlflow": ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "tensorboard": (),
}
ALLOWED_SECRET_NAMES: tuple[str, ...] = tuple(name for names in SECRET_NAMES.values() for name in names)
# what POST /jobs insists on: W&B cannot log in without a key (an MLflow server may need no credentials)
REQUIRED_SECRETS: dict[str, tuple[str, ...]] = {"wandb": ("WANDB_API_KEY",)}

_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _project_like(value: str | None, what: str) -> str | None:
    if value is not None and not _PROJECT_RE.match(value):
        raise ValueError(f"{what} must be 1-128 characters of letters, digits, '.', '_' and '-', starting with a "
                         f"letter or digit; got {value!r}")
    return value


class WandbOptions(_Strict):
    project: str = Field(description="The W&B project the run goes to.")
    name: Name | None = Field(default=None, max_length=128,
                              description="The run's display name; default: the job id.")
    entity: str | None = Field(default=None, description="The W&B team or user; default: the key's own.")
    tags: list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_TAGS, description=f"Up to {MAX_TAGS} tags of at most "
        f"{MAX_TAG_LENGTH} characters.")

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return _project_like(value, "wandb.project") or value

    @field_validator("entity")
    @classmethod
    def _entity(cls, value: str | None) -> str | None:
        return _project_like(value, "wandb.entity")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            problem = string_problem(tag, MAX_TAG_LENGTH)
            if problem or any(ord(c) < 32 for c in tag):
                raise ValueError(f"a tag must be printable text ({problem or 'no control characters'}); got {tag!r}")
        return value


class MlflowOptions(_Strict):
    tracking_uri: str = Field(description="The MLflow tracking server, http(s)://host[:port][/path]; its "
                              "credentials are the tenant's MLFLOW_TRACKING_* secrets.")
    experiment: str | None = Field(default=None, max_length=256,
                                   description="The experiment name (made when missing); default: 'tunequeue'.")
    run_name: str | None = Field(default=None, max_length=256, description="The run's name; default: the job id.")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if len(value) > MAX_URL_LENGTH:
            raise ValueError(f"must be at most {MAX_URL_LENGTH} characters; got {len(value)}")
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError(f"is not a URL: {value!r}; give http(s)://host[:port]") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL of an MLflow tracking server (the worker's "
                             f"files and databases are not the tenant's to write); got {value!r}")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: store them as the MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD secrets (PUT /secrets/{name})")
        return value

    @field_validator("experiment", "run_name")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ord(c) < 32 for c in value) or string_problem(value)):
            raise ValueError(f"must be printable, non-blank text; got {value!r}")
        return value


class TensorboardOptions(_Strict):
    """No options: the event files go to the job's output folder and are published with its model."""


TrackerType = Literal["wandb", "mlflow", "tensorboard"]


class Integration(_Strict):
    """One tracker: `type` and the options block of that name (and no other)."""

    type: TrackerType = Field(description="wandb, mlflow or tensorboard.")
    wandb: WandbOptions | None = None
    mlflow: MlflowOptions | None = None
    tensorboard: TensorboardOptions | None = None

    @model_serializer(mode="wrap")
    def _only_its_block(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's shape: `type` and its one block (the job object echoes it so)."""
        data: dict[str, Any] = handler(self)
        return {"type": data["type"], self.type: data[self.type]}

    @model_validator(mode="after")
    def _block_matches_type(self) -> Integration:
        for other in ("wandb", "mlflow", "tensorboard"):
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"an integration of type {self.type!r} takes a {self.type!r} block, not "
                                 f"{other!r}: remove `{other}` or set type to {other!r}")
        if self.type == "tensorboard" and self.tensorboard is None:
            self.tensorboard = TensorboardOptions()
        if getattr(self, self.type) is None:
            example = {"wandb": '{"project": "my-project"}',
                       "mlflow": '{"tracking_uri": "https://mlflow.example.com"}'}[self.type]
            raise ValueError(f"an integration of type {self.type!r} needs its options block: add "
                             f'"{self.type}": {example}')
        return self


def check_unique(integrations: list[Integration] | None) -> list[Integration] | None:
    """One integration per tracker type."""
    if not integrations:
        return integrations
    seen: set[str] = set()
    for item in integrations:
        if item.type in seen:
            raise ValueError(f"integrations names {item.type!r} twice; give each tracker once")
        seen.add(item.type)
    return integrations


def tracker_types(integrations: list[Any] | None) -> list[str]:
    """The tracker types of a spec's integrations, as models or as the stored JSON."""
    return [item["type"] if isinstance(item, dict) else item.type for item in integrations or []]
