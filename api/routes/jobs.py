"""`/jobs` (also mounted under /v1/fine_tuning, api/main.py): submit, list, get and cancel jobs; a job's events
as a page or as a Server-Sent Events stream, its metrics series and its checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import exists, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.admission import db_slot
from api.deps import CurrentCaller, DbCaller, SettingsDep
from api.rate_limits import StreamLease, open_stream
from api.responses import model_response
from common.auth import is_usable
from common.db import session_scope
from common.errors import InvalidRequest, Overloaded, error_body
from common.job_events_channel import get_waker
from common.models import ApiKey, Job, JobEvent
from common.progress import ProgressChannel, progress_key
from common.read_pool import read
from common.redis_client import async_redis, decode_hash
from common.schemas.common import ListPage
from common.schemas.job_spec import JobSpec
from common.schemas.jobs import CheckpointPublic, JobPublic, MetricPoint, MetricsPage
from common.schemas.strings import Name, UserName, metadata_query
from common.services import events as events_service
from common.services import jobs as service
from common.services import reads
from common.services.events import event_public, progress_view
from common.services.queries import check_limit, get_owned
from common.settings import get_settings
from common.state import TERMINAL

router = APIRouter(prefix="/jobs", tags=["jobs"])

# A stream reads Postgres when Redis announces a new event of its job (common/job_events_channel.py), and every
# TUNEQUEUE_STREAM_FALLBACK_SECONDS besides. While the job runs it reads its live progress from Redis this often
# (no database, no admission slot); a poll that found the database saturated is retried after it too.
STREAM_POLL_SECONDS = 0.5
STREAM_READY_SECONDS = 1.0  # how long a new stream waits for its API worker's Redis listener to be subscribed
STREAM_KEEPALIVE_SECONDS = 15.0  # a comment line keeps proxies from closing a quiet stream
STREAM_RETRY_MS = 2000  # what EventSource waits before it reconnects
# A stream ends after this long even while the job runs (no `done` event); the client reconnects with
# Last-Event-ID and loses nothing. It bounds how long a graceful shutdown of the API waits for open streams.
STREAM_MAX_SECONDS = 300.0
# How often an open stream checks that the key that opened it still works: a revoked or expired key's streams end
# within this long (and its reconnect is refused).
STREAM_KEY_CHECK_SECONDS = 30.0
KEY_REVOKED = "key_revoked"  # what `_poll` says instead of a status when the stream's key no longer works


def live_progress(job: Job) -> dict[str, Any] | None:
    """Redis has the freshest view; Postgres has the last one a worker recorded (Redis may have been flushed)."""
    live = None
    if job.status == "running":
        try:
            live = ProgressChannel().read_progress(job.id)
        except Exception:  # Redis down: Postgres still knows
            live = None
    return merged_progress(job, live)


def merged_progress(job: Job, live: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's progress from its durable view and `live`, Redis' view. Both carry the attempt that wrote them:
    a view left by an earlier attempt is not this attempt's progress."""
    durable = job.last_progress
    if job.status == "running" and live and live.get("attempt") in (None, job.attempt):
        if durable and durable.get("attempt") == job.attempt:
            return progress_view({**durable, **live})  # fields Redis lost since a flush come from Postgres
        return progress_view(live)
    return progress_view(durable)


async def live_progress_of(jobs: list[Job]) -> list[dict[str, Any] | None]:
    """`live_progress` of each job; Redis is asked (in the thread pool, holding no connection) only when one runs."""
    if not any(job.status == "running" for job in jobs):
        return [progress_view(job.last_progress) for job in jobs]
    return await run_in_threadpool(lambda: [live_progress(job) for job in jobs])


@router.post("", response_model=JobPublic)
def create_job(spec: JobSpec, caller: DbCaller, settings: SettingsDep,
               idempotency_key: Annotated[str | None, Header()] = None) -> JobPublic:
    with session_scope() as session:
        job = service.submit(session, settings, tenant_id=caller.tenant_id, user=caller.user,
                             is_admin=caller.is_admin, spec=spec, idempotency_key=idempotency_key)
        return JobPublic.of(job, None)


