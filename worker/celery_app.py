"""`celery -A worker.celery_app worker --concurrency 1` — one worker process per GPU.

The task runs in the worker's main process (solo pool): the training itself is a fresh child interpreter
(subprocess), so nothing forks after CUDA, and the task can hear the worker's own shutdown signal — on SIGTERM
the child checkpoints and the job is handed back to the queue instead of waiting for its lease to expire.
Every worker also runs the reaper/reconciler loop (idempotent; an advisory lock serialises passes) and the webhook
sender (worker/webhook_delivery.py; rows claimed with SKIP LOCKED).
Its files are its own: a 077 umask (a job's work directory holds the tenant's training data; worker/workdirs.py)."""

import logging
import os
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from common.queue import make_celery
from worker.workdirs import UMASK

os.umask(UMASK)
app = make_celery()
app.conf.update(
    include=["worker.tasks"],
    worker_pool="solo",
    worker_concurrency=1,
)

_maintenance: list[Any] = []


@worker_ready.connect
def _start_maintenance(sender: Any = None, **_: Any) -> None:
    from worker.maintenance import MaintenanceLoop
    from worker.webhook_delivery import WebhookSender

    loop = MaintenanceLoop()
    loop.start()
    _maintenance.append(loop)
    webhooks = WebhookSender()  # the webhook outbox's sender (docs/webhooks.md)
    webhooks.start()
    _maintenance.append(webhooks)
    _register_devices(sender)


def _register_devices(consumer: Any) -> None:
    """A worker that consumes the training queue records its devices at once (placement by fit,
    worker/capabilities.py); a validation-only worker trains nothing and records none."""
    from common.settings import get_settings
    from worker.capabilities import register_local_devices

    settings = get_settings()
    try:
        queues = {queue.name for queue in consumer.task_consumer.queues}
        if settings.celery_queue in queues:
            register_local_devices(settings)
    except Exception:  # Postgres away at start-up: the first claim registers them
        logging.getLogger("tunequeue.worker").exception("could not register this worker's devices")


@worker_shutting_down.connect
def _hand_back_running_job(**_: Any) -> None:
    from worker.runner import SHUTDOWN

    SHUTDOWN.set()
    for loop in _maintenance:
        loop.stop()
