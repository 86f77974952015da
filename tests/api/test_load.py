"""The API under concurrent load (issue 12): the API started with its production command (deploy/api.Dockerfile's
CMD, as compose runs it) over the test database and Redis, driven over loopback by many asyncio + httpx clients.

What must hold, whatever the concurrency: every request is answered within REQUEST_DEADLINE (a request that is
not is a hang, and the failure names its route); every answer is 200, or a 429/503 that says when to retry
(Retry-After) in OpenAI's error shape; the API answers normally as soon as the load stops; and no job is lost or
doubled: every Idempotency-Key a client sent (each refused POST retried with its key, as a client would) has
exactly one row, and every row exactly one message on the broker's validation queue.

The load is bounded in count (REQUESTS) and time (no request starts after LOAD_SECONDS). These tests assert no
speed: the deadlines only tell an answer from a hang; throughput is benchmarks/api_load.py's."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.support.api_process import api_log, broker_job_ids, production_api
from tests.support.factories import chat_rows, jsonl, make_tenant, spec

pytestmark = pytest.mark.slow

REQUEST_DEADLINE = 15.0  # an answer later than this is a hang
RECOVERY_DEADLINE = 1.0  # once the load stops, a plain read answers within this
LOAD_SECONDS = 45.0  # no request starts after this; those in flight still get REQUEST_DEADLINE
SETUP_JOBS = 8

GET_JOB, LIST_JOBS, POST_JOB, GET_FILE, STREAM = ("GET /jobs/{id}", "GET /jobs", "POST /jobs", "GET /files/{id}",
                                                  "GET /jobs/{id}/events?stream=true")
CLIENT_LAG = "(the test client's event loop: its longest lag)"
CLIENT_CPU = "(the test client's CPU time)"
MIXED = {GET_JOB: 40, LIST_JOBS: 20, GET_FILE: 20, POST_JOB: 20}  # weights of the request routes


@dataclass
class Stack:
    url: str
    command: list[str]
    key: str
    tenant_id: str
    file_id: str
    job_ids: list[str]
    validate_queue: str
    log_dir: Path
    keys: dict[str, str] = field(default_factory=dict)  # Idempotency-Key → job id, for every 200 of POST /jobs

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Outcome:
    route: str
    status: int | None = None
    seconds: float = 0.0
    problem: str | None = None
    idempotency_key: str | None = None
    job_id: str | None = None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The API alone (no worker: jobs stay `validating_files`, their messages stay on the broker to be counted),
    on broker queues of its own; a tenant, one processed file and SETUP_JOBS jobs made through the API."""
    from common.redis_client import get_redis

    queue = f"tunequeue.load.{secrets.token_hex(4)}"
    env = {"TUNEQUEUE_CELERY_QUEUE": queue, "TUNEQUEUE_VALIDATE_QUEUE": f"{queue}.validate",
           "TUNEQUEUE_RECONCILE_AFTER_SECONDS": "86400"}
    tenant_id, key = make_tenant()
    try:
        with production_api(tmp_path, env) as (url, command):
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
                up = client.post("/files", files={"file": ("train.jsonl", jsonl(chat_rows(8)), "application/jsonl")},
                                 data={"purpose": "fine-tune"})
                assert up.status_code == 200 and up.json()["status"] == "processed", up.text
                s = Stack(url=url, command=command, key=key, tenant_id=tenant_id, file_id=up.json()["id"],
                          job_ids=[], validate_queue=f"{queue}.validate", log_dir=tmp_path)
                for i in range(SETUP_JOBS):
                    idem = f"setup-{i}"
                    made = client.post("/jobs", json=spec(s.file_id), headers={"Idempotency-Key": idem})
                    assert made.status_code == 200, made.text
                    s.job_ids.append(made.json()["id"])
                    s.keys[idem] = made.json()["id"]
            yield s
    finally:
        get_redis().delete(queue, f"{queue}.validate")


