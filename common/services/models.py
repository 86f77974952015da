"""Models a tenant can use: the registered base models and its own published adapters."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.artifacts import LocalArtifactStore
from common.errors import NotFound
from common.models import Model
from common.registry import local_path
from common.schemas.common import unix
from common.schemas.models import ModelPublic
from common.settings import Settings


def base_models(settings: Settings) -> list[ModelPublic]:
    out = []
    for model_id, entry in sorted(settings.base_models.items()):
        path = local_path(entry)
        out.append(ModelPublic(id=model_id, created=0, owned_by="tunequeue", kind="base", root=model_id,
                               available=path is None or (path / "config.json").is_file()))
    return out


def adapter_public(row: Model) -> ModelPublic:
    return ModelPublic(id=row.id, created=unix(row.created_at) or 0, owned_by=row.tenant_id, parent=row.base_model,
                       root=row.base_model, job_id=row.job_id, kind="adapter", manifest=row.manifest)


def list_models(session: Session, settings: Settings, tenant_id: str) -> list[ModelPublic]:
    adapters = session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None)).order_by(Model.created_at.desc())
    )
    return base_models(settings) + [adapter_public(row) for row in adapters]


def get_adapter(session: Session, tenant_id: str, model_id: str) -> Model:
    row = session.scalar(
        select(Model).where(Model.id == model_id, Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    )
    if row is None:
        raise NotFound(f"no fine-tuned model with id {model_id!r}", param="model", code="model_not_found")
    return row


def adapter_archive(store: LocalArtifactStore, row: Model) -> IO[bytes]:
    """A tar of the adapter's files and manifest.json, spooled (to disk past 64 MiB), positioned at 0."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)  # noqa: SIM115 — the caller streams and closes it
    with tarfile.open(fileobj=spool, mode="w") as tar:
        for entry in row.manifest["files"]:
            with store.open(f"{row.storage_key}/{entry['path']}") as fh:
                info = tarfile.TarInfo(entry["path"])
                info.size = entry["bytes"]
                info.mtime = int(row.created_at.timestamp())
                tar.addfile(info, fh)
        manifest = json.dumps(row.manifest, indent=2).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        info.mtime = int(row.created_at.timestamp())
        tar.addfile(info, io.BytesIO(manifest))
    spool.seek(0)
    return spool
