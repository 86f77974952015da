"""Engines and sessions, the one place that builds them. One transaction per request and per task: the caller's
context commits.

Every process uses the synchronous psycopg engine (`session_scope`). The API's authentication lookup and hot
reads run on a pool of asyncpg connections instead (common/read_pool.py, from `async_database_url`), so they hold
no thread while they wait for Postgres. Both pools are sized by `TUNEQUEUE_DB_POOL_SIZE` +
`TUNEQUEUE_DB_MAX_OVERFLOW` (docs/operations.md, "Database connections")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from common.settings import get_settings


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    return create_engine(url or settings.database_url, pool_pre_ping=True, pool_size=settings.db_pool_size,
                         max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout_seconds)


def session_factory() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """Commit on success, roll back on error. Services flush; this commits."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def async_database_url(url: str) -> URL:
    """The asyncpg form of a Postgres URL (`postgresql+psycopg://…` → `postgresql+asyncpg://…`): same host,
    user, password and database. libpq's `sslmode=` becomes asyncpg's `ssl=` (same values)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"TUNEQUEUE_DATABASE_URL must be a postgresql URL; got {parsed.drivername!r}")
    query = dict(parsed.query)
    sslmode = query.pop("sslmode", None)
    if sslmode is not None:
        query["ssl"] = sslmode
    return parsed.set(drivername="postgresql+asyncpg", query=query)
