"""Lay out a job's working folder for its training child: job.json and the training data normalised to chat
JSONL. Everything the child needs is in that folder, so the child needs no database or broker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from common.artifacts import LocalArtifactStore
from common.datasets import iter_chat_rows
from common.models import File, Job
from common.registry import local_path
from common.settings import Settings


class JobSetupError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


def _write_rows(store: LocalArtifactStore, row: File, dest: Path) -> int:
    count = 0
    with open(dest, "w", encoding="utf-8") as out:
        for item in iter_chat_rows(store.local_path(row.storage_key), row.format or "chat"):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count


def prepare_job_dir(session: Session, store: LocalArtifactStore, settings: Settings, job: Job,
                    attempt: int) -> Path:
    entry = settings.base_models.get(job.base_model)
    if entry is None:
        raise JobSetupError("base_model_unavailable",
                            f"base model {job.base_model!r} is no longer registered on this worker "
                            f"(TUNEQUEUE_BASE_MODELS has: {', '.join(sorted(settings.base_models))})", "base_model")
    path = local_path(entry)
    if path is not None and not (path / "config.json").is_file():
        raise JobSetupError("base_model_unavailable",
                            f"base model {job.base_model!r} points at {path}, which holds no config.json on this "
                            "worker; build it (`tunequeue dev tiny-model PATH`) or fix TUNEQUEUE_BASE_MODELS",
                            "base_model")
    job_dir = settings.work_path / job.id / f"attempt-{attempt}"
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)

    train_file = session.get(File, job.training_file_id)
    if train_file is None or not store.exists(train_file.storage_key):
        raise JobSetupError("invalid_training_file", f"training file {job.training_file_id} is missing from the "
                            "artifact store", "training_file")
    if _write_rows(store, train_file, job_dir / "train.jsonl") == 0:
        raise JobSetupError("invalid_training_file", "the training file has no usable rows", "training_file")
    validation_path = None
    if job.validation_file_id:
        val_file = session.get(File, job.validation_file_id)
        if val_file is not None:
            validation_path = job_dir / "validation.jsonl"
            _write_rows(store, val_file, validation_path)

    config: dict[str, Any] = {
        "job_id": job.id,
        "attempt": attempt,
        "spec": {k: v for k, v in job.spec.items() if k != "resolved_hyperparameters"},
        "hyperparameters": job.spec["resolved_hyperparameters"],
        "base_model": {"id": job.base_model, "path": str(path) if path else entry.path, "revision": entry.revision,
                       "trust_remote_code": entry.trust_remote_code, "template": entry.template},
        "training_file": str(job_dir / "train.jsonl"),
        "validation_file": str(validation_path) if validation_path else None,
        "output_dir": str(job_dir / "output"),
    }
    (job_dir / "job.json").write_text(json.dumps(config, indent=2))
    return job_dir
