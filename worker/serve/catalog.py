"""Which model an id names: a registered base model, a published adapter (`ft:…`) or a checkpoint (`ftckpt-…`).

Adapters become known from the `tunequeue:models` channel the moment they are published; an id not heard of
there (serve started later, a message lost) is looked up in Postgres, so nothing depends on Redis delivery.
Deleted adapters are forgotten and refused. Each adapter keeps its tenant: `for_tenant` answers another tenant's
adapter exactly as an unknown one (404 model_not_found), as the API does (common/services/models.py
`check_usable`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from common.errors import NotReady, model_not_found
from common.settings import Settings


@dataclass(frozen=True)
class Target:
    """What a request runs on: a base model, plus an adapter (of `tenant_id`) unless `adapter_id` is None."""

    base_model: str
    adapter_id: str | None = None
    storage_key: str | None = None
    tenant_id: str | None = None


def lookup_in_database(model_id: str) -> Target | None:
    from common.db import session_scope
    from common.models import Checkpoint, Job, Model

    with session_scope() as session:
        if model_id.startswith("ftckpt-"):
            row = session.execute(
                select(Checkpoint.storage_key, Checkpoint.tenant_id, Job.base_model)
                .join(Job, Job.id == Checkpoint.job_id).where(Checkpoint.id == model_id)).one_or_none()
            return Target(row.base_model, model_id, row.storage_key, row.tenant_id) if row else None
        model = session.scalar(select(Model).where(Model.id == model_id, Model.deleted_at.is_(None)))
        return Target(model.base_model, model.id, model.storage_key, model.tenant_id) if model else None


class Catalog:
    def __init__(self, settings: Settings, lookup=lookup_in_database) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self._lookup = lookup
        self._known: dict[str, Target] = {}
        self._lock = threading.Lock()

    def for_tenant(self, model_id: str, tenant_id: str) -> Target:
        """What `model_id` runs on, if `tenant_id` may use it: a base model, or one of its own adapters or
        checkpoints. Blocking (may query Postgres): call it from a worker thread."""
        if model_id in self.settings.base_models:
            return Target(model_id)
        target = self._find(model_id)
        if target is None or target.tenant_id != tenant_id:
            raise model_not_found(model_id)
        return self._servable(target)

    def resolve(self, model_id: str) -> Target:
        """What `model_id` runs on, whoever owns it: for what serve does on its own (reloading an adapter a request
        was already admitted for); a request goes through `for_tenant`. Blocking, like it."""
        if model_id in self.settings.base_models:
            return Target(model_id)
        target = self._find(model_id)
        if target is None:
            raise model_not_found(model_id)
        return self._servable(target)

    def _find(self, model_id: str) -> Target | None:
        with self._lock:
            target = self._known.get(model_id)
        if target is None:
            try:
                target = self._lookup(model_id)
            except SQLAlchemyError as exc:
                raise NotReady(f"could not look {model_id!r} up in Postgres: {type(exc).__name__}; retry shortly",
                               param="model", code="database_unavailable") from exc
            if target is None:
                return None
            with self._lock:
                self._known[model_id] = target
        return target

    def _servable(self, target: Target) -> Target:
        model_id = target.adapter_id
        assert model_id is not None
        if target.base_model not in self.settings.base_models:
            raise model_not_found(model_id, f"It was trained on base model {target.base_model!r}, which this server "
                                  "does not have registered (TUNEQUEUE_BASE_MODELS).")
        return target

    def published(self, model_id: str, base_model: str, storage_key: str, tenant_id: str) -> Target:
        target = Target(base_model, model_id, storage_key, tenant_id)
        with self._lock:
            self._known[model_id] = target
        return target

    def deleted(self, model_id: str) -> None:
        with self._lock:
            self._known.pop(model_id, None)
