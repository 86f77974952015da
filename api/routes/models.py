from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import CurrentCaller, SessionDep, SettingsDep, StoreDep
from common.errors import NotFound
from common.schemas.common import ListPage
from common.schemas.models import ModelPublic
from common.services import models as service

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ListPage[ModelPublic])
@router.get("/models", response_model=ListPage[ModelPublic], include_in_schema=False)
def list_models(caller: CurrentCaller, session: SessionDep, settings: SettingsDep) -> ListPage[ModelPublic]:
    data = service.list_models(session, settings, caller.tenant_id)
    return ListPage(data=data, has_more=False)


@router.get("/models/{model_id}/content")
def download_adapter(model_id: str, caller: CurrentCaller, session: SessionDep,
                     store: StoreDep) -> StreamingResponse:
    """A tar of adapter_config.json, adapter_model.safetensors and manifest.json (sha256 of each file)."""
    row = service.get_adapter(session, caller.tenant_id, model_id)
    archive = service.adapter_archive(store, row)
    name = row.id.replace(":", "_") + ".tar"

    def chunks():  # type: ignore[no-untyped-def]
        with archive:
            while chunk := archive.read(1024 * 1024):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/x-tar",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/v1/models/{model_id}", response_model=ModelPublic)
@router.get("/models/{model_id}", response_model=ModelPublic, include_in_schema=False)
def get_model(model_id: str, caller: CurrentCaller, session: SessionDep, settings: SettingsDep) -> ModelPublic:
    for base in service.base_models(settings):
        if base.id == model_id:
            return base
    try:
        return service.adapter_public(service.get_adapter(session, caller.tenant_id, model_id))
    except NotFound:
        raise NotFound(f"The model {model_id!r} does not exist or you do not have access to it.", param="model",
                       code="model_not_found") from None
