from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.deps import DbCaller, SettingsDep, StoreDep
from common.db import session_scope
from common.model_events import announce
from common.schemas.common import ListPage
from common.schemas.models import ModelPublic
from common.schemas.strings import Name
from common.services import models as service

router = APIRouter(tags=["models"])
log = logging.getLogger("tunequeue.api")


class ModelDeleted(BaseModel):
    id: str
    object: str = "model"
    deleted: bool = True


@router.get("/v1/models", response_model=ListPage[ModelPublic])
@router.get("/models", response_model=ListPage[ModelPublic], include_in_schema=False)
def list_models(caller: DbCaller, settings: SettingsDep, store: StoreDep) -> ListPage[ModelPublic]:
    with session_scope() as session:
        data = service.list_models(session, settings, caller.tenant_id, store)
    return ListPage(data=data, has_more=False)


@router.get("/models/{model_id}/content")
def download_adapter(model_id: Name, caller: DbCaller, store: StoreDep) -> StreamingResponse:
    """A tar of adapter_config.json, adapter_model.safetensors and manifest.json (sha256 of each file)."""
    with session_scope() as session:
        row = service.get_adapter(session, caller.tenant_id, model_id)
    name = row.id.replace(":", "_") + ".tar"
    # Streamed as it is made (a sync generator: Starlette iterates it in the thread pool, after this function has
    # given its admission slot back); the tenant check and the size check are done before the first byte.
    return StreamingResponse(service.adapter_archive(store, row), media_type="application/x-tar",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/v1/models/{model_id}", response_model=ModelPublic)
@router.get("/models/{model_id}", response_model=ModelPublic, include_in_schema=False)
def get_model(model_id: Name, caller: DbCaller, settings: SettingsDep, store: StoreDep) -> ModelPublic:
    for base in service.base_models(settings):
        if base.id == model_id:
            return base
    with session_scope() as session:
        return service.adapter_public(service.get_adapter(session, caller.tenant_id, model_id), store)


@router.delete("/v1/models/{model_id}", response_model=ModelDeleted)
@router.delete("/models/{model_id}", response_model=ModelDeleted, include_in_schema=False)
def delete_model(model_id: Name, caller: DbCaller, settings: SettingsDep) -> ModelDeleted:
    """Delete one of your fine-tuned models: it leaves /v1/models and `serve` unloads it at once. The job keeps
    its record; the files stay in the artifact store."""
    with session_scope() as session:  # committed at its end: tell serve only what is durable
        row = service.delete_adapter(session, settings, caller.tenant_id, model_id)
    try:
        announce("deleted", model_id=row.id, tenant_id=row.tenant_id, base_model=row.base_model,
                 storage_key=row.storage_key)
    except Exception as exc:  # serve also refuses it through the API's own check, and reloads from Postgres
        log.warning("could not announce the deletion of %s on Redis: %s", row.id, exc)
    return ModelDeleted(id=row.id)
