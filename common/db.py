"""Engines and sessions, the one place that builds them. One transaction per request and per task: the caller's
context commits.

Two engines from the one `TUNEQUEUE_DATABASE_URL`: the synchronous psycopg engine every process uses
(`session_scope`), and, in the API, SQLAlchemy's asyncio engine on asyncpg for the authentication lookup and
the hot reads (`read`), which then hold no thread while they wait for Postgres. Both pools are sized by
`TUNEQUEUE_DB_POOL_SIZE` + `TUNEQUEUE_DB_MAX_OVERFLOW` (docs/operations.md, "Database connections")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
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


# --- asyncio (the API's request path) ------------------------------------------------------------------------


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


# An asyncpg connection belongs to the event loop that opened it, so each loop gets its own engine (one per
# uvicorn worker; the tests run apps on several loops). `dispose_async_engine` closes the current loop's.
_async_engines: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
T = TypeVar("T")


def get_async_engine() -> AsyncEngine:
    loop = asyncio.get_running_loop()
    engine = _async_engines.get(loop)
    if engine is None:
        for old in [other for other in _async_engines if other.is_closed()]:
            del _async_engines[old]  # its connections died with their loop
        settings = get_settings()
        # No pre-ping (a round trip per checkout): a read that finds its connection dead is run again on a fresh
        # one instead (`read`). AUTOCOMMIT: a one-statement read needs no BEGIN/COMMIT round trips.
        engine = create_async_engine(
            async_database_url(settings.database_url), pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout_seconds,
            pool_recycle=1800, isolation_level="AUTOCOMMIT")
        _async_engines[loop] = engine
    return engine


async def dispose_async_engine() -> None:
    """Close the current loop's pool (the API's lifespan calls it at shutdown)."""
    engine = _async_engines.pop(asyncio.get_running_loop(), None)
    if engine is not None:
        await engine.dispose()


async def read(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """`work` on a connection of the asyncio engine, in autocommit mode (each statement its own transaction: a
    one-query read is one round trip). Reads only. Run once more on a fresh connection when the first one was
    found dead (a Postgres restart): the pool has dropped its stale connections by then."""
    engine = get_async_engine()
    try:
        async with engine.connect() as connection:
            return await work(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    async with engine.connect() as connection:
        return await work(connection)
