"""`validating_files → queued | failed`: check a new job's files against what the job will really do, before
any GPU is involved. Runs on the CPU validation queue (jobs.validate).

The files fit the stage; every row is tokenized with the base model's tokenizer and chat template exactly as
the trainer will (`common.datasets.tokens`); the job records token statistics (`job.spec["token_stats"]` and a
"message" event whose data holds them). A file that cannot feed the stage, a row the chat template refuses,
or a file where no row keeps a trained token fails the job with `invalid_training_file` (or
`invalid_validation_file`) and the `param`; a model that cannot be used fails it with its own code. The work
runs outside any transaction: the job row is locked only to read it and, at the end, to record the outcome
(a job cancelled meanwhile stays cancelled).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common import state
from common.artifacts import get_store
from common.datasets.convert import STAGE_FORMATS, iter_stage_records
from common.datasets.formats import STAGES
from common.datasets.tokens import Encoder, TokenStats, load_tokenizer, template_label
from common.db import session_scope
from common.errors import JobFailure, TuneQueueError
from common.models import File, Job
from common.queue import enqueue_run
from common.schemas.job_spec import training_spec
from common.settings import Settings, get_settings

log = logging.getLogger("tunequeue.check_job_files")

class JobFilesError(JobFailure):
    """The job cannot run with these files / this model: it fails with `job_error()`."""


@dataclass
class FileRef:
    param: str  # training_file | validation_file
    id: str
    path: Path  # a local copy (`_local_copies`) while the check runs
    format: str | None
    stages: list[str]
    storage_key: str | None = None


@dataclass
class Plan:
    """Everything the check needs, copied out of the database so that no transaction stays open."""

    job_id: str
    base_model: str
    stage: str
    template: str | None
    train_on_inputs: bool
    max_seq_length: int
    packing: bool
    validation_split: float | None
    files: list[FileRef]


def check_job_files(job_id: str) -> str:
    """Returns the job's status afterwards. Idempotent: a job no longer validating is left alone."""
    settings = get_settings()
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "validating_files":
            return job.status if job else "missing"
        plan = _plan(session, job)
    stats: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    try:
        with _local_copies(plan, settings):
            stats = token_stats(plan, settings)
    except JobFilesError as exc:
        error = exc.job_error()
    except Exception as exc:  # a bug must fail the job, not leave it for the reconciler to retry forever
        log.exception("checking the files of %s failed", job_id)
        error = {"code": "internal_error", "param": None,
                 "message": f"the files could not be checked ({type(exc).__name__}: {exc}); the operators have the log"}
    with session_scope() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != "validating_files":
            return job.status if job else "missing"
        if stats is not None:
            job.spec = {**job.spec, "token_stats": stats}  # a new dict: SQLAlchemy sees the change
            for i, (message, level) in enumerate(describe(stats)):
                state.add_event(session, job, message, level=level, data=None if i else {"token_stats": stats})
        if error is not None:
            state.fail_unclaimed(session, job, error)
            return "failed"
        state.mark_queued(session, job)
    enqueue_run(job_id)
    return "queued"


@contextmanager
def _local_copies(plan: Plan, settings: Settings) -> Iterator[None]:
    """The job's stored files copied into this worker's work folder for the check (no shared folder assumed);
    a file missing from the store keeps its nonexistent path, which `_check_fits` reports."""
    store = get_store()
    with ExitStack() as copies:
        for ref in plan.files:
            if ref.storage_key is not None and store.exists(ref.storage_key):
                ref.path = copies.enter_context(store.local_copy(ref.storage_key, settings.work_path / "check-files"))
        yield


def _plan(session: Session, job: Job) -> Plan:
    spec = training_spec(job.spec)
    files = []
    for param, file_id in (("training_file", job.training_file_id), ("validation_file", job.validation_file_id)):
        if file_id is None:
            continue
        row = session.get(File, file_id)
        files.append(FileRef(param, file_id, Path("/nonexistent"), row.format if row else None,
                             list(row.stages or []) if row else [], row.storage_key if row else None))
    return Plan(
        job_id=job.id, base_model=job.base_model, stage=spec.stage, template=spec.template,
        train_on_inputs=spec.train_on_inputs, max_seq_length=spec.hyperparameters.max_seq_length,
        packing=spec.hyperparameters.packing, validation_split=spec.validation_split, files=files,
    )


