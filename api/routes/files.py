from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Header, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import CurrentCaller, SessionDep, SettingsDep, StoreDep
from common.errors import InvalidRequest
from common.models import File
from common.schemas.common import ListPage
from common.schemas.files import FilePreview, FilePublic
from common.services import files as service
from common.services.queries import get_owned, paginate

router = APIRouter(prefix="/files", tags=["files"])


@router.post("", response_model=FilePublic)
def upload_file(caller: CurrentCaller, session: SessionDep, store: StoreDep, settings: SettingsDep,
                file: UploadFile | None = None, purpose: Annotated[str, Form()] = "fine-tune",
                format: Annotated[str | None, Form()] = None,
                idempotency_key: Annotated[str | None, Header()] = None) -> FilePublic:
    if file is None:
        raise InvalidRequest("send the dataset as a multipart form field named `file`", param="file",
                             code="missing_file")
    row = service.create_file(session, store, settings, tenant_id=caller.tenant_id, src=file.file,
                              filename=file.filename or "upload.jsonl", purpose=purpose, format=format,
                              idempotency_key=idempotency_key)
    return FilePublic.of(row)


@router.get("", response_model=ListPage[FilePublic])
def list_files(caller: CurrentCaller, session: SessionDep, after: str | None = None,
               limit: int = 20) -> ListPage[FilePublic]:
    rows, has_more = paginate(session, select(File).where(File.tenant_id == caller.tenant_id), File, after=after,
                              limit=limit, tenant_id=caller.tenant_id)
    data = [FilePublic.of(r) for r in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: str, caller: CurrentCaller, session: SessionDep) -> FilePublic:
    return FilePublic.of(get_owned(session, File, file_id, caller.tenant_id, what="file", param="file_id"))


@router.get("/{file_id}/content")
def get_file_content(file_id: str, caller: CurrentCaller, session: SessionDep, store: StoreDep) -> FileResponse:
    row = get_owned(session, File, file_id, caller.tenant_id, what="file", param="file_id")
    return FileResponse(store.local_path(row.storage_key), media_type="application/octet-stream",
                        filename=row.filename)


@router.get("/{file_id}/preview", response_model=FilePreview)
def preview_file(file_id: str, caller: CurrentCaller, session: SessionDep, store: StoreDep, settings: SettingsDep,
                 limit: int = 5, base_model: str | None = None, template: str | None = None,
                 stage: str | None = None, train_on_inputs: bool = False) -> FilePreview:
    """The first `limit` rows (≤ 20) converted for `stage` (default: the file's first), rendered with the chat
    template of `base_model` (default: the first registered) or `template`, as trained / untrained token runs."""
    return FilePreview.model_validate(service.preview_file(
        session, store, settings, tenant_id=caller.tenant_id, file_id=file_id, limit=limit, base_model=base_model,
        template=template, stage=stage, train_on_inputs=train_on_inputs))
