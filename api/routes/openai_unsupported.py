"""The routes of OpenAI's fine-tuning API that this server does not offer, answered by name instead of a bare
"no such route": 404 `unsupported_endpoint`, saying why and what to use instead (docs/api.md, "OpenAI's fine-tuning
API here"). A 404, not a 5xx, so that OpenAI's SDK does not retry it."""

from __future__ import annotations

from typing import NoReturn

from fastapi import APIRouter

from api.deps import CurrentCaller
from common.errors import NotFound

router = APIRouter(prefix="/v1/fine_tuning", tags=["openai-compatible"], include_in_schema=False)

PERMISSIONS = ("checkpoint permissions share an OpenAI checkpoint with other organizations; here a checkpoint "
               "belongs to its tenant, and its users chat with it by its id or its fine_tuned_model_checkpoint name")
GRADERS = ("graders serve reinforcement fine-tuning, which this server does not train; use method supervised or "
           "dpo, or the native POST /jobs")


def _unsupported(what: str, why: str) -> NoReturn:
    raise NotFound(f"{what} is not offered by this server: {why}", param=None, code="unsupported_endpoint")


@router.api_route("/checkpoints/{checkpoint}/permissions", methods=["GET", "POST"], response_model=None)
async def checkpoint_permissions(checkpoint: str, caller: CurrentCaller) -> NoReturn:
    _unsupported("/v1/fine_tuning/checkpoints/{checkpoint}/permissions", PERMISSIONS)


@router.delete("/checkpoints/{checkpoint}/permissions/{permission_id}", response_model=None)
async def delete_checkpoint_permission(checkpoint: str, permission_id: str, caller: CurrentCaller) -> NoReturn:
    _unsupported("/v1/fine_tuning/checkpoints/{checkpoint}/permissions", PERMISSIONS)


@router.post("/alpha/graders/{action}", response_model=None)
async def graders(action: str, caller: CurrentCaller) -> NoReturn:
    _unsupported("/v1/fine_tuning/alpha/graders", GRADERS)
