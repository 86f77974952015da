"""Publish a trained adapter: copy its files to the artifact store under an attempt-scoped key, write a manifest
with the sha256 of each file, and record the `models` row in the same transaction as the fenced `succeeded`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from common import state
from common.artifacts import ArtifactStore
from common.errors import JobFailure
from common.model_names import fine_tuned_model_name
from common.models import Job, Model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TENSORBOARD_DIR = "tensorboard"


class PublishError(JobFailure):
    """The child finished but left nothing publishable: the job fails with code publish_failed."""

    def __init__(self, message: str) -> None:
        super().__init__("publish_failed", message)


def model_name(job: Job) -> str:
    return fine_tuned_model_name(job.base_model, job.spec.get("suffix"), job.id)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def tensorboard_files(output_dir: Path) -> list[tuple[str, Path]]:
    """A `tensorboard` integration's event files (worker/train/trackers.py writes them to output_dir/tensorboard):
    published with the model as tensorboard/…, so they are in its manifest and in GET /models/{id}/content."""
    folder = output_dir / TENSORBOARD_DIR
    if not folder.is_dir():
        return []
    return [(f"{TENSORBOARD_DIR}/{p.relative_to(folder)}", p) for p in sorted(folder.rglob("*")) if p.is_file()]


def upload_adapter(store: ArtifactStore, job: Job, attempt: int, adapter_dir: Path,
                   merged_dir: Path | None = None) -> tuple[str, dict[str, Any]]:
    if (adapter_dir / "adapter_config.json").is_file():
        names, fmt = list(ADAPTER_FILES), "peft-lora"
        missing = [name for name in names if not (adapter_dir / name).is_file()]
        if missing:
            raise PublishError(f"the training process produced no {', '.join(missing)} in {adapter_dir}")
    elif (adapter_dir / "config.json").is_file():
        # full / freeze: the whole model (weights, config, tokenizer with its chat template) is what is published
        names = sorted(str(p.relative_to(adapter_dir)) for p in adapter_dir.rglob("*") if p.is_file())
        fmt = "full"
    else:
        raise PublishError(f"the training process produced neither an adapter nor a model in {adapter_dir}")
    key = f"models/{job.tenant_id}/{job.id}/attempt-{attempt}"
    files = []
    for name, path in [(name, adapter_dir / name) for name in names] + tensorboard_files(adapter_dir.parent):
        store.put_file(f"{key}/{name}", path)
        files.append({"path": name, "bytes": path.stat().st_size, "sha256": sha256_of(path)})
    manifest: dict[str, Any] = {"model": model_name(job), "base_model": job.base_model, "job_id": job.id,
                                "attempt": attempt, "format": fmt, "files": files}
    if merged_dir is not None and merged_dir.is_dir():
        merged = store.put_dir(f"{key}/merged", merged_dir)
        manifest["merged"] = [{**f, "sha256": sha256_of(merged_dir / str(f["path"]))} for f in merged]
    return key, manifest


def record_model(session: Session, job: Job, attempt: int, key: str, manifest: dict[str, Any]) -> Model | None:
    """Insert the models row and mark the job succeeded, fenced by attempt. None: we no longer own the job."""
    name = model_name(job)
    if not state.finish(session, job.id, attempt, "succeeded", fine_tuned_model=name):
        return None
    row = Model(id=name, tenant_id=job.tenant_id, job_id=job.id, base_model=job.base_model, storage_key=key,
                manifest=manifest, bytes=sum(f["bytes"] for f in manifest["files"]))
    session.add(row)
    session.flush()
    return row


def record_peak(session: Session, job_id: str, peak: dict[str, Any] | None) -> None:
    """Beside the job's estimate, what it really held: `measured_peak_bytes` (on a GPU torch's max allocated, on a
    CPU the process's RSS peak, comparable with the estimate's total) and the measurements it came from."""
    if not peak:
        return
    job = session.get_one(Job, job_id)
    measured = peak.get("cuda_max_allocated_bytes") or peak.get("rss_peak_bytes")
    job.estimate = {**(job.estimate or {}), "measured_peak_bytes": measured, "measured": peak}