def token_stats(plan: Plan, settings: Settings) -> dict[str, Any]:
    """The token statistics of the job's files; JobFilesError when the job cannot run with them."""
    for ref in plan.files:
        _check_fits(ref, plan.stage)
    entry = settings.base_models.get(plan.base_model)
    if entry is None:
        raise JobFilesError("base_model_unavailable", f"base model {plan.base_model!r} is no longer registered "
                            f"(TUNEQUEUE_BASE_MODELS has: {', '.join(sorted(settings.base_models))})", "base_model")
    try:
        encoder = Encoder.for_model(load_tokenizer(plan.base_model, entry), model_id=plan.base_model,
                                    stage=plan.stage, template=plan.template, registry_template=entry.template,
                                    train_on_inputs=plan.train_on_inputs, max_seq_length=plan.max_seq_length)
    except TuneQueueError as exc:  # the model or its template cannot be used: fail with its own code
        raise JobFilesError(exc.code or "internal_error", exc.message, exc.param) from exc
    stats: dict[str, Any] = {
        "base_model": plan.base_model, "template": template_label(encoder), "stage": plan.stage,
        "train_on_inputs": plan.train_on_inputs, "packing": plan.packing,
    }
    for ref in plan.files:
        stats[ref.param] = {"id": ref.id, **_file_stats(ref, plan, encoder)}
    train = stats["training_file"]
    if plan.validation_split:
        eval_rows = math.ceil(train["rows_kept"] * plan.validation_split)
        if train["rows_kept"] - eval_rows < 1:
            raise JobFilesError("invalid_training_file", f"validation_split {plan.validation_split} of "
                                f"{train['rows_kept']} usable rows leaves none to train on; add rows or drop "
                                "validation_split", "validation_split")
        stats["validation_split"] = {"fraction": plan.validation_split, "eval_rows": eval_rows,
                                     "train_rows": train["rows_kept"] - eval_rows}
    return stats


def _check_fits(ref: FileRef, stage: str) -> None:
    code = "invalid_training_file" if ref.param == "training_file" else "invalid_validation_file"
    if ref.format is None or not ref.path.is_file():
        raise JobFilesError(code, f"{ref.param} {ref.id} is missing from the artifact store or was never "
                            "validated; upload it again and resubmit the job", ref.param)
    if stage not in ref.stages:
        raise JobFilesError(code, f"{ref.param} {ref.id} is in {ref.format} format, which feeds "
                            f"{', '.join(STAGES.get(ref.format, [])) or 'no stage'}; stage {stage} needs a "
                            f"{' or '.join(STAGE_FORMATS.get(stage, []))} file (see docs/datasets.md)", ref.param)


def _file_stats(ref: FileRef, plan: Plan, encoder: Encoder) -> dict[str, Any]:
    code = "invalid_training_file" if ref.param == "training_file" else "invalid_validation_file"
    totals = TokenStats(plan.max_seq_length)
    assert ref.format is not None
    for line, row in iter_stage_records(ref.path, ref.format, plan.stage):
        try:
            sequences = encoder.encode(row)
        except Exception as exc:  # the chat template refused the row (Jinja raise_exception, a missing key)
            raise JobFilesError(code, f"line {line} of {ref.param} {ref.id}: the chat template of base model "
                                f"{plan.base_model!r} cannot render this row ({type(exc).__name__}: {exc}); fix the "
                                "row or choose another template", ref.param) from exc
        totals.add(sequences, row.get("label") if plan.stage == "kto" else None)
    if totals.rows_kept == 0:
        raise JobFilesError(code, _nothing_to_train(ref, plan, totals), ref.param)
    return totals.to_dict()


def _nothing_to_train(ref: FileRef, plan: Plan, totals: TokenStats) -> str:
    if totals.rows == 0:
        return f"{ref.param} {ref.id} has no valid row for stage {plan.stage}; upload it again"
    what = "assistant" if plan.stage == "sft" else "completion"
    return (
        f"no row of {ref.param} {ref.id} has a trained ({what}) token within the first {plan.max_seq_length} "
        f"tokens ({totals.rows} rows read), so there is nothing to train on. Every row needs an {what} turn "
        "that is trained (weight 0 turns are not); if they have one, raise hyperparameters.max_seq_length or "
        "shorten what comes before it"
    )


def describe(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """The events that tell a user what the check found: (message, level)."""
    out: list[tuple[str, str]] = []
    for param in ("training_file", "validation_file"):
        s = stats.get(param)
        if s is None:
            continue
        name = param.replace("_", " ")
        out.append((
            f"Tokenized {name} {s['id']} with {stats['base_model']} ({stats['template'] or 'no'} template): "
            f"{s['rows']} rows, {s['total_tokens']:,} tokens, {s['trained_tokens']:,} trained; length mean "
            f"{s['mean_length']}, p95 {s['p95_length']}, max {s['max_length']} (max_seq_length "
            f"{s['max_seq_length']})", "info"))
        if s["rows_over_max_seq_length"]:
            out.append((f"{s['rows_over_max_seq_length']} of {s['rows']} rows of the {name} are longer than "
                        f"max_seq_length ({s['max_seq_length']} tokens) and will be truncated (their first "
                        f"{s['max_seq_length']} tokens are kept)", "warning"))
        if s["rows_without_trained_tokens"]:
            out.append((f"{s['rows_without_trained_tokens']} of {s['rows']} rows of the {name} have no trained "
                        f"token within max_seq_length and will be dropped", "warning"))
    split = stats.get("validation_split")
    if split:
        out.append((f"validation_split {split['fraction']}: {split['eval_rows']} rows of the training file go to "
                    f"evaluation, {split['train_rows']} to training", "info"))
    return out