def _refusal_problem(route: str, resp: httpx.Response) -> str | None:
    """A 429/503 is an answer when it says when to come back and why, in OpenAI's error shape."""
    retry_after = resp.headers.get("retry-after")
    if retry_after is None or not retry_after.strip():
        return f"{route}: HTTP {resp.status_code} without a Retry-After header"
    try:
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and {"param", "code"} <= set(error)
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{route}: HTTP {resp.status_code} whose body is not an OpenAI error: {resp.text[:200]!r}"
    return None


def _check(route: str, resp: httpx.Response) -> str | None:
    if resp.status_code == 200:
        return None
    if resp.status_code in (429, 503):
        return _refusal_problem(route, resp)
    return f"{route}: HTTP {resp.status_code}: {resp.text[:200]!r}"


async def _request(client: httpx.AsyncClient, s: Stack, route: str, rng: random.Random) -> Outcome:
    out = Outcome(route)
    job_id = rng.choice(s.job_ids)
    headers: dict[str, str] = {}
    if route == GET_JOB:
        call = client.get(f"/jobs/{job_id}")
    elif route == LIST_JOBS:
        call = client.get("/jobs", params={"limit": 20})
    elif route == GET_FILE:
        call = client.get(f"/files/{s.file_id}")
    else:
        out.idempotency_key = headers["Idempotency-Key"] = f"load-{secrets.token_hex(8)}"
        call = client.post("/jobs", json=spec(s.file_id), headers=headers)
    start = time.monotonic()
    try:
        resp = await asyncio.wait_for(call, REQUEST_DEADLINE)
    except TimeoutError:
        out.problem = f"{route}: no answer in {REQUEST_DEADLINE:.0f} s (hung, or queued without a 429/503)"
    except httpx.HTTPError as exc:
        out.problem = f"{route}: {type(exc).__name__}: {exc!r}"
    else:
        out.status = resp.status_code
        out.problem = _check(route, resp)
        if route == POST_JOB and resp.status_code == 200:
            out.job_id = resp.json()["id"]
    out.seconds = time.monotonic() - start
    return out


async def _hold_stream(client: httpx.AsyncClient, s: Stack, job_id: str, stop: asyncio.Event) -> Outcome:
    """An SSE client: the stream must open (headers and its first `retry:` line) within the deadline, then it is
    held open until the load stops."""
    out = Outcome(STREAM)
    start = time.monotonic()
    async with contextlib.AsyncExitStack() as exits:
        try:
            async with asyncio.timeout(REQUEST_DEADLINE):
                resp = await exits.enter_async_context(
                    client.stream("GET", f"/jobs/{job_id}/events", params={"stream": "true"}))
                out.status = resp.status_code
                if resp.status_code == 200:
                    first = await anext(resp.aiter_lines())
                    if "text/event-stream" not in resp.headers.get("content-type", "") or \
                            not first.startswith("retry:"):
                        out.problem = f"{STREAM}: 200 that is not an event stream: {first[:100]!r}"
                else:
                    await resp.aread()
                    out.problem = _check(STREAM, resp)
        except TimeoutError:
            out.problem = f"{STREAM}: not open in {REQUEST_DEADLINE:.0f} s (hung)"
        except httpx.HTTPError as exc:
            out.problem = f"{STREAM}: {type(exc).__name__}: {exc!r}"
        out.seconds = time.monotonic() - start
        if out.status == 200 and out.problem is None:
            await stop.wait()
    return out