@router.post("/estimate")
def estimate_job(spec: JobSpec, caller: DbCaller, settings: SettingsDep) -> dict[str, Any]:
    """The peak memory a job of this spec would need per device kind, and which registered workers could run it
    (`runnable`: null when no worker has registered yet); creates nothing."""
    with session_scope() as session:
        return service.estimate_job(session, settings, tenant_id=caller.tenant_id, spec=spec)


@router.get("", response_model=ListPage[JobPublic])
async def list_jobs(request: Request, caller: CurrentCaller, after: Name | None = None, limit: int = 20,
                    status: Name | None = None, user: UserName | None = None) -> Response:
    """The organization's jobs, newest first; `?user=` keeps one user's (`"user"` on each job), and
    `?metadata[key]=value` (OpenAI's filter, repeatable) the jobs whose metadata holds every such pair."""
    metadata = metadata_query(request.query_params)
    async with db_slot():
        rows, has_more = await read(lambda reader: reads.list_jobs(
            reader, caller.tenant_id, after=after, limit=limit, status=status, user=user, metadata=metadata))
    data = [JobPublic.of(r, p) for r, p in zip(rows, await live_progress_of(rows), strict=True)]
    return model_response(ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                                   last_id=data[-1].id if data else None))


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: Name, caller: CurrentCaller) -> Response:
    async with db_slot():
        job, position = await read(lambda reader: reads.get_job(reader, job_id, caller.tenant_id))
    (progress,) = await live_progress_of([job])
    public = JobPublic.of(job, progress)
    public.queue_position = position
    return model_response(public)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: Name, caller: DbCaller) -> JobPublic:
    with session_scope() as session:
        job = service.cancel_job(session, caller.tenant_id, job_id)
        return JobPublic.of(job, live_progress(job))


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(job_id: Name, caller: DbCaller) -> JobPublic:
    """A queued job pauses at once; a running one checkpoints and then holds in `paused` (its status says
    `running` until it has). 409 for a job that is not queued or running."""
    with session_scope() as session:
        job = service.pause_job(session, caller.tenant_id, job_id)
        return JobPublic.of(job, live_progress(job))


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(job_id: Name, caller: DbCaller) -> JobPublic:
    """A paused job goes back to the queue and continues from its newest checkpoint. 409 for one not paused."""
    with session_scope() as session:
        job = service.resume_job(session, caller.tenant_id, job_id)
        return JobPublic.of(job, live_progress(job))


