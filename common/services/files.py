"""Uploads: stream to the artifact store under a server-made key, hash, check every row, record. Previews: the
first rows of a file as the trainer will see them."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.artifacts import LocalArtifactStore
from common.datasets.convert import iter_stage_records
from common.datasets.formats import FORMATS
from common.datasets.reader import EXTENSIONS
from common.datasets.tokens import USE_LOCK, Encoder, load_tokenizer, template_label
from common.datasets.upload_check import validate_file
from common.errors import InvalidRequest, TooLarge
from common.ids import new_id
from common.models import File
from common.models.base import DEFAULT_USER
from common.registry import resolve
from common.schemas.strings import MAX_IDEMPOTENCY_KEY_LENGTH, check_string
from common.services.queries import get_owned
from common.settings import BaseModelEntry, Settings

PURPOSES = ("fine-tune", "fine-tune-validation", "training", "validation")
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
    return existing


def create_file(session: Session, store: LocalArtifactStore, settings: Settings, *, tenant_id: str, src: BinaryIO,
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
        report = validate_file(store.local_path(key), format=format, max_errors=settings.max_validation_errors,
                               name=filename)
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


def render_preview(store: LocalArtifactStore, plan: PreviewPlan, *, template: str | None = None,
                   train_on_inputs: bool = False) -> dict[str, Any]:
    """The first `plan.limit` rows of the file as the trainer will see them: converted for the stage, rendered
    with the chat template of the base model (or `template`), split into trained / untrained token runs. 503
    when the tokenizer cannot load. CPU work with no connection held: the route runs it in its thread-pool call,
    off the event loop; its memory is bounded by the row limit, the token cut and PREVIEW_MAX_ROWS."""
    encoder = Encoder.for_model(load_tokenizer(plan.model_id, plan.entry), model_id=plan.model_id,
                                stage=plan.stage, template=template or None, registry_template=plan.entry.template,
                                train_on_inputs=train_on_inputs)
    rows = iter_stage_records(store.local_path(plan.storage_key), plan.format, plan.stage)
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
