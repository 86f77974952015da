"""Job submission, listing, cancel — the domain rules both the native and OpenAI surfaces use."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, bindparam, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from common import state
from common.errors import InvalidRequest, model_not_found
from common.ids import new_id
from common.models import File, Job
from common.models.base import DEFAULT_USER
from common.queue import enqueue_job
from common.registry import resolve
from common.schemas.job_spec import JobSpec, stored_spec
from common.schemas.strings import MAX_IDEMPOTENCY_KEY_LENGTH, check_string
from common.services.models import own_adapter, own_checkpoint
from common.services.queries import get_owned, not_found, paginate
from common.services.quotas import check_can_queue
from common.settings import Settings
from common.text.templates import check_template_name

log = logging.getLogger("tunequeue.api")


def _spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _check_file(session: Session, tenant_id: str, file_id: str, *, param: str, stage: str) -> File:
    row = get_owned(session, File, file_id, tenant_id, what="file", param=param)
    if row.status != "processed":
        first = "; ".join(e["message"] for e in (row.errors or [])[:3]) or f"its status is {row.status}"
        raise InvalidRequest(
            f"{param} {file_id} did not pass validation: {first}. Fix the file and upload it again.",
            param=param, code="invalid_training_file" if param == "training_file" else "invalid_validation_file",
        )
    if stage not in (row.stages or []):
        raise InvalidRequest(
            f"{param} {file_id} is in {row.format} format, which feeds {', '.join(row.stages) or 'no stage'}; "
            f"stage {stage!r} needs another format (see docs/datasets.md)",
            param=param, code="invalid_training_file",
        )
    return row


def _check_starting_point(session: Session, tenant_id: str, spec: JobSpec) -> None:
    """`template`, `from_model` and `resume_from` name things the worker looks up only when the job runs: check
    them now, exactly as the worker will (worker/prepare.py), so that a job never fails on them after queueing.
    Another tenant's model or checkpoint is answered exactly like a missing one."""
    check_template_name(spec.template)
    if spec.from_model:
        adapter = own_adapter(session, tenant_id, spec.from_model)
        if adapter is None:
            missing = model_not_found(spec.from_model)
            missing.param = "from_model"
            raise missing
        _same_base(spec, adapter.base_model, what=f"model {adapter.id!r}", param="from_model")
    if spec.resume_from:
        found = own_checkpoint(session, tenant_id, spec.resume_from)
        if found is None:
            raise not_found("checkpoint", spec.resume_from, "resume_from")
        _same_base(spec, found[1], what=f"checkpoint {found[0].id!r}", param="resume_from")


def _same_base(spec: JobSpec, base_model: str, *, what: str, param: str) -> None:
    if base_model != spec.base_model:
        raise InvalidRequest(f"{param}: {what} was trained on base model {base_model!r}, and this job trains "
                             f"{spec.base_model!r}; set base_model to {base_model!r}", param=param,
                             code="base_model_mismatch")


def submit(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec,
           idempotency_key: str | None = None, user: str = DEFAULT_USER) -> Job:
    """POST /jobs and POST /v1/fine_tuning/jobs: create the job, commit it, then enqueue it for validation
    (only what is durable is enqueued). A replayed Idempotency-Key returns the job it made and enqueues nothing."""
    job, created = create_job(session, settings, tenant_id=tenant_id, spec=spec, idempotency_key=idempotency_key,
                              user=user)
    session.commit()
    if created:
        try:
            enqueue_job(job.id)
        except Exception:
            # The job is in Postgres; the reconciler (worker/maintenance.py) publishes what the broker never got.
            log.exception("could not enqueue %s; it stays validating_files for the reconciler", job.id)
    return job


def create_job(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec,
               idempotency_key: str | None = None, user: str = DEFAULT_USER) -> tuple[Job, bool]:
    """Validate against what the server has, insert `validating_files`. Returns (job, created). Nothing is
    committed or enqueued: `submit` does both, in that order."""
    check_string(idempotency_key, param="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    spec_hash = _spec_hash(spec)
    if idempotency_key:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key, spec_hash)
        if existing is not None:
            return existing, False
    resolve(settings, spec.base_model)
    train = _check_file(session, tenant_id, spec.training_file, param="training_file", stage=spec.stage)
    if spec.validation_file:
        _check_file(session, tenant_id, spec.validation_file, param="validation_file", stage=spec.stage)
    _check_starting_point(session, tenant_id, spec)
    check_can_queue(session, tenant_id)
    stored = stored_spec(spec, train.row_count)
    job = Job(
        id=new_id("ftjob"), tenant_id=tenant_id, base_model=spec.base_model, training_file_id=spec.training_file,
        validation_file_id=spec.validation_file, spec=stored, status="validating_files", attempt=0,
        idempotency_key=idempotency_key, idempotency_hash=spec_hash if idempotency_key else None, user_name=user,
    )
    session.add(job)
    if idempotency_key:  # without one, the insert cannot collide (NULL keys are distinct): no SAVEPOINT needed
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:
            # Another request with the same Idempotency-Key won the race.
            existing = _by_idempotency_key(session, tenant_id, idempotency_key, spec_hash)
            if existing is None:
                raise
            return existing, False
    state.add_first_events(session, job, [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {train.id} ({train.row_count} rows, {train.format})"])
    return job, True


def _by_idempotency_key(session: Session, tenant_id: str, key: str, spec_hash: str) -> Job | None:
    existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if existing is not None and existing.idempotency_hash != spec_hash:
        raise InvalidRequest(
            "this Idempotency-Key was already used with a different request body; use a new key for a new job",
            param="Idempotency-Key", code="idempotency_key_reused",
        )
    return existing


def jobs_statement(tenant_id: str, status: str | None, user: str | None = None) -> Select[Any]:
    """The tenant's jobs, of one status when `status` is given (checked), of one user's keys when `user` is."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if user is not None:
        stmt = stmt.where(Job.user_name == user)
    if status is not None:
        if status not in state.STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(state.STATUSES)}; got {status!r}",
                                 param="status")
        stmt = stmt.where(Job.status == status)
    return stmt


def list_jobs(session: Session, tenant_id: str, *, after: str | None, limit: int,
              status: str | None = None) -> tuple[list[Job], bool]:
    return paginate(session, jobs_statement(tenant_id, status), Job, after=after, limit=limit, tenant_id=tenant_id)


def cancel_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get_owned(session, Job, job_id, tenant_id, what="job", param="job_id", for_update=True)
    state.request_cancel(session, job)
    session.flush()
    return job


def queue_position(session: Session, job: Job) -> int | None:
    if job.status != "queued":
        return None
    ahead: Any = session.scalar(
        select(func.count()).select_from(Job).where(Job.status == "queued", Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


@lru_cache(maxsize=1)
def job_with_queue_position_statement() -> Select[Any]:
    """The tenant's job (parameters `job_id`, `tenant_id`) and, when it is queued, its place in the queue (1 =
    next): `queue_position` in the same round trip. Built once: an alias costs about a millisecond to build, and
    one statement object keeps SQLAlchemy's cache key memoized (`.params()` would copy it on every call)."""
    earlier = aliased(Job)
    ahead = (select(func.count()).select_from(earlier)
             .where(earlier.status == "queued", earlier.created_at < Job.created_at).scalar_subquery())
    return (select(Job, case((Job.status == "queued", ahead + 1), else_=None))
            .where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id")))
