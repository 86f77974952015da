"""Test environment: a freshly migrated database per run on the real Postgres, the real Redis (an isolated Celery
queue name per run), artifact and work folders in a temp dir, and the tiny Llama built once per session.

The TUNEQUEUE_* variables are set at import, before anything reads Settings; subprocesses (uvicorn, celery,
training children) inherit them."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(tempfile.mkdtemp(prefix="tunequeue-test-"))
RUN_ID = secrets.token_hex(4)
PG_ADMIN_URL = os.environ.get("TUNEQUEUE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DATABASE_URL = str(make_url(PG_ADMIN_URL).set(database=f"tunequeue_test_{RUN_ID}").render_as_string(False))
TINY_MODEL = ROOT / "models" / "tiny-llama"

os.environ.update({
    "TUNEQUEUE_ENVIRONMENT": "test",
    "TUNEQUEUE_DATABASE_URL": DATABASE_URL,
    "TUNEQUEUE_REDIS_URL": os.environ.get("TUNEQUEUE_TEST_REDIS", "redis://127.0.0.1:6379/0"),
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


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    from common.db_setup import upgrade_database

    name = make_url(DATABASE_URL).database
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    upgrade_database(DATABASE_URL)
    yield DATABASE_URL
    from common.db import get_engine
    from common.progress import get_redis

    # messages for jobs no worker of this run took
    get_redis().delete(os.environ["TUNEQUEUE_CELERY_QUEUE"], os.environ["TUNEQUEUE_VALIDATE_QUEUE"])
    get_engine().dispose()
    get_engine.cache_clear()
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from worker.tiny_model import build_tiny_model

    if not (TINY_MODEL / "config.json").is_file():
        build_tiny_model(TINY_MODEL)
    return TINY_MODEL


@pytest.fixture
def tenant() -> tuple[str, str]:
    """A fresh tenant and a member key for it: (tenant_id, api_key)."""
    from tests.factories import make_tenant

    return make_tenant()
