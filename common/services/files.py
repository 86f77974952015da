"""Uploads: stream to the artifact store under a server-made key, hash, check every row, record."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from common.artifacts import LocalArtifactStore
from common.datasets import validate_file
from common.errors import InvalidRequest, TooLarge
from common.ids import new_id
from common.models import File
from common.settings import Settings

PURPOSES = ("fine-tune", "fine-tune-validation", "training", "validation")
CHUNK = 1024 * 1024


def create_file(session: Session, store: LocalArtifactStore, settings: Settings, *, tenant_id: str, src: BinaryIO,
                filename: str, purpose: str, format: str | None = None) -> File:
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}", param="purpose")
    file_id = new_id("file")
    key = f"files/{tenant_id}/{file_id}"
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
        report = validate_file(store.local_path(key), format=format, max_errors=settings.max_validation_errors)
    except BaseException:
        store.delete(key)
        raise
    row = File(
        id=file_id, tenant_id=tenant_id, filename=Path(filename or "upload.jsonl").name[:512], purpose=purpose,
        bytes=size, sha256=digest.hexdigest(), storage_key=key, status="processed" if report.ok else "error",
        format=report.format, stages=report.stages if report.ok else [], row_count=report.row_count,
        errors=[{"line": e.line, "field": e.field, "code": e.code, "message": e.message} for e in report.errors],
    )
    session.add(row)
    session.flush()
    return row

