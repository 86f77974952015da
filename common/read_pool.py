"""The API's hot reads (and the key lookup's `last_used_at` stamp): SQLAlchemy statements run straight on a pool
of asyncpg connections.

The statements are the same ones the synchronous side runs (common/services/queries.py, jobs.py): SQLAlchemy
compiles each shape once for asyncpg and this module keeps the SQL, so a statement has one definition. What it
skips is SQLAlchemy's asyncio execution layer (the greenlet bridge, result processing, building an ORM object):
measured in one API worker on the 2-core benchmark machine, a `GET /jobs/{id}` read cost 0.62 ms of CPU through
it against 0.29 ms here (docs/benchmarks.md, "API under load").

One pool per event loop (an asyncpg connection belongs to the loop that opened it: one per uvicorn worker; the
tests run apps on several loops), of at most TUNEQUEUE_DB_POOL_SIZE + TUNEQUEUE_DB_MAX_OVERFLOW connections in
autocommit (a one-statement read needs no BEGIN/COMMIT round trips)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias, TypeVar

import asyncpg
from sqlalchemy import ClauseElement
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler

from common.db import async_database_url
from common.errors import Overloaded
from common.settings import get_settings

T = TypeVar("T")
Record: TypeAlias = asyncpg.Record

_DIALECT = asyncpg_dialect(paramstyle="numeric_dollar")
_COMPILED: dict[Any, SQLCompiler] = {}  # by SQLAlchemy's cache key: one entry per statement shape
_MAX_COMPILED = 512

# A connection that died under a read (a Postgres restart, a dropped socket): the read runs once more on a
# fresh connection, and a second failure is a 503 the client may retry, never a 500.
_CONNECTION_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                      asyncpg.AdminShutdownError, OSError)


def _sql(statement: ClauseElement, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """The asyncpg SQL of `statement` and its positional arguments: the statement's own bound values (a literal
    in a `where`, a `limit`) overridden by `params` (its `bindparam`s by name)."""
    key = statement._generate_cache_key()  # what SQLAlchemy's own compiled cache is keyed by
    compiled = _COMPILED.get(key.key) if key is not None else None
    if compiled is None:
        compiled = _DIALECT.statement_compiler(_DIALECT, statement, cache_key=key)  # as Connection.execute does
        if key is not None:
            if len(_COMPILED) >= _MAX_COMPILED:
                _COMPILED.clear()
            _COMPILED[key.key] = compiled
    values = compiled.construct_params(params, extracted_parameters=key.bindparams if key is not None else None)
    assert values is not None
    return compiled.string, [values[name] for name in compiled.positiontup or ()]


class Reader:
    """One pooled connection for the length of one `read`."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def all(self, statement: ClauseElement, params: Mapping[str, Any] | None = None) -> list[Record]:
        sql, args = _sql(statement, params)
        return await self._connection.fetch(sql, *args)

    async def first(self, statement: ClauseElement, params: Mapping[str, Any] | None = None) -> Record | None:
        sql, args = _sql(statement, params)
        return await self._connection.fetchrow(sql, *args)

    async def execute(self, statement: ClauseElement, params: Mapping[str, Any] | None = None) -> None:
        """A statement that returns nothing; autocommit, so it is committed when this returns. Only idempotent
        writes belong here (a read is run again on a fresh connection when the first one died)."""
        sql, args = _sql(statement, params)
        await self._connection.execute(sql, *args)


async def _json_codecs(connection: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await connection.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(_: asyncpg.Connection) -> None:
    """asyncpg's default reset costs a round trip at every release (UNLISTEN, RESET ALL, …) to undo session
    state; a read here changes none: one statement, no transaction, no LISTEN, no SET."""


async def _create_pool() -> asyncpg.Pool:
    settings = get_settings()
    url = async_database_url(settings.database_url)
    args, kwargs = _DIALECT.create_connect_args(url)  # host, port, user, password, database, ssl as SQLAlchemy would
    return await asyncpg.create_pool(
        *args, **kwargs, min_size=0, max_size=settings.db_pool_size + settings.db_max_overflow,
        max_inactive_connection_lifetime=300, init=_json_codecs, reset=_no_reset)


_pools: dict[asyncio.AbstractEventLoop, asyncio.Task[asyncpg.Pool]] = {}


async def get_pool() -> asyncpg.Pool:
    """This loop's pool, made on first use (concurrent first requests wait for the one being made)."""
    loop = asyncio.get_running_loop()
    task = _pools.get(loop)
    if task is None:
        for old in [other for other in _pools if other.is_closed()]:
            del _pools[old]  # its connections died with their loop
        task = _pools[loop] = loop.create_task(_create_pool())
    try:
        return await asyncio.shield(task)
    except BaseException:
        if task.done() and (task.cancelled() or task.exception() is not None) and _pools.get(loop) is task:
            del _pools[loop]  # Postgres was down: the next request tries again
        raise


async def close_pool() -> None:
    """Close the current loop's pool (the API's lifespan calls it at shutdown)."""
    task = _pools.pop(asyncio.get_running_loop(), None)
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return
    pool = task.result()
    try:
        await asyncio.wait_for(pool.close(), timeout=5)
    except TimeoutError:
        pool.terminate()


def unavailable(exc: BaseException) -> Overloaded:
    return Overloaded(f"the database is unreachable right now ({type(exc).__name__}); try again in a moment",
                      retry_after=2, code="database_unavailable")


async def read(work: Callable[[Reader], Awaitable[T]]) -> T:
    """`work` on a pooled connection. Reads only. Run once more on a fresh connection when the first one was found
    dead (the pool then replaces every connection it holds: after a Postgres restart they all are)."""
    settings = get_settings()
    for attempt in (1, 2):
        try:
            pool = await get_pool()
            async with pool.acquire(timeout=settings.db_pool_timeout_seconds) as connection:
                return await work(Reader(connection))
        except _CONNECTION_ERRORS as exc:
            if attempt == 2:
                raise unavailable(exc) from exc
            if _pools.get(asyncio.get_running_loop()) is not None:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await (await get_pool()).expire_connections()
    raise AssertionError("unreachable")
