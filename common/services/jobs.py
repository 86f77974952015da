"""Job submission, listing, cancel — the domain rules both the native and OpenAI surfaces use."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, bindparam, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from common import state
from common.errors import InvalidRequest, PermissionDenied, model_not_found
from common.ids import new_id
from common.models import File, Job
from common.models.base import DEFAULT_USER
from common.queue import enqueue_job, enqueue_run
from common.registry import resolve
from common.scheduling import placement
from common.schemas.job_spec import (
    EVAL_SAMPLES_PARAM,
    PRIORITIES,
    JobSpec,
    eval_samples_problem,
    stored_spec,
    training_spec,
)
from common.schemas.strings import MAX_IDEMPOTENCY_KEY_LENGTH, check_string
from common.services.files import RESULTS_PURPOSE
from common.services.models import own_adapter, own_checkpoint
from common.services.queries import get_owned, not_found, paginate
from common.services.quotas import check_can_queue
from common.services.secrets import check_job_secrets
from common.settings import Settings
from common.text.templates import check_template_name
from common.webhooks.allow import DestinationRefused, destination, parse_allow, parse_url

log = logging.getLogger("tunequeue.api")


def _spec_hash(spec: JobSpec) -> str:
    """The hash an Idempotency-Key is held to: of the spec without the fields left at their defaults, so that a
    field added to the spec later (with its default) does not refuse a retry that spans the upgrade, and a default
    written out is the same job as one left out."""
    body = spec.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_file(session: Session, tenant_id: str, file_id: str, *, param: str, stage: str) -> File:
    # shared lock: jobs on one file are created side by side, but a DELETE of the file waits for them (and then
    # finds them) instead of removing the bytes under a job that is being created
    row = get_owned(session, File, file_id, tenant_id, what="file", param=param, for_share=True)
    if row.purpose == RESULTS_PURPOSE:
        raise InvalidRequest(f"{param} {file_id} is a job's results (its step metrics), not a dataset: upload a "
                             "dataset and name its id", param=param,
                             code="invalid_training_file" if param == "training_file" else "invalid_validation_file")
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


def _check_eval_samples(spec: JobSpec) -> None:
    """hyperparameters.eval_samples needs validation prompts, evaluations and a stage that writes answers."""
    problem = eval_samples_problem(spec)
    if problem is not None:
        raise InvalidRequest(problem, param=EVAL_SAMPLES_PARAM, code="invalid_eval_samples")


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


def _check_integrations(session: Session, settings: Settings, tenant_id: str, spec: JobSpec) -> None:
    """The trackers' secrets are stored (W&B's key), and an MLflow server is a destination the operator lets
    workers reach: the webhook rules (common/webhooks/allow.py, TUNEQUEUE_WEBHOOK_ALLOW), checked once here."""
    check_job_secrets(session, tenant_id, spec.integrations)
    allow = parse_allow(settings.webhook_allow)
    for index, item in enumerate(spec.integrations or []):
        if item.mlflow is None:
            continue
        param = f"integrations[{index}].mlflow.tracking_uri"
        try:
            destination(parse_url(item.mlflow.tracking_uri), allow)
        except DestinationRefused as exc:
            message = str(exc).replace("webhooks may not go", "trackers may not be reached at")
            raise InvalidRequest(f"`{param}`: {message}", param=param, code=exc.code) from None


def _same_base(spec: JobSpec, base_model: str, *, what: str, param: str) -> None:
    if base_model != spec.base_model:
        raise InvalidRequest(f"{param}: {what} was trained on base model {base_model!r}, and this job trains "
                             f"{spec.base_model!r}; set base_model to {base_model!r}", param=param,
                             code="base_model_mismatch")


def submit(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec,
           idempotency_key: str | None = None, user: str = DEFAULT_USER, is_admin: bool = False) -> Job:
    """POST /jobs and POST /v1/fine_tuning/jobs: create the job, commit it, then enqueue it for validation
    (only what is durable is enqueued). A replayed Idempotency-Key returns the job it made and enqueues nothing."""
    job, created = create_job(session, settings, tenant_id=tenant_id, spec=spec, idempotency_key=idempotency_key,
                              user=user, is_admin=is_admin)
    session.commit()
    if created:
        _publish(enqueue_job, job.id, "it stays validating_files for the reconciler")
    return job


def _publish(enqueue: Callable[[str], None], job_id: str, otherwise: str) -> None:
    """Tell the broker about a job whose change has committed; should Redis fail, the job is in Postgres and the
    reconciler (worker/maintenance.py) publishes what the broker never got."""
    try:
        enqueue(job_id)
    except Exception:
        log.exception("could not enqueue %s; %s", job_id, otherwise)


def create_job(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec,
               idempotency_key: str | None = None, user: str = DEFAULT_USER,
               is_admin: bool = False) -> tuple[Job, bool]:
    """Validate against what the server has, insert `validating_files`. Returns (job, created). Nothing is
    committed or enqueued: `submit` does both, in that order."""
    if spec.priority == "high" and not is_admin:
        raise PermissionDenied("priority high takes a tenant-admin key (role admin); send priority normal or low, "
                               "or ask an admin of your organization", param="priority")
    check_string(idempotency_key, param="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    _check_eval_samples(spec)
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
    _check_integrations(session, settings, tenant_id, spec)
    check_can_queue(session, tenant_id)
    stored = stored_spec(spec, train.row_count)
    needs = placement.needs_of(settings, training_spec(stored), auto_batch=placement.batch_size_is_auto(stored))
    waiting_for_a_worker = placement.place(session, settings.celery_queue, needs, devices=spec.resources.devices)
    job = Job(
        id=new_id("ftjob"), tenant_id=tenant_id, base_model=spec.base_model, training_file_id=spec.training_file,
        validation_file_id=spec.validation_file, spec=stored, status="validating_files", attempt=0,
        idempotency_key=idempotency_key, idempotency_hash=spec_hash if idempotency_key else None, user_name=user,
        priority=PRIORITIES[spec.priority], queue=settings.celery_queue, needs_devices=spec.resources.devices,
        **(needs.columns() if needs else {}),
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
        f"Validating training file: {train.id} ({train.row_count} rows, {train.format})"],
        warnings=[waiting_for_a_worker] if waiting_for_a_worker else [])
    return job, True


def _by_idempotency_key(session: Session, tenant_id: str, key: str, spec_hash: str) -> Job | None:
    existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if existing is not None and existing.idempotency_hash != spec_hash:
        raise InvalidRequest(
            "this Idempotency-Key was already used with a different request body; use a new key for a new job",
            param="Idempotency-Key", code="idempotency_key_reused",
        )
    return existing


def jobs_statement(tenant_id: str, status: str | None, user: str | None = None,
                   metadata: dict[str, str] | None = None) -> Select[Any]:
    """The tenant's jobs, of one status when `status` is given (checked), of one user's keys when `user` is, whose
    metadata holds every pair of `metadata` when it is given (JSONB containment)."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    if metadata:
        stmt = stmt.where(Job.spec.contains({"metadata": metadata}))
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


