"""`tunequeue:job-events:<job id>`: "this job has new events", announced after the transaction that wrote them
commits, so that an open event stream (api/routes/jobs.py) reads Postgres when there is something to read instead
of polling it.

The writer side is `note_new_events` (common/state.py `add_event` calls it): it remembers the job on the session,
and a listener on every Session's `after_commit` publishes one message per job then, never before the events are
durable; a rollback forgets them. Delivery is best effort, like `tunequeue:models` (common/model_events.py): a
failed publish is logged and dropped, and a stream also reads Postgres on a slow timer, so a lost message or a
Redis restart delays an event by at most that timer and loses nothing.

The reader side is `JobEventWaker`: one Redis connection per API worker (per event loop), subscribed to the
pattern `tunequeue:job-events:*`, that sets the asyncio events of the streams waiting on that job. A message is
the job id alone (the stream reads the events themselves from Postgres, ordered by seq). Per-job channels keep the
door open to per-job SUBSCRIBE should an API worker ever follow a small share of many busy jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from common.redis_client import async_redis, get_redis
from common.settings import get_settings

log = logging.getLogger("tunequeue.job_events")

CHANNEL_PREFIX = "tunequeue:job-events:"
PATTERN = CHANNEL_PREFIX + "*"
_PENDING = "tunequeue.job_events_to_announce"  # the session.info entry: job ids written in this transaction
RECONNECT_SECONDS = 1.0  # a listener that lost Redis tries again after this
LOG_EVERY_SECONDS = 60.0  # a Redis outage is logged once a minute per process, not once per commit


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


# --- the writer side ------------------------------------------------------------------------------------------


def note_new_events(session: Session, job_id: str) -> None:
    """Announce `job_id` once this session's transaction commits (not at all if it rolls back)."""
    session.info.setdefault(_PENDING, set()).add(job_id)


@event.listens_for(Session, "after_commit")
def _announce_after_commit(session: Session) -> None:
    job_ids: set[str] | None = session.info.pop(_PENDING, None)
    if job_ids:
        announce(job_ids)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outer transaction: nothing it wrote is durable
        session.info.pop(_PENDING, None)


_last_logged = 0.0


def announce(job_ids: set[str] | list[str], client: redis.Redis | None = None) -> None:
    """One PUBLISH per job, in one round trip. Never raises: the commit already happened, and the streams'
    slow timer covers a message that did not go out."""
    global _last_logged
    try:
        pipe = (client or get_redis()).pipeline(transaction=False)
        for job_id in job_ids:
            pipe.publish(channel(job_id), job_id)
        pipe.execute()
    except Exception as exc:  # Redis down: streams find the events on their fallback timer
        if time.monotonic() - _last_logged >= LOG_EVERY_SECONDS:
            _last_logged = time.monotonic()
            log.warning("could not announce new job events on Redis (%s: %s); open streams see them within "
                        "TUNEQUEUE_STREAM_FALLBACK_SECONDS", type(exc).__name__, exc)


# --- the reader side ------------------------------------------------------------------------------------------


class JobEventWaker:
    """Wakes the streams of this event loop that wait on a job when its announcement arrives. After a lost
    connection it wakes every stream (messages may have been missed meanwhile) and subscribes again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @contextlib.contextmanager
    def waiter(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `job_id` is announced (or the listener reconnects); the caller clears it before
        each read of Postgres, so an announcement that arrives during the read is not lost."""
        self._ensure_running()
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            yield woken
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(woken)
                if not waiting:
                    del self._waiters[job_id]

    async def ready(self, timeout: float) -> bool:
        """Whether the listener is subscribed (waits up to `timeout`): a stream that reads Postgres after this
        misses no announcement of what it did not read."""
        self._ensure_running()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        return self._subscribed.is_set()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="job-event-waker")

    def _wake(self, job_id: str | None) -> None:
        groups = self._waiters.values() if job_id is None else [self._waiters.get(job_id, set())]
        for group in groups:
            for woken in group:
                woken.set()

    async def _listen(self) -> None:
        while True:
            client = async_redis(self.url, timeout=None)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.psubscribe(PATTERN)
                    self._subscribed.set()
                    self._wake(None)  # whatever was announced before (or while we were away) is read now
                    async for message in pubsub.listen():
                        if message.get("type") == "pmessage":
                            data = message["data"]
                            self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                log.warning("the job-event listener lost Redis (%s: %s); streams fall back to their timer and "
                            "it retries in %.0f s", type(exc).__name__, exc, RECONNECT_SECONDS)
                self._wake(None)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)


# A listener belongs to one event loop: one per loop (one per uvicorn worker), like api/admission.py's slots.
_wakers: dict[asyncio.AbstractEventLoop, JobEventWaker] = {}


def get_waker() -> JobEventWaker:
    loop = asyncio.get_running_loop()
    waker = _wakers.get(loop)
    if waker is None:
        for old in [other for other in _wakers if other.is_closed()]:
            del _wakers[old]
        waker = _wakers[loop] = JobEventWaker(get_settings().redis_url)
    return waker
