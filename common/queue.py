"""The Celery app as a client and as a worker share one construction. The broker is a doorbell: a message
carries only a job id; Postgres holds the job."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from common.settings import get_settings

RUN_JOB_TASK = "jobs.run"
VALIDATE_JOB_TASK = "jobs.validate"


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("tunequeue", broker=settings.redis_url, backend=None)
    app.conf.update(
        task_default_queue=settings.celery_queue,
        task_routes={RUN_JOB_TASK: {"queue": settings.celery_queue},
                     VALIDATE_JOB_TASK: {"queue": settings.validate_queue}},
        task_acks_late=True,  # a job message is acked after the task returns
        task_reject_on_worker_lost=True,  # a worker that dies puts the message back
        worker_prefetch_multiplier=1,  # one job at a time per GPU worker
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},  # the claim refuses a second copy anyway
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def client() -> Celery:
    return make_celery()


def enqueue_job(job_id: str) -> None:
    """A new job (`validating_files`): its files are checked against the base model's tokenizer on the CPU
    validation queue, which then hands it to `enqueue_run`. Call after the creating transaction committed."""
    client().send_task(VALIDATE_JOB_TASK, args=[job_id], queue=get_settings().validate_queue)


def enqueue_run(job_id: str) -> None:
    """A `queued` job: ring the GPU workers. Call after the transaction that made it queued committed."""
    client().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().celery_queue)