def pause_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """POST /jobs/{id}/pause (OpenAI's fine_tuning.jobs.pause): a queued job pauses now, a running one checkpoints
    and holds (common/state.py)."""
    job = get_owned(session, Job, job_id, tenant_id, what="job", param="job_id", for_update=True)
    state.request_pause(session, job)
    session.flush()
    return job


def resume_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """POST /jobs/{id}/resume: a paused job goes back to the queue, committed, then the workers are rung (the
    reconciler rings them should Redis miss it); it continues from its newest checkpoint."""
    job = get_owned(session, Job, job_id, tenant_id, what="job", param="job_id", for_update=True)
    queued = state.request_resume(session, job)
    session.commit()
    if queued:
        _publish(enqueue_run, job.id, "the reconciler rings the workers for it")
    return job


@lru_cache(maxsize=1)
def job_with_queue_position_statement() -> Select[Any]:
    """The tenant's job (parameters `job_id`, `tenant_id`) and, when it is queued, its place in the queue (1 =
    next) under the real policy, as the maintenance pass last projected it (common/scheduling/forecast.py), or
    before any projection its place by age among its pool's queued jobs: `queue_position` in the same round trip.
    Built once: an alias costs about a millisecond to build, and
    one statement object keeps SQLAlchemy's cache key memoized (`.params()` would copy it on every call)."""
    earlier = aliased(Job)
    ahead = (select(func.count()).select_from(earlier)
             .where(earlier.queue == Job.queue, earlier.status == "queued", earlier.created_at < Job.created_at)
             .scalar_subquery())
    return (select(Job, case((Job.status == "queued", func.coalesce(Job.queue_position, ahead + 1)), else_=None))
            .where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id")))


def estimate_job(session: Session, settings: Settings, *, tenant_id: str, spec: JobSpec) -> dict[str, Any]:
    """POST /jobs/estimate: what `create_job` would estimate and decide for `spec`, per registered device of the
    pool, without creating a job."""
    _check_eval_samples(spec)
    resolve(settings, spec.base_model)
    train = _check_file(session, tenant_id, spec.training_file, param="training_file", stage=spec.stage)
    stored = stored_spec(spec, train.row_count)
    resolved, auto = training_spec(stored), placement.batch_size_is_auto(stored)
    needs = placement.needs_of(settings, resolved, auto_batch=auto)
    devices = placement.pool_devices(session, settings.celery_queue)
    workers = [{"id": d.id, "kind": d.kind, "device_name": d.device_name, "memory_bytes": d.memory_bytes,
                "fits": placement.can_run(placement.Fit.of(d), needs) if needs else None}
               for d in devices]
    return {"object": "job.estimate", "base_model": spec.base_model,
            "estimate": needs.estimate if needs else None,
            "needs": {"bitsandbytes": needs.bitsandbytes, "flash_attention": needs.flash_attention} if needs else None,
            "workers": workers,
            "runnable": any(w["fits"] for w in workers) if devices and needs else None}
