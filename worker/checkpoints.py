"""Checkpoints in the artifact store and the `checkpoints` table. The child writes one every `save_steps` and
says so; the parent's relay (`CheckpointRelay`, worker/relay.py) uploads it under an attempt-scoped key and
records its row here — only while it still owns the job. A later attempt (after a crash, a requeue, a shutdown
or an OOM retry) resumes from the newest one (worker/prepare.py fetches it)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import state
from common.artifacts import ArtifactStore
from common.ids import new_id
from common.models import Checkpoint, Job


def checkpoint_key(job: Job, attempt: int, step: int) -> str:
    return f"checkpoints/{job.tenant_id}/{job.id}/attempt-{attempt}/step-{step}"


def record_checkpoint(session: Session, job: Job, attempt: int, step: int, key: str,
                      metrics: dict[str, Any]) -> Checkpoint | None:
    """Insert the row if `attempt` still owns the running job (row lock: no reaper can requeue in between)."""
    owner = session.scalar(select(Job.id).where(Job.id == job.id, Job.attempt == attempt, Job.status == "running")
                           .with_for_update())
    if owner is None:
        return None
    row = Checkpoint(id=new_id("ftckpt"), job_id=job.id, tenant_id=job.tenant_id, step=step, metrics=metrics,
                     storage_key=key, attempt=attempt)
    session.add(row)
    loss = metrics.get("train_loss")
    state.add_event(session, job, f"Checkpoint at step {step}" + (f" (train loss {loss:.4f})" if loss else ""),
                    type="checkpoint", data={"checkpoint_id": row.id, "step": step, "metrics": metrics},
                    attempt=attempt)
    session.flush()
    return row


def newest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    return session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id)
                          .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc()).limit(1))


def fetch_checkpoint(store: ArtifactStore, row: Checkpoint, dest: Path) -> Path | None:
    if not store.list_prefix(row.storage_key):
        return None
    if dest.exists():
        shutil.rmtree(dest)
    return store.fetch_dir(row.storage_key, dest)
