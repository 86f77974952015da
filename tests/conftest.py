"""Session fixtures: a freshly migrated database per run on the real Postgres, the real Redis (an isolated Celery
queue name per run), artifact and work folders in a temp dir, and the tiny Llama built once per session.

tests/support/environment.py sets the TUNEQUEUE_* variables; it is imported first, before anything reads Settings."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module", autouse=True)
def model_builds_leave_transformers_whole() -> Iterator[None]:
    """After each test file: no model build left transformers' no-op stand-ins in place of `tie_weights`,
    `init_weights` or the torch.nn.init functions (two threads building at once can, worker/model_build_lock.py).
    A file that does fails here, instead of a later file in the same process loading models with NaN heads."""
    yield
    from worker.model_build_lock import MODEL_BUILD_LOCK, swapped_out_functions

    with MODEL_BUILD_LOCK:
        swapped = swapped_out_functions()
    assert not swapped, (f"a model build in this file left {swapped} swapped for transformers' no-ops: build models "
                         "under worker.model_build_lock.MODEL_BUILD_LOCK wherever another thread may build too")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from worker.tiny_model import build_tiny_model

    if not (TINY_MODEL / "config.json").is_file():
        build_tiny_model(TINY_MODEL)
    return TINY_MODEL


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's standalone S3-compatible server on loopback for one test module (tests/support/s3_server.py; a
    stand-in for S3, which cannot run here); each test takes a bucket of its own with `new_bucket()`."""
    from tests.support.s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_settings(moto_s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This run's settings with the module's S3 server (its credentials in the environment) and a model cache of
    the test's own; base models the test registers under an `s3-` id are dropped afterwards."""
    from common.settings import get_settings
    from tests.support.s3_server import CREDENTIALS

    settings = get_settings()
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(settings, "s3_endpoint_url", moto_s3.endpoint_url)
    monkeypatch.setattr(settings, "model_cache_dir", str(tmp_path / "model-cache"))
    yield settings
    for model_id in [m for m in settings.base_models if m.startswith("s3-")]:
        del settings.base_models[model_id]


@pytest.fixture
def tenant() -> tuple[str, str]:
    """A fresh tenant and a member key for it: (tenant_id, api_key)."""
    from tests.support.factories import make_tenant

    return make_tenant()


@pytest.fixture
def cluster(tiny_model: Path, tmp_path: Path) -> Iterator[Any]:
    """A test-owned TuneQueue (tests/support/cluster.py): its own database and queues, real API and worker
    processes that the test starts, signals and stops."""
    from tests.support.cluster import Cluster

    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
