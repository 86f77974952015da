"""Uploads: stream to the artifact store under a server-made key, hash, check every row, record. Previews: the
first rows of a file as the trainer will see them."""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.artifacts import ArtifactStore
from common.datasets.convert import iter_stage_records
from common.datasets.formats import FORMATS
from common.datasets.reader import EXTENSIONS
from common.datasets.tokens import USE_LOCK, Encoder, load_tokenizer, template_label
from common.datasets.upload_check import validate_file
from common.errors import Conflict, InvalidRequest, TooLarge
from common.ids import new_id
from common.models import File, Job
from common.models.base import DEFAULT_USER, utcnow
from common.registry import resolve
from common.schemas.strings import MAX_IDEMPOTENCY_KEY_LENGTH, check_string
from common.services.queries import get_owned
from common.services.quotas import check_can_store
from common.settings import BaseModelEntry, Settings

log = logging.getLogger("tunequeue.files")

PURPOSES = ("fine-tune", "fine-tune-validation", "training", "validation")
# The purpose of a file the service writes for a job (its `result_files`), never of an upload: OpenAI's name.
RESULTS_PURPOSE = "fine-tune-results"
CHUNK = 1024 * 1024
PREVIEW_MAX_ROWS = 20


def check_format(format: str | None) -> str | None:
    """The `format` override of an upload: None or "" to detect it, else one of FORMATS."""
    if format is None or not format.strip():
        return None
    if format.strip() not in FORMATS:
        raise InvalidRequest(
            f"format must be one of {', '.join(FORMATS)} (or left out to detect it from the rows); got {format!r}",
            param="format", code="invalid_format",
        )
    return format.strip()


def storage_key(tenant_id: str, file_id: str, filename: str) -> str:
    """files/<tenant>/<file id><ext>: the container's extension (.csv, .jsonl.gz, ...) is kept, so that a reader
    of the stored file alone (the worker) tells the container as the upload did."""
    low = filename.lower()
    suffix = Path(low.removesuffix(".gz")).suffix
    ext = (suffix if suffix in EXTENSIONS else "") + (".gz" if low.endswith(".gz") else "")
    return f"files/{tenant_id}/{file_id}{ext}"


def _same_upload(session: Session, tenant_id: str, key: str, sha256: str, filename: str, purpose: str) -> File | None:
    """The file an earlier request with this Idempotency-Key made, if the upload is the same; 400 if it differs."""
    existing = session.scalar(select(File).where(File.tenant_id == tenant_id, File.idempotency_key == key))
    if existing is None:
        return None
    if (existing.sha256, existing.filename, existing.purpose) != (sha256, filename, purpose):
        raise InvalidRequest("this Idempotency-Key was already used for a different upload; use a new key for a "
                             "new file", param="Idempotency-Key", code="idempotency_key_reused")
    if existing.deleted_at is not None:
        raise InvalidRequest(f"this Idempotency-Key made file {existing.id}, which has since been deleted; use a new "
                             "key to upload it again", param="Idempotency-Key", code="idempotency_key_reused")
    return existing


