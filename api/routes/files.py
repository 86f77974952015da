from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Annotated, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Form, Header, UploadFile
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select

from api.admission import db_slot
from api.deps import CurrentCaller, DbCaller, SettingsDep, StoreDep
from api.responses import model_response
from common.db import session_scope
from common.errors import InvalidRequest
from common.models import File
from common.read_pool import read
from common.schemas.common import ListPage
from common.schemas.files import FileDeleted, FilePreview, FilePublic
from common.schemas.strings import Name, UserName
from common.services import files as service
from common.services import reads

router = APIRouter(prefix="/files", tags=["files"])


@router.post("", response_model=FilePublic)
def upload_file(caller: DbCaller, store: StoreDep, settings: SettingsDep,
                file: UploadFile | None = None, purpose: Annotated[str, Form()] = "fine-tune",
                format: Annotated[str | None, Form()] = None,
                idempotency_key: Annotated[str | None, Header()] = None) -> FilePublic:
    if file is None:
        raise InvalidRequest("send the dataset as a multipart form field named `file`", param="file",
                             code="missing_file")
    with session_scope() as session:
        row = service.create_file(session, store, settings, tenant_id=caller.tenant_id, user=caller.user, src=file.file,
                                  filename=file.filename or "upload.jsonl", purpose=purpose, format=format,
                                  idempotency_key=idempotency_key)
        return FilePublic.of(row)


@router.get("", response_model=ListPage[FilePublic])
async def list_files(caller: CurrentCaller, after: Name | None = None, limit: int = 20,
                     user: UserName | None = None, purpose: Name | None = None) -> Response:
    """The organization's files, newest first; `?user=` keeps one user's uploads (`"user"` on each file),
    `?purpose=` one purpose's (OpenAI's filter: `fine-tune`, or `fine-tune-results` for jobs' result files)."""
    stmt = select(File).where(File.tenant_id == caller.tenant_id, File.deleted_at.is_(None))
    if user is not None:
        stmt = stmt.where(File.user_name == user)
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    async with db_slot():
        rows, has_more = await read(lambda reader: reads.paginate(
            reader, stmt, File, after=after, limit=limit, tenant_id=caller.tenant_id))
    data = [FilePublic.of(r) for r in rows]
    return model_response(ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                                   last_id=data[-1].id if data else None))


@router.get("/{file_id}", response_model=FilePublic)
async def get_file(file_id: Name, caller: CurrentCaller) -> Response:
    async with db_slot():
        row = await read(lambda reader: reads.get_owned(
            reader, File, file_id, caller.tenant_id, what="file", param="file_id"))
    return model_response(FilePublic.of(row))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: Name, caller: DbCaller, store: StoreDep) -> FileDeleted:
    """Delete one of your files: its bytes are removed and it no longer counts against `storage_gb`. Refused
    (409 `file_in_use`) while a job that has not finished trains or validates on it."""
    with session_scope() as session:
        row = service.delete_file(session, caller.tenant_id, file_id)
        session.commit()
    service.remove_bytes(store, row)
    return FileDeleted(id=row.id)


CONTENT_CHUNK = 1024 * 1024


@router.get("/{file_id}/content")
async def get_file_content(file_id: Name, caller: CurrentCaller, store: StoreDep) -> StreamingResponse:
    """The stored bytes, streamed from the artifact store (a folder or a bucket) a chunk at a time."""
    async with db_slot():
        row = await read(lambda reader: reads.get_owned(
            reader, File, file_id, caller.tenant_id, what="file", param="file_id"))
    body = await asyncio.to_thread(store.open, row.storage_key)
    quoted = quote(row.filename)
    disposition = (f'attachment; filename="{row.filename}"' if quoted == row.filename
                   else f"attachment; filename*=utf-8''{quoted}")
    return StreamingResponse(_chunks(body), media_type="application/octet-stream",
                             headers={"Content-Disposition": disposition, "Content-Length": str(row.bytes)})


def _chunks(body: BinaryIO) -> Iterator[bytes]:
    with body:
        while chunk := body.read(CONTENT_CHUNK):
            yield chunk


@router.get("/{file_id}/preview", response_model=FilePreview)
def preview_file(file_id: Name, caller: DbCaller, store: StoreDep, settings: SettingsDep,
                 limit: int = 5, base_model: Name | None = None, template: Name | None = None,
                 stage: Name | None = None, train_on_inputs: bool = False) -> FilePreview:
    """The first `limit` rows (≤ 20) converted for `stage` (default: the file's first), rendered with the chat
    template of `base_model` (default: the first registered) or `template`, as trained / untrained token runs.
    A sync route: all of it runs in one thread-pool call, inside the admission slot, off the event loop; the
    database session is closed before the rows are tokenised."""
    with session_scope() as session:
        plan = service.plan_preview(session, settings, tenant_id=caller.tenant_id, file_id=file_id, limit=limit,
                                    base_model=base_model, stage=stage)
    return FilePreview.model_validate(service.render_preview(store, plan, settings.work_path / "previews",
                                                             template=template,
                                                             train_on_inputs=train_on_inputs))
