"""The test run's environment: a temp root, a per-run database name on the real Postgres, an isolated Celery
queue name on the real Redis, and the TUNEQUEUE_* variables that point every process at them.

Under pytest-xdist (`make test` runs two processes) each process is a run of its own: its own database, queues and
temp root, and its own Redis database (1 + the worker's number), so that worker registrations, rate-limit counters
and the models channel of one never reach the other.

The variables are set when this module is imported: tests/conftest.py imports it first, before anything reads
Settings; subprocesses (uvicorn, celery, training children) inherit them."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

ROOT = Path(tempfile.mkdtemp(prefix="tunequeue-test-"))
RUN_ID = secrets.token_hex(4)
PG_ADMIN_URL = os.environ.get("TUNEQUEUE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DATABASE_URL = str(make_url(PG_ADMIN_URL).set(database=f"tunequeue_test_{RUN_ID}").render_as_string(False))


def _redis_url() -> str:
    url = os.environ.get("TUNEQUEUE_TEST_REDIS", "redis://127.0.0.1:6379/0")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, …
    if not worker.startswith("gw"):
        return url
    return url.rsplit("/", 1)[0] + f"/{1 + int(worker[2:]) % 15}"


REDIS_URL = _redis_url()
TINY_MODEL = ROOT / "models" / "tiny-llama"

os.environ.update({
    "TUNEQUEUE_ENVIRONMENT": "test",
    "TUNEQUEUE_DATABASE_URL": DATABASE_URL,
    "TUNEQUEUE_REDIS_URL": REDIS_URL,
    "TUNEQUEUE_ARTIFACTS": str(ROOT / "artifacts"),
    "TUNEQUEUE_WORK_DIR": str(ROOT / "work"),
    "TUNEQUEUE_BASE_MODELS": f'{{"tiny-llama": {{"path": "{TINY_MODEL}", "template": "chatml"}}}}',
    "TUNEQUEUE_CELERY_QUEUE": f"tunequeue.test.{RUN_ID}",
    "TUNEQUEUE_VALIDATE_QUEUE": f"tunequeue.test-validate.{RUN_ID}",
    "TUNEQUEUE_HEARTBEAT_SECONDS": "1",
    "TUNEQUEUE_CANCEL_GRACE_SECONDS": "5",
    "TUNEQUEUE_METRICS_EVENT_EVERY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
})


def admin_engine() -> Engine:
    """An AUTOCOMMIT engine on the admin database, for CREATE/DROP DATABASE."""
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