def create_file(session: Session, store: ArtifactStore, settings: Settings, *, tenant_id: str, src: BinaryIO,
                filename: str, purpose: str, format: str | None = None, idempotency_key: str | None = None,
                user: str = DEFAULT_USER) -> File:
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}", param="purpose")
    format = check_format(format)
    # Checked before a byte is stored: what the files row cannot hold must not leave bytes behind either.
    check_string(idempotency_key, param="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    filename = Path(filename or "upload.jsonl").name[:512]
    check_string(filename, param="file", what="the filename of `file`")
    file_id = new_id("file")
    key = storage_key(tenant_id, file_id, filename)
    digest = hashlib.sha256()
    size = 0
    with store.writer(key) as out:  # removed again if anything below raises
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise TooLarge(
                    f"the file is larger than this server's upload limit of {settings.max_upload_bytes} bytes; "
                    "split it or ask an admin to raise TUNEQUEUE_MAX_UPLOAD_BYTES",
                    param="file",
                )
            digest.update(chunk)
            out.write(chunk)
    try:
        check_can_store(session, tenant_id, size)
    except BaseException:
        store.delete(key)
        raise
    if idempotency_key:
        try:
            earlier = _same_upload(session, tenant_id, idempotency_key, digest.hexdigest(), filename, purpose)
        except BaseException:
            store.delete(key)
            raise
        if earlier is not None:
            store.delete(key)  # the retry's bytes are the same bytes: keep the first copy only
            return earlier
    try:
        with store.local_copy(key, settings.work_path / "uploads") as stored:
            report = validate_file(stored, format=format, max_errors=settings.max_validation_errors, name=filename)
    except BaseException:
        store.delete(key)
        raise
    row = File(
        id=file_id, tenant_id=tenant_id, filename=filename, purpose=purpose,
        bytes=size, sha256=digest.hexdigest(), storage_key=key, status="processed" if report.ok else "error",
        format=report.format, stages=report.stages if report.ok else [], row_count=report.row_count,
        errors=[{"line": e.line, "field": e.field, "code": e.code, "message": e.message} for e in report.errors],
        idempotency_key=idempotency_key, user_name=user,
    )
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its file.
        store.delete(key)
        session.expunge(row)
        winner = _same_upload(session, tenant_id, idempotency_key or "", row.sha256, filename, purpose)
        if winner is None:
            raise
        return winner
    except BaseException:  # any other refusal of the row: no bytes without a row
        store.delete(key)
        raise
    return row


@dataclass(frozen=True)
class PreviewPlan:
    """What a preview reads and how it renders it, decided with the database; the tokenising needs none."""

    file_id: str
    format: str
    storage_key: str
    stage: str
    model_id: str
    entry: BaseModelEntry
    limit: int


def plan_preview(session: Session, settings: Settings, *, tenant_id: str, file_id: str, limit: int = 5,
                 base_model: str | None = None, stage: str | None = None) -> PreviewPlan:
    """The checks of a preview: 400 for a bad argument or an unprocessed file, 404 for another tenant's file."""
    if not 1 <= limit <= PREVIEW_MAX_ROWS:
        raise InvalidRequest(f"limit must be between 1 and {PREVIEW_MAX_ROWS}; got {limit}", param="limit")
    row = get_owned(session, File, file_id, tenant_id, what="file", param="file_id")
    if row.status != "processed" or not row.format:
        first = "; ".join(e["message"] for e in (row.errors or [])[:3]) or f"its status is {row.status}"
        raise InvalidRequest(f"file {file_id} did not pass validation ({first}); fix it and upload it again to "
                             "preview it", param="file_id", code="file_not_processed")
    stages = list(row.stages or [])
    if stage is None:
        stage = stages[0]
    elif stage not in stages:
        raise InvalidRequest(f"file {file_id} is in {row.format} format, which feeds {', '.join(stages)}; got "
                             f"stage {stage!r}", param="stage", code="invalid_stage")
    model_id = base_model or next(iter(settings.base_models), None)
    if model_id is None:
        raise InvalidRequest("no base model is registered on this server (TUNEQUEUE_BASE_MODELS)",
                             param="base_model", code="model_not_found")
    return PreviewPlan(file_id=row.id, format=row.format, storage_key=row.storage_key, stage=stage,
                       model_id=model_id, entry=resolve(settings, model_id), limit=limit)


def render_preview(store: ArtifactStore, plan: PreviewPlan, work_dir: Path, *, template: str | None = None,
                   train_on_inputs: bool = False) -> dict[str, Any]:
    """The first `plan.limit` rows of the file as the trainer will see them: converted for the stage, rendered
    with the chat template of the base model (or `template`), split into trained / untrained token runs. 503
    when the tokenizer cannot load. CPU work with no connection held: the route runs it in its thread-pool call,
    off the event loop; its memory is bounded by the row limit, the token cut and PREVIEW_MAX_ROWS."""
    encoder = Encoder.for_model(load_tokenizer(plan.model_id, plan.entry), model_id=plan.model_id,
                                stage=plan.stage, template=template or None, registry_template=plan.entry.template,
                                train_on_inputs=train_on_inputs)
    with store.local_copy(plan.storage_key, work_dir) as stored:  # the stored file, fetched into work_dir
        rows = iter_stage_records(stored, plan.format, plan.stage)
        data = [_preview_row(encoder, line, item) for line, item in itertools.islice(rows, plan.limit)]
    return {"object": "file.preview", "file_id": plan.file_id, "format": plan.format, "stage": plan.stage,
            "base_model": plan.model_id, "template": template_label(encoder), "train_on_inputs": train_on_inputs,
            "data": data}


def _preview_row(encoder: Encoder, line: int, item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"line": line, "row": item, "sequences": [], "error": None}
    try:
        with USE_LOCK:
            sequences = encoder.encode(item)
            out["sequences"] = [{"name": s.name, "tokens": len(s.input_ids), "trained_tokens": s.trained(),
                                 "segments": encoder.segments(s)} for s in sequences]
    except Exception as exc:  # a chat template may refuse a row (Jinja raise_exception): show why, go on
        out["error"] = f"the chat template cannot render this row: {type(exc).__name__}: {exc}"
    return out


def delete_file(session: Session, tenant_id: str, file_id: str) -> File:
    """Mark the tenant's file deleted (the caller commits, then `remove_bytes`). A job that has not finished and
    trains or validates on it keeps it: 409 `file_in_use`, naming the job."""
    row = get_owned(session, File, file_id, tenant_id, what="file", param="file_id", for_update=True)
    user = session.scalar(select(Job.id).where(
        Job.tenant_id == tenant_id, Job.status.in_(("validating_files", "queued", "running")),
        or_(Job.training_file_id == file_id, Job.validation_file_id == file_id)).limit(1))
    if user is not None:
        raise Conflict(f"file {file_id} is used by job {user}, which has not finished; cancel it "
                       f"(POST /jobs/{user}/cancel) or wait for it to end, then delete the file",
                       param="file_id", code="file_in_use")
    row.deleted_at = utcnow()
    session.flush()
    return row


def remove_bytes(store: ArtifactStore, row: File) -> None:
    """After the deletion is committed: a row never points at bytes that are gone while it still reads as there."""
    try:
        store.delete(row.storage_key)
    except Exception:
        log.exception("could not remove the bytes of deleted file %s (%s)", row.id, row.storage_key)
