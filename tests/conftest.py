"""Session fixtures: a freshly migrated database per run on the real Postgres, the real Redis (an isolated Celery
queue name per run), artifact and work folders in a temp dir, and the tiny Llama built once per session.

tests/support/environment.py sets the TUNEQUEUE_* variables; it is imported first, before anything reads Settings."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.support.environment import DATABASE_URL, ROOT, TINY_MODEL, admin_engine


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    from common.db_setup import upgrade_database

    name = make_url(DATABASE_URL).database
    engine = admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    upgrade_database(DATABASE_URL)
    yield DATABASE_URL
    from common.db import get_engine
    from common.redis_client import get_redis

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
    from tests.support.factories import make_tenant

    return make_tenant()