async def _drive(s: Stack, *, clients: int, requests: int, mix: dict[str, int], streams: int = 0,
                 seed: int = 12) -> list[Outcome]:
    """`clients` concurrent clients (`streams` of them holding an SSE stream open, the rest sending requests one
    after another) until `requests` requests were sent or LOAD_SECONDS passed."""
    rng = random.Random(seed)
    plan = iter(rng.choices(list(mix), weights=list(mix.values()), k=requests))
    timeout = httpx.Timeout(REQUEST_DEADLINE + 10)  # asyncio's deadline comes first and names the hang
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    ends = time.monotonic() + LOAD_SECONDS

    # httpx builds an SSL context for every client unless given one (~45 ms of CPU each): 256 of them starved this
    # client's own event loop for ~11 s, and its streams then "hung" by the client's clock. One context for all.
    tls = ssl.create_default_context()

    def own_client() -> httpx.AsyncClient:
        # One client (one connection) per simulated user, as real users are: a request cancelled by the deadline
        # can leave a connection pool shared by all users unable to hand out connections (httpcore), and a hang
        # of the test's own pool must not pass for the API's.
        return httpx.AsyncClient(base_url=s.url, headers=s.auth(), timeout=timeout, verify=tls,
                                 limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))

    async def sender(n: int) -> None:
        own = random.Random(seed * 1000 + n)
        async with own_client() as client:
            for route in plan:
                if time.monotonic() > ends:
                    return
                outcomes.append(await _request(client, s, route, own))

    async def holder(i: int) -> Outcome:
        async with own_client() as client:
            return await _hold_stream(client, s, s.job_ids[i % len(s.job_ids)], stop)

    holders = [asyncio.create_task(holder(i)) for i in range(streams)]
    lag = asyncio.create_task(_loop_lag(stop))
    wall, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(sender(n) for n in range(clients - streams)))
    stop.set()
    outcomes.extend(await asyncio.gather(*holders))
    outcomes.append(Outcome(CLIENT_LAG, seconds=await lag))
    outcomes.append(Outcome(CLIENT_CPU, seconds=time.process_time() - cpu,
                            problem=f"{time.monotonic() - wall:.1f} s wall"))
    return outcomes


async def _loop_lag(stop: asyncio.Event) -> float:
    """The longest this client's own event loop was late for a 0.1 s tick: when it comes near REQUEST_DEADLINE,
    a "hang" may be the test's and not the API's."""
    worst = 0.0
    while not stop.is_set():
        start = time.monotonic()
        await asyncio.sleep(0.1)
        worst = max(worst, time.monotonic() - start - 0.1)
    return worst


def _requests(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.route not in (CLIENT_LAG, CLIENT_CPU)]


def _summary(outcomes: list[Outcome]) -> str:
    by_route: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    slowest: dict[str, float] = collections.defaultdict(float)
    lag = [f"  {o.route}: {o.seconds:.2f} s" + (f" in {o.problem}" if o.problem else "")
           for o in outcomes if o.route in (CLIENT_LAG, CLIENT_CPU)]
    for o in _requests(outcomes):
        by_route[o.route][str(o.status) if o.status is not None else "no answer"] += 1
        slowest[o.route] = max(slowest[o.route], o.seconds)
    return ("\n".join(f"  {route}: {sum(c.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(c.items()))}; "
                     f"slowest {slowest[route]:.1f} s)" for route, c in sorted(by_route.items()))
        + "".join(f"\n{line}" for line in lag))


def _assert_all_answered(s: Stack, outcomes: list[Outcome]) -> None:
    problems = collections.Counter(o.problem for o in _requests(outcomes) if o.problem)
    summary = _summary(outcomes)
    assert not problems, (
        f"{sum(problems.values())} of {len(_requests(outcomes))} requests were not answered properly (command: "
        f"{' '.join(s.command)}):\n" + "\n".join(f"  {n} × {p}" for p, n in problems.most_common(20))
        + f"\nby route:\n{summary}\napi log:\n{api_log(s.log_dir)}")


def _assert_serves_at_once(s: Stack) -> None:
    try:
        resp = httpx.get(f"{s.url}/jobs/{s.job_ids[0]}", headers=s.auth(), timeout=RECOVERY_DEADLINE)
    except httpx.TimeoutException:
        pytest.fail(f"after the load, GET /jobs/{{id}} got no answer in {RECOVERY_DEADLINE} s:\n{api_log(s.log_dir)}")
    assert resp.status_code == 200, f"after the load, GET /jobs/{{id}} answered {resp.status_code}: {resp.text}"


