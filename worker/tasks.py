"""The Celery tasks: each hands the job id to a plain function that does the work (and that tests call
directly, without Celery)."""

from common.queue import RUN_JOB_TASK, VALIDATE_JOB_TASK
from worker.celery_app import app
from worker.check_job_files import check_job_files
from worker.runner import run_next


@app.task(name=RUN_JOB_TASK)
def run(job_id: str) -> str:
    """The message is a doorbell: the worker runs the best job it can, not necessarily this one."""
    return run_next(job_id)


@app.task(name=VALIDATE_JOB_TASK)
def check_files(job_id: str) -> str:
    return check_job_files(job_id)
