"""The API's production command (`python -m api.main`, deploy/api.Dockerfile's CMD): its worker count and the
asyncpg URL it derives from TUNEQUEUE_DATABASE_URL."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import make_url

from api.main import api_workers, connections_per_worker
from common.db import async_database_url
from common.settings import Settings


def test_api_workers_default_to_the_cpu_cores_the_process_may_use_and_a_blank_setting_is_the_default() -> None:
    cores = len(os.sched_getaffinity(0))
    assert api_workers(Settings(api_workers=None)) == cores
    assert api_workers(Settings(api_workers="")) == cores  # type: ignore[arg-type]  # compose's ${VAR:-}
    assert api_workers(Settings(api_workers=3)) == 3


def test_connections_per_worker_count_both_engines_at_their_full_overflow() -> None:
    assert connections_per_worker(Settings(db_pool_size=4, db_max_overflow=2)) == 12


def test_admission_limit_is_the_pool_size_unless_set_and_never_above_what_the_pool_can_open() -> None:
    assert Settings(db_pool_size=5, db_max_overflow=5).db_concurrency == 5
    assert Settings(db_pool_size=5, db_max_overflow=5, db_max_concurrency=8).db_concurrency == 8
    assert Settings(db_pool_size=5, db_max_overflow=5, db_max_concurrency=50).db_concurrency == 10


def test_async_url_keeps_host_user_password_and_database_and_turns_sslmode_into_ssl() -> None:
    url = async_database_url("postgresql+psycopg://tq:p%40ss@db.example:6432/tunequeue?sslmode=require")
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "tq", "p@ss", "db.example", 6432, "tunequeue")
    assert dict(url.query) == {"ssl": "require"}
    assert make_url(url.render_as_string(hide_password=False)).password == "p@ss"


def test_async_url_refuses_a_database_that_is_not_postgres() -> None:
    with pytest.raises(ValueError, match="postgresql"):
        async_database_url("sqlite:///x.db")