@router.get("/{job_id}/events", response_model=ListPage[dict[str, Any]],
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "A page of events; with stream=true, Server-Sent Events"}})
def list_events(
    job_id: Name, caller: DbCaller, after: Name | None = None, limit: int = 20,
    stream: Annotated[bool | None, Query(description="Server-Sent Events: replay, then follow live")] = None,
    last_event_id: Annotated[str | None, Query(description="Resume a stream after this event's seq")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """Newest first, like OpenAI's; `after` is an event id. With `?stream=true` (or `Accept: text/event-stream`)
    a Server-Sent Events stream instead: every event oldest first (`id:` is its `seq`), then new ones as they
    happen, then `event: done` once the job has ended. A reconnect's `Last-Event-ID` resumes right after it."""
    with session_scope() as session:
        job = get_owned(session, Job, job_id, caller.tenant_id, what="job", param="job_id")
        wants_stream = stream if stream is not None else "text/event-stream" in (accept or "")
        if wants_stream:
            return stream_events(session, job, _resume_point(after, last_event_id_header, last_event_id),
                                 key_id=caller.key_id)
        return event_page(session, job_id, after=after, limit=limit)


def _resume_point(after: str | None, header: str | None, query: str | None) -> int:
    """The `seq` a stream resumes after: the Last-Event-ID header (what EventSource sends when it reconnects),
    else ?last_event_id=, else 0 (from the beginning)."""
    if after is not None:
        raise InvalidRequest("`after` pages a list; a stream resumes with the Last-Event-ID header "
                             "(or ?last_event_id=) set to the `seq` of the last event it got", param="after")
    if header is not None:
        return events_service.parse_last_event_id(header, param="Last-Event-ID")
    return events_service.parse_last_event_id(query, param="last_event_id")


def event_page(session: Session, job_id: str, *, after: str | None, limit: int) -> ListPage[dict[str, Any]]:
    """One page of the job's events, newest first."""
    check_limit(limit)
    rows, has_more = events_service.list_events(session, job_id, after=after, limit=limit)
    data = [event_public(e) for e in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0]["id"] if data else None,
                    last_id=data[-1]["id"] if data else None)


def stream_events(session: Session, job: Job, last_seq: int, *, key_id: str) -> Response:
    """The job's events after `last_seq` as Server-Sent Events, then live ones until it ends (`_event_stream`).
    A place among its tenant's open streams is taken first (api/rate_limits.py): past the cap, 429."""
    if job.status in TERMINAL and not session.scalar(
            select(exists().where(JobEvent.job_id == job.id, JobEvent.seq > last_seq))):
        # Nothing will ever follow: 204 is what tells an EventSource to stop reconnecting.
        return Response(status_code=204)
    lease = open_stream(job.tenant_id)
    # The caller's session_scope ends (commit, connection returned) before the stream starts; the stream opens a
    # short session only when it reads, so it holds no connection while it waits.
    return StreamingResponse(_event_stream(job.id, last_seq, key_id, lease=lease), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _frame(data: dict[str, Any], *, id: int | None = None, event: str | None = None) -> str:
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def _poll(job_id: str, last_seq: int, key_id: str | None = None
          ) -> tuple[str | None, list[tuple[int, dict[str, Any]]], Job | None]:
    """The job's status, the events after `last_seq` and the job itself (its durable progress, for
    `merged_progress`). The status is read first: when it is terminal, the events read after it include the
    terminal state event (one transaction wrote both). With `key_id`, first whether that key still works: status
    "key_revoked" when it does not."""
    with session_scope() as session:
        if key_id is not None:
            key = session.get(ApiKey, key_id)
            if key is None or not is_usable(key):
                return KEY_REVOKED, [], None
        job = session.get(Job, job_id)
        if job is None:
            return None, [], None
        rows = events_service.events_since(session, job_id, last_seq)
        batch = [(e.seq, event_public(e)) for e in rows]
        return job.status, batch, job


async def _live_progress_async(job: Job) -> dict[str, Any] | None:
    """`live_progress` on the event loop's own Redis client: a waiting stream takes no thread for it."""
    try:
        raw = await _async_redis().hgetall(progress_key(job.id))  # type: ignore[misc]
    except Exception:  # Redis down: Postgres still knows
        raw = None
    return merged_progress(job, decode_hash(raw) if raw else None)


_progress_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}


def _async_redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _progress_clients.get(loop)
    if client is None:
        for old in [other for other in _progress_clients if other.is_closed()]:
            del _progress_clients[old]
        client = _progress_clients[loop] = async_redis(get_settings().redis_url)
    return client


async def _woken_within(woken: asyncio.Event, seconds: float) -> bool:
    """Whether `woken` was set within `seconds`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await woken.wait()
    return woken.is_set()


async def _event_stream(job_id: str, last_seq: int, key_id: str | None = None, *,
                        lease: StreamLease | None = None) -> AsyncIterator[str]:
    """An async generator, so that a waiting stream holds no thread. It reads Postgres (in the thread pool, inside
    an admission slot) only when its job was announced on Redis, when its slow fallback timer or its key check is
    due, or while it replays history; between reads it holds nothing. Events without `id:` (progress, done) leave
    the client's Last-Event-ID where it was. Its place among its tenant's streams is given back when it ends."""
    try:
        yield f"retry: {STREAM_RETRY_MS}\n\n"
        waker = get_waker()
        await waker.ready(STREAM_READY_SECONDS)  # not subscribed yet (Redis down): the fallback timer reads
        fallback = get_settings().stream_fallback_seconds
        with waker.waiter(job_id) as woken:
            async for frame in _follow(job_id, last_seq, key_id, woken, fallback, lease):
                yield frame
    finally:
        if lease is not None:
            lease.release()


async def _follow(job_id: str, last_seq: int, key_id: str | None, woken: asyncio.Event, fallback: float,
                  lease: StreamLease | None) -> AsyncIterator[str]:
    """The body of `_event_stream`, once its waiter is registered."""
    last_progress_at: Any = None
    last_sent = opened = key_checked = read_at = time.monotonic()
    status: str | None = None
    job: Job | None = None
    must_read = True
    while True:
        check_key = key_id if time.monotonic() - key_checked >= STREAM_KEY_CHECK_SECONDS else None
        if must_read or check_key is not None:
            woken.clear()  # an announcement that arrives during this read wakes the next one
            try:
                # Each read is one unit of work in one thread-pool call, inside an admission slot (api/admission.py).
                async with db_slot():
                    status, batch, job = await run_in_threadpool(_poll, job_id, last_seq, check_key)
            except Overloaded:  # saturated: this read is retried shortly, the stream stays open
                await asyncio.sleep(STREAM_POLL_SECONDS)
                continue
            read_at = time.monotonic()
            if check_key is not None:
                key_checked = time.monotonic()
            if status == KEY_REVOKED:
                yield _frame(error_body("the API key of this stream was revoked or has expired",
                                        type="authentication_error", param=None, code="invalid_api_key"),
                             event="error")
                return
            for seq, data in batch:
                yield _frame(data, id=seq)
                last_seq = seq
            if batch:
                last_sent = time.monotonic()
            if status is None:  # the job was deleted under us
                return
            if len(batch) == events_service.STREAM_BATCH:
                continue  # still replaying history
            if status in TERMINAL:
                yield _frame({"object": "fine_tuning.job.stream_end", "job_id": job_id, "status": status},
                             event="done")
                return
        if status == "running" and job is not None:
            progress = await _live_progress_async(job)
            stamp = progress and (progress.get("updated_at"), progress.get("sampled_at"))
            if progress and stamp != last_progress_at:
                last_progress_at = stamp
                yield _frame({"object": "fine_tuning.job.progress", "job_id": job_id, **progress}, event="progress")
                last_sent = time.monotonic()
        if time.monotonic() - last_sent >= STREAM_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if time.monotonic() - opened >= STREAM_MAX_SECONDS:
            return  # not `done`: the client reconnects with Last-Event-ID
        if lease is not None:
            lease.renew_if_due()
        now = time.monotonic()
        wait = min(fallback - (now - read_at), STREAM_KEEPALIVE_SECONDS - (now - last_sent),
                   STREAM_MAX_SECONDS - (now - opened), STREAM_KEY_CHECK_SECONDS - (now - key_checked))
        if status == "running":
            wait = min(wait, STREAM_POLL_SECONDS)  # its live progress
        must_read = await _woken_within(woken, wait) or time.monotonic() - read_at >= fallback


@router.get("/{job_id}/metrics", response_model=MetricsPage)
def job_metrics(job_id: Name, caller: DbCaller, after_step: int | None = None, limit: int = 1000) -> MetricsPage:
    """The recorded steps for plotting: loss, eval loss/accuracy, learning rate, tokens/s, GPU memory. One
    point per `metrics_event_every` steps (and every evaluation and the last step), ascending by step."""
    with session_scope() as session:
        get_owned(session, Job, job_id, caller.tenant_id, what="job", param="job_id")
        points, has_more = events_service.metrics_series(session, job_id, after_step=after_step, limit=limit)
    return MetricsPage(job_id=job_id, data=[MetricPoint(**p) for p in points], has_more=has_more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointPublic])
def list_checkpoints(job_id: Name, caller: DbCaller, after: Name | None = None,
                     limit: int = 10) -> ListPage[CheckpointPublic]:
    """Newest first, like OpenAI's; `after` is a checkpoint id."""
    with session_scope() as session:
        job = get_owned(session, Job, job_id, caller.tenant_id, what="job", param="job_id")
        rows, has_more = events_service.list_checkpoints(session, job, after=after, limit=limit)
        data = [CheckpointPublic(**events_service.checkpoint_public(c, job)) for c in rows]
    return ListPage(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)
