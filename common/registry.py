"""Base models come from TUNEQUEUE_BASE_MODELS (id → local path or hub id at a revision)."""

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


def is_local(entry: BaseModelEntry) -> bool:
    """A folder, not a hub id: absolute, ./ ../ ~, two or more '/' (hub ids are 'name' or 'org/name'), or on disk."""
    path = entry.path
    return path.startswith(("/", ".", "~")) or path.count("/") >= 2 or Path(path).exists()


def local_path(entry: BaseModelEntry) -> Path | None:
    return Path(entry.path).expanduser().resolve() if is_local(entry) else None