def _retry_refused_posts(s: Stack, outcomes: list[Outcome]) -> None:
    """What a client does with a refused or unanswered POST /jobs: send it again with the same Idempotency-Key
    (after Retry-After) until it gets its job."""
    with httpx.Client(base_url=s.url, headers=s.auth(), timeout=REQUEST_DEADLINE) as client:
        for o in outcomes:
            if o.route != POST_JOB:
                continue
            assert o.idempotency_key is not None
            for _ in range(5):
                if o.job_id is not None:
                    break
                resp = client.post("/jobs", json=spec(s.file_id), headers={"Idempotency-Key": o.idempotency_key})
                if resp.status_code == 200:
                    o.job_id = resp.json()["id"]
                elif resp.status_code in (429, 503):
                    time.sleep(min(5.0, float(resp.headers.get("retry-after", "1"))))
                else:
                    pytest.fail(f"retrying POST /jobs with its Idempotency-Key: HTTP {resp.status_code}: {resp.text}")
            assert o.job_id is not None, f"POST /jobs with Idempotency-Key {o.idempotency_key} never got its job"
            s.keys[o.idempotency_key] = o.job_id


def _assert_no_job_lost_or_doubled(s: Stack, outcomes: list[Outcome]) -> None:
    from common.db import session_scope
    from common.models import Job
    from common.redis_client import get_redis

    _retry_refused_posts(s, outcomes)
    with session_scope() as session:
        rows = session.execute(select(Job.id, Job.idempotency_key).where(Job.tenant_id == s.tenant_id)).all()
    by_key = collections.Counter(key for _, key in rows)
    assert len(rows) == len(s.keys), f"{len(s.keys)} distinct Idempotency-Keys got a job, but {len(rows)} rows exist"
    assert all(n == 1 for n in by_key.values()), f"keys with several rows: {[k for k, n in by_key.items() if n > 1]}"
    assert {key: job_id for job_id, key in rows} == s.keys, "a 200's job id is not the row of its Idempotency-Key"
    messages = collections.Counter(broker_job_ids(get_redis(), s.validate_queue))
    row_ids = {job_id for job_id, _ in rows}
    assert set(messages) == row_ids, (f"jobs without a broker message: {sorted(row_ids - set(messages))[:10]}; "
                                      f"messages without a job: {sorted(set(messages) - row_ids)[:10]}")
    assert all(n == 1 for n in messages.values()), \
        f"jobs enqueued more than once: {[j for j, n in messages.items() if n > 1][:10]}"


def test_256_concurrent_clients_on_jobs_files_and_event_streams_all_answered_and_no_job_lost_or_doubled(
        stack: Stack) -> None:
    requests, streams = 2000, 32
    outcomes = asyncio.run(_drive(stack, clients=256, requests=requests, mix=MIXED, streams=streams))
    print(f"\n{' '.join(stack.command)}: {len(_requests(outcomes))} requests\n{_summary(outcomes)}")
    _assert_all_answered(stack, outcomes)
    _assert_serves_at_once(stack)
    assert any(o.route == POST_JOB and o.status == 200 for o in outcomes), "no POST /jobs succeeded under load"
    _assert_no_job_lost_or_doubled(stack, outcomes)


def test_64_concurrent_clients_on_get_job_all_answered_and_served_at_once_after(stack: Stack) -> None:
    requests = 640
    outcomes = asyncio.run(_drive(stack, clients=64, requests=requests, mix={GET_JOB: 1}))
    print(f"\n{' '.join(stack.command)}: {len(_requests(outcomes))} requests\n{_summary(outcomes)}")
    _assert_all_answered(stack, outcomes)
    _assert_serves_at_once(stack)
