"""Base models come from TUNEQUEUE_BASE_MODELS: id → a local folder, a hub id at a revision, or an s3://bucket/prefix
folder that each host fetches into its model cache (common/model_cache.py). Nothing here downloads: the API checks
only that the id is registered; a process that needs the files asks the cache for a local copy."""

from __future__ import annotations

from pathlib import Path

from common.errors import InvalidRequest
from common.settings import BaseModelEntry, Settings


def resolve(settings: Settings, model_id: str, *, param: str = "base_model") -> BaseModelEntry:
    entry = settings.base_models.get(model_id)
    if entry is None:
        names = ", ".join(sorted(settings.base_models)) or "(none registered)"
        raise InvalidRequest(
            f"base model {model_id!r} is not registered on this server; registered base models: {names}",
            param=param, code="model_not_found",
        )
    return entry


def is_s3(entry: BaseModelEntry) -> bool:
    """A folder in an S3-compatible bucket (s3://bucket/prefix), fetched into each host's model cache."""
    return entry.path.startswith("s3://")


def is_local(entry: BaseModelEntry) -> bool:
    """A folder on this host, not a hub id nor an s3:// folder: absolute, ./ ../ ~, two or more '/' (hub ids are
    'name' or 'org/name'), or on disk."""
    path = entry.path
    if is_s3(entry):
        return False
    return path.startswith(("/", ".", "~")) or path.count("/") >= 2 or Path(path).exists()


def local_path(entry: BaseModelEntry) -> Path | None:
    return Path(entry.path).expanduser().resolve() if is_local(entry) else None
