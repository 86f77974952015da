"""Thin tasks: load by id, hand to a plain function."""

from common.queue import RUN_JOB_TASK, VALIDATE_JOB_TASK
from worker.celery_app import app
from worker.runner import run_job
from worker.validate import validate_job


@app.task(name=RUN_JOB_TASK)
def run(job_id: str) -> str:
    return run_job(job_id)


@app.task(name=VALIDATE_JOB_TASK)
def validate(job_id: str) -> str:
    return validate_job(job_id)
