"""Models a tenant can use: the registered base models and its own published adapters (and their checkpoints)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.adapter_support import vllm_compatibility
from common.artifacts import ArtifactStore
from common.errors import PermissionDenied, model_not_found
from common.model_names import CheckpointName, fine_tuned_model_name, parse_checkpoint_model_name
from common.models import Checkpoint, Job, Model
from common.models.base import utcnow
from common.registry import local_path
from common.schemas.common import unix
from common.schemas.models import ModelPublic
from common.settings import Settings, get_settings

_CONFIG_CACHE: dict[str, dict[str, Any] | None] = {}
_CONFIG_CACHE_SIZE = 4096


def adapter_config(store: ArtifactStore, storage_key: str) -> dict[str, Any] | None:
    """The adapter's adapter_config.json; None if unreadable. Published adapters never change under their key,
    so each is read once per process."""
    if storage_key not in _CONFIG_CACHE:
        try:
            with store.open(f"{storage_key}/adapter_config.json") as fh:
                config = json.loads(fh.read())
        except (OSError, ValueError):
            return None
        if len(_CONFIG_CACHE) >= _CONFIG_CACHE_SIZE:
            _CONFIG_CACHE.pop(next(iter(_CONFIG_CACHE)))
        _CONFIG_CACHE[storage_key] = config if isinstance(config, dict) else None
    return _CONFIG_CACHE[storage_key]


def base_models(settings: Settings) -> list[ModelPublic]:
    out = []
    for model_id, entry in sorted(settings.base_models.items()):
        path = local_path(entry)
        out.append(ModelPublic(id=model_id, created=0, owned_by="tunequeue", kind="base", root=model_id,
                               available=path is None or (path / "config.json").is_file()))
    return out


def adapter_public(row: Model, store: ArtifactStore | None = None) -> ModelPublic:
    config = adapter_config(store, row.storage_key) if store is not None else None
    return ModelPublic(id=row.id, created=unix(row.created_at) or 0, owned_by=row.tenant_id, parent=row.base_model,
                       root=row.base_model, job_id=row.job_id, kind="adapter", manifest=row.manifest,
                       vllm=vllm_compatibility(config, get_settings().serve_vllm_max_lora_rank)
                       if config is not None else None)


def list_models(session: Session, settings: Settings, tenant_id: str,
                store: ArtifactStore | None = None) -> list[ModelPublic]:
    adapters = session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None)).order_by(Model.created_at.desc())
    )
    return base_models(settings) + [adapter_public(row, store) for row in adapters]


def own_adapter(session: Session, tenant_id: str, model_id: str) -> Model | None:
    """The tenant's published, non-deleted adapter `model_id`; None for a missing, deleted or other tenant's one
    (the caller answers all three alike). What a job's `from_model` may name: worker/prepare.py `_init_adapter`
    loads the same row."""
    return session.scalar(
        select(Model).where(Model.id == model_id, Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    )


def own_checkpoint(session: Session, tenant_id: str, checkpoint_id: str) -> tuple[Checkpoint, str] | None:
    """The tenant's checkpoint `checkpoint_id` and the base model of the job that saved it; None for a missing
    or other tenant's one. What a job's `resume_from` may name: worker/prepare.py `_resume_point` loads the same
    row."""
    row = session.execute(select(Checkpoint, Job.base_model).join(Job, Job.id == Checkpoint.job_id)
                          .where(Checkpoint.id == checkpoint_id, Checkpoint.tenant_id == tenant_id)).one_or_none()
    return None if row is None else (row[0], row[1])


def get_adapter(session: Session, tenant_id: str, model_id: str) -> Model:
    row = own_adapter(session, tenant_id, model_id)
    if row is None:
        raise model_not_found(model_id)
    return row


def check_usable(session: Session, settings: Settings, tenant_id: str, model_id: str) -> str:
    """May this tenant run inference on `model_id`: a registered base model, one of its own non-deleted adapters,
    or a checkpoint of one of its own jobs, by its id or its `fine_tuned_model_checkpoint` name. Returns the id
    serve knows it by (the checkpoint's id for such a name, else `model_id`); otherwise 404 model_not_found (never
    403)."""
    if model_id in settings.base_models:
        return model_id
    if (name := parse_checkpoint_model_name(model_id)) is not None:
        return _checkpoint_by_name(session, tenant_id, model_id, name)
    if model_id.startswith("ftckpt-"):
        owned = session.scalar(select(Checkpoint.id).where(Checkpoint.id == model_id,
                                                           Checkpoint.tenant_id == tenant_id))
    else:
        owned = session.scalar(select(Model.id).where(Model.id == model_id, Model.tenant_id == tenant_id,
                                                      Model.deleted_at.is_(None)))
    if owned is None:
        raise model_not_found(model_id)
    return model_id


def _checkpoint_by_name(session: Session, tenant_id: str, model_id: str, name: CheckpointName) -> str:
    """The id of the checkpoint that `model_id` (a `fine_tuned_model_checkpoint` name) names: the tenant's job's
    checkpoint at that step, whose job's model name is the name's start (base model and suffix included)."""
    row = session.execute(select(Checkpoint.id, Job.base_model, Job.spec).join(Job, Job.id == Checkpoint.job_id)
                          .where(Checkpoint.job_id == name.job_id, Checkpoint.step == name.step,
                                 Checkpoint.tenant_id == tenant_id)
                          .order_by(Checkpoint.created_at.desc()).limit(1)).one_or_none()
    if row is None or fine_tuned_model_name(row.base_model, (row.spec or {}).get("suffix"),
                                            name.job_id) != name.model_name:
        raise model_not_found(model_id)
    return str(row.id)


def delete_adapter(session: Session, settings: Settings, tenant_id: str, model_id: str) -> Model:
    """Soft delete: `deleted_at` is set, the row and files stay (the job still names it). The caller commits,
    then tells `serve` (common.model_events.announce) — never before the commit."""
    if model_id in settings.base_models:
        raise PermissionDenied(f"{model_id} is a base model, registered by the operator (TUNEQUEUE_BASE_MODELS); "
                               "only fine-tuned models can be deleted", code="cannot_delete_base_model")
    row = session.scalar(select(Model).where(Model.id == model_id, Model.tenant_id == tenant_id,
                                             Model.deleted_at.is_(None)).with_for_update())
    if row is None:
        raise model_not_found(model_id)
    row.deleted_at = utcnow()
    session.flush()
    return row


ARCHIVE_CHUNK = 1024 * 1024


def adapter_archive(store: ArtifactStore, row: Model) -> Iterator[bytes]:
    """A tar of the adapter's files and manifest.json, generated piece by piece while it is sent: the bytes
    `tarfile.open(mode="w")` writes for the same members (PAX headers, 512-byte blocks, a 10 KiB record at the
    end), but no copy of the model on disk or in memory first (it used to be spooled whole, to a temporary file
    of the model's size). At most ARCHIVE_CHUNK bytes are held at a time. Every member's size is checked here,
    before the response starts: a missing or shortened file is an error, not a truncated download."""
    for entry in row.manifest["files"]:
        key = f"{row.storage_key}/{entry['path']}"
        if store.size(key) != entry["bytes"]:
            raise OSError(f"{key} has {store.size(key)} bytes, its manifest says {entry['bytes']}")
    return _archive_chunks(store, row)


def _archive_chunks(store: ArtifactStore, row: Model) -> Iterator[bytes]:
    mtime = int(row.created_at.timestamp())
    written = 0
    for entry in row.manifest["files"]:
        header = _member(entry["path"], entry["bytes"], mtime)
        yield header
        with store.open(f"{row.storage_key}/{entry['path']}") as fh:
            left = entry["bytes"]
            while left:
                chunk = fh.read(min(ARCHIVE_CHUNK, left))
                if not chunk:  # as tarfile's copy would: shorter than the manifest says is a broken archive
                    raise OSError(f"{row.storage_key}/{entry['path']} ended {left} bytes early")
                left -= len(chunk)
                yield chunk
        pad = _padding(entry["bytes"])
        yield pad
        written += len(header) + entry["bytes"] + len(pad)
    manifest = json.dumps(row.manifest, indent=2).encode()
    end = (_member("manifest.json", len(manifest), mtime) + manifest + _padding(len(manifest))
           + bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
    written += len(end)
    yield end + bytes(-written % tarfile.RECORDSIZE)  # tarfile fills the last record


def _member(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def _padding(size: int) -> bytes:
    return bytes(-size % tarfile.BLOCKSIZE)
