"""Lay out a job's working folder for its training child: job.json, the training data normalised for its stage,
and — when there is one — the checkpoint to resume from and the adapter to start from. Everything the child
needs is in that folder or named by job.json (the base model: a local folder, an s3:// one fetched into this
host's model cache, or a hub id), so the child needs no database, broker or artifact store."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from common import state
from common.artifacts import ArtifactStore
from common.datasets.convert import iter_stage_rows
from common.db import session_scope
from common.errors import JobFailure, NotReady
from common.model_cache import get_model_cache
from common.models import File, Job
from common.registry import is_s3, local_path
from common.schemas.job_spec import training_spec
from common.services.models import own_adapter, own_checkpoint
from common.settings import Settings
from worker.checkpoints import fetch_checkpoint, newest_checkpoint
from worker.workdirs import make_attempt_dir, private_file

log = logging.getLogger("tunequeue.prepare")


class JobSetupError(JobFailure):
    """The job's folder cannot be laid out (its files, base model, checkpoint or starting model are gone): the
    attempt fails with this error and no child starts."""


@dataclass
class Prepared:
    job_dir: Path
    resumed_from_step: int | None


def _write_rows(store: ArtifactStore, row: File, stage: str, dest: Path) -> int:
    """The stored file, fetched into the attempt's own folder (no shared folder assumed), converted for `stage`."""
    count = 0
    with store.local_copy(row.storage_key, dest.parent) as source, private_file(dest) as out:
        for item in iter_stage_rows(source, row.format or "chat", stage):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count


@contextmanager
def _keeping_the_lease(settings: Settings, job: Job, attempt: int) -> Iterator[None]:
    """Heartbeats while the block runs (before the child starts, nothing else extends the job's lease)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(settings.heartbeat_seconds):
            try:
                with session_scope() as session:
                    state.heartbeat(session, job.id, attempt, lease_seconds=settings.lease_seconds)
            except Exception as exc:  # as _supervise: a Postgres blip costs one beat
                log.warning("heartbeat for %s while fetching its base model failed: %s", job.id, exc)

    thread = threading.Thread(target=beat, name=f"lease-{job.id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _base_model(settings: Settings, job: Job, attempt: int, job_dir: Path) -> dict[str, Any]:
    """The base model's registry entry for job.json, its path a local folder (or a hub id): an s3:// model is
    fetched into this host's model cache and stays there, in use, while `job_dir` exists."""
    entry = settings.base_models.get(job.base_model)
    if entry is None:
        raise JobSetupError("base_model_unavailable",
                            f"base model {job.base_model!r} is no longer registered on this worker "
                            f"(TUNEQUEUE_BASE_MODELS has: {', '.join(sorted(settings.base_models))})", "base_model")
    if is_s3(entry):
        try:
            with _keeping_the_lease(settings, job, attempt):  # a large model may take longer than the lease
                cached = get_model_cache(settings).hold(entry.path, job_dir, name=job.base_model)
        except NotReady as exc:
            raise JobSetupError("base_model_unavailable", exc.message, "base_model") from exc
        return {"id": job.base_model, "path": str(cached.path), "revision": None,
                "trust_remote_code": entry.trust_remote_code, "template": entry.template}
    path = local_path(entry)
    if path is not None and not (path / "config.json").is_file():
        raise JobSetupError("base_model_unavailable",
                            f"base model {job.base_model!r} points at {path}, which holds no config.json on this "
                            "worker; build it (`make up` builds the demo models: `tunequeue dev setup`) or fix "
                            "TUNEQUEUE_BASE_MODELS",
                            "base_model")
    return {"id": job.base_model, "path": str(path) if path else entry.path, "revision": entry.revision,
            "trust_remote_code": entry.trust_remote_code, "template": entry.template}


def _resume_point(session: Session, store: ArtifactStore, job: Job, dest: Path) -> tuple[Path | None, int | None]:
    """The newest checkpoint of this job; else the spec's `resume_from` checkpoint (the tenant's own)."""
    row = newest_checkpoint(session, job.id)
    if row is None and job.spec.get("resume_from"):
        found = own_checkpoint(session, job.tenant_id, job.spec["resume_from"])  # what POST /jobs checked
        if found is None:
            raise JobSetupError("invalid_request", f"checkpoint {job.spec['resume_from']} does not exist",
                                "resume_from")
        row = found[0]
    if row is None:
        return None, None
    path = fetch_checkpoint(store, row, dest)
    if path is None:
        raise JobSetupError("checkpoint_missing", f"checkpoint {row.id} (step {row.step}) is recorded but its "
                            "files are gone from the artifact store", "resume_from")
    return path, row.step


def _init_adapter(session: Session, store: ArtifactStore, job: Job, dest: Path) -> Path | None:
    model_id = job.spec.get("from_model")
    if not model_id:
        return None
    row = own_adapter(session, job.tenant_id, model_id)  # what POST /jobs checked
    if row is None:
        raise JobSetupError("invalid_request", f"model {model_id!r} does not exist or was deleted", "from_model")
    for entry in row.manifest["files"]:
        store.fetch(f"{row.storage_key}/{entry['path']}", dest / entry["path"])
    return dest


def prepare_job_dir(session: Session, store: ArtifactStore, settings: Settings, job: Job, attempt: int,
                    *, oom_retry: int = 0, overrides: dict[str, Any] | None = None) -> Prepared:
    """`oom_retry` counts the attempt's restarts after a CUDA OOM; `overrides` patch the resolved
    hyperparameters (common/schemas/job_spec.py `training_spec`) with the retry's smaller micro-batch."""
    retry = f"-oom-retry-{oom_retry}" if oom_retry else ""
    job_dir = make_attempt_dir(settings, job.id, f"attempt-{attempt}{retry}")  # 0700; removed when it ends
    base_model = _base_model(settings, job, attempt, job_dir)

    stage = job.spec.get("stage", "sft")
    train_file = session.get(File, job.training_file_id)
    if train_file is None or not store.exists(train_file.storage_key):
        raise JobSetupError("invalid_training_file", f"training file {job.training_file_id} is missing from the "
                            "artifact store", "training_file")
    if _write_rows(store, train_file, stage, job_dir / "train.jsonl") == 0:
        raise JobSetupError("invalid_training_file", "the training file has no usable rows", "training_file")
    validation_path = None
    if job.validation_file_id:
        val_file = session.get(File, job.validation_file_id)
        if val_file is not None:
            validation_path = job_dir / "validation.jsonl"
            _write_rows(store, val_file, stage, validation_path)

    resume_dir, resumed_step = _resume_point(session, store, job, job_dir / "resume")
    init_adapter = _init_adapter(session, store, job, job_dir / "init_adapter")
    config: dict[str, Any] = {
        "job_id": job.id,
        "attempt": attempt,
        "spec": training_spec(job.spec, overrides).model_dump(mode="json"),
        "base_model": base_model,
        "training_file": str(job_dir / "train.jsonl"),
        "validation_file": str(validation_path) if validation_path else None,
        "output_dir": str(job_dir / "output"),
        "resume_from_checkpoint": str(resume_dir) if resume_dir else None,
        "init_adapter_dir": str(init_adapter) if init_adapter else None,
        "fault": settings.fault_injection if oom_retry == 0 else None,  # a retry must not meet the same fake fault
        "eval_sample_max_tokens": settings.eval_sample_max_tokens,
    }
    with private_file(job_dir / "job.json") as out:
        out.write(json.dumps(config, indent=2))
    return Prepared(job_dir=job_dir, resumed_from_step=resumed_step)
