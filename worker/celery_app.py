"""`celery -A worker.celery_app worker --concurrency 1` — one worker process per GPU.

The task runs in the worker's main process (solo pool): the training itself is a fresh child interpreter
(subprocess), so nothing forks after CUDA, and the task can hear the worker's own shutdown signal — on SIGTERM
the child checkpoints and the job is handed back to the queue instead of waiting for its lease to expire.
Every worker also runs the reaper/reconciler loop (idempotent; an advisory lock serialises passes).
Its files are its own: a 077 umask (a job's work directory holds the tenant's training data; worker/workdirs.py)."""

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
def _start_maintenance(**_: Any) -> None:
    from worker.maintenance import MaintenanceLoop

    loop = MaintenanceLoop()
    loop.start()
    _maintenance.append(loop)


@worker_shutting_down.connect
def _hand_back_running_job(**_: Any) -> None:
    from worker.runner import SHUTDOWN

    SHUTDOWN.set()
    for loop in _maintenance:
        loop.stop()
