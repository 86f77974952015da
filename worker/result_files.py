"""A succeeded job's result file, as OpenAI's fine-tuning API gives one: its step metrics as CSV
(`step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`), a file of the job's tenant and user with
purpose `fine-tune-results`, named in the job's `result_files` and read with `GET /files/{id}/content`.

The rows are the job's metrics series (common/services/events.py `metrics_series`: one point per recorded step, the
newest attempt's after a requeue). `train_accuracy` is empty: the worker does not report a per-step training token
accuracy (checkpoints carry one). A value not measured at a step is empty, as in OpenAI's file."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from common.artifacts import ArtifactStore
from common.models import File, Job
from common.services.events import MAX_METRICS_LIMIT, metrics_series
from common.services.files import RESULTS_PURPOSE, storage_key

FILENAME = "step_metrics.csv"
COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
_SOURCES = {"train_loss": "loss", "train_accuracy": "train_mean_token_accuracy"}


def metrics_csv(points: Iterable[dict[str, Any]]) -> bytes:
    """The CSV of metric points (dicts as `metrics_series` returns them), in their order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for point in points:
        values = [point.get(_SOURCES.get(column, column)) for column in COLUMNS]
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in values])
    return out.getvalue().encode()


def all_points(session: Session, job_id: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page, more = metrics_series(session, job_id, after_step=after, limit=MAX_METRICS_LIMIT)
        points += page
        if not more or not page:
            return points
        after = int(page[-1]["step"])


def record_result_file(session: Session, store: ArtifactStore, job: Job, file_id: str) -> File:
    """Write the job's step metrics under `file_id` and name it in the job's `result_files`, in the caller's
    transaction (the job has just succeeded in it). The bytes go to a key of `file_id`: a retried transaction
    writes the same key again, and leaves nothing behind."""
    body = metrics_csv(all_points(session, job.id))
    key = storage_key(job.tenant_id, file_id, FILENAME)
    with store.writer(key) as out:
        out.write(body)
    row = File(id=file_id, tenant_id=job.tenant_id, user_name=job.user_name, filename=FILENAME,
               purpose=RESULTS_PURPOSE, bytes=len(body), sha256=hashlib.sha256(body).hexdigest(), storage_key=key,
               status="processed", format=None, stages=[], row_count=0, errors=[])
    session.add(row)
    session.execute(update(Job).where(Job.id == job.id).values(result_files=[file_id]))
    return row
