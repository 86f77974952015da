"""Admission: at most `Settings.db_concurrency` requests of this worker do database work at once, which is what
its connection pool can serve, so no request ever waits for a connection while holding a thread or another
connection. A request over that waits here, holding neither, for `TUNEQUEUE_DB_ADMISSION_TIMEOUT_SECONDS`;
then it gets 503 `server_busy` with `Retry-After` (common/errors.py `Overloaded`) instead of hanging."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from common.errors import Overloaded
from common.settings import get_settings


class Admission:
    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self._slots = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without waiting
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded(
                f"the server is busy: {self.limit} requests are using the database and more are waiting; "
                f"retry after the Retry-After seconds (operators: see TUNEQUEUE_DB_POOL_SIZE, "
                f"TUNEQUEUE_API_WORKERS in docs/operations.md)",
                retry_after=max(1, math.ceil(self.timeout))) from None

    def release(self) -> None:
        self._slots.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


# A semaphore belongs to one event loop: one Admission per loop (one per uvicorn worker).
_admissions: dict[asyncio.AbstractEventLoop, Admission] = {}


def get_admission() -> Admission:
    loop = asyncio.get_running_loop()
    admission = _admissions.get(loop)
    if admission is None:
        for old in [other for other in _admissions if other.is_closed()]:
            del _admissions[old]
        settings = get_settings()
        admission = _admissions[loop] = Admission(settings.db_concurrency, settings.db_admission_timeout_seconds)
    return admission


def db_slot() -> AbstractAsyncContextManager[None]:
    """`async with db_slot():` around a request's database work."""
    return get_admission().slot()
