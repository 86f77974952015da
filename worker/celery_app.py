"""`celery -A worker.celery_app worker --concurrency 1` — one worker per GPU."""

from common.queue import make_celery

app = make_celery()
app.conf.update(
    include=["worker.tasks"],
    worker_max_tasks_per_child=1,  # a fresh pool process per job
)
