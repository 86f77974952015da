"""One tenant's event streams against another's: a cap on the streams a tenant has open (a Redis sorted set shared
by every API worker; a stream that ends gives its place back, a crashed worker's entries lapse), and streams that
wait on a Redis announcement instead of polling Postgres, so an event arrives at once although nothing polls.
The app runs in a real uvicorn (streams need a real server), over the real Postgres and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from common.db import session_scope
from common.models import JobEvent
from common.settings import get_settings
from common.state import add_event
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth
from tests.support.jobs import queued_job
from tests.support.servers import uvicorn_in_thread
from tests.support.sse import SseReader
from tests.support.waiting import wait_until

CAP = 3


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    from api.main import create_app

    with uvicorn_in_thread(create_app()) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=httpx.Timeout(30, read=60),
                      limits=httpx.Limits(max_connections=200, max_keepalive_connections=0)) as client:
        yield client


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(get_settings(), "max_streams_per_tenant", CAP)
    return CAP


def cancel(job_id: str) -> None:
    """Ends the queued job, and with it the streams that follow it (`done`)."""
    from common.state import lock_job, request_cancel

    with session_scope() as session:
        job = lock_job(session, job_id)
        assert job is not None
        request_cancel(session, job)


class Streams:
    """Streams opened and held by the test (a real client connection each), closed at the end."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.open: list[httpx.Response] = []

    def start(self, job_id: str, key: str) -> httpx.Response:
        request = self.http.build_request("GET", f"/jobs/{job_id}/events?stream=true", headers=auth(key))
        resp = self.http.send(request, stream=True)
        if resp.status_code == 200:
            self.open.append(resp)
        else:
            resp.read()
            resp.close()
        return resp

    def close_all(self) -> None:
        for resp in self.open:
            resp.close()


@pytest.fixture
def streams(http: httpx.Client) -> Iterator[Streams]:
    held = Streams(http)
    try:
        yield held
    finally:
        held.close_all()


def test_a_tenant_at_its_stream_cap_is_refused_while_another_tenant_opens_one(streams, capped) -> None:  # type: ignore[no-untyped-def]
    tenant_a, key_a = make_tenant()
    tenant_b, key_b = make_tenant()
    job_a, job_b = queued_job(tenant_a), queued_job(tenant_b)
    for _ in range(capped):
        assert streams.start(job_a, key_a).status_code == 200
    refused = streams.start(job_a, key_a)
    err = assert_error(refused, 429, "too_many_streams")
    assert int(refused.headers["Retry-After"]) >= 1 and "TUNEQUEUE_MAX_STREAMS_PER_TENANT" in err["message"]
    assert streams.start(job_b, key_b).status_code == 200, "another tenant's streams are counted apart"


def test_a_closed_stream_gives_its_place_back(streams, capped) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = make_tenant()
    job_id = queued_job(tenant_id)
    held = [streams.start(job_id, key) for _ in range(capped)]
    assert all(r.status_code == 200 for r in held)
    assert_error(streams.start(job_id, key), 429, "too_many_streams")
    held[0].close()  # the client goes away mid-stream
    wait_until(lambda: streams.start(job_id, key).status_code == 200, timeout=10,
               what="a new stream once one closed")


def test_a_crashed_workers_streams_stop_counting_when_their_lease_ends(streams, capped) -> None:  # type: ignore[no-untyped-def]
    from api.rate_limits import streams_key
    from common.redis_client import get_redis

    tenant_id, key = make_tenant()
    job_id = queued_job(tenant_id)
    # What an API worker killed mid-stream leaves: entries whose lease (the score) nobody renews any more.
    get_redis().zadd(streams_key(tenant_id), {f"stream-dead-{i}": time.time() - 1 for i in range(capped)})
    for _ in range(capped):
        assert streams.start(job_id, key).status_code == 200
    assert_error(streams.start(job_id, key), 429, "too_many_streams")


def test_a_stream_gets_a_new_event_at_once_although_nothing_polls(server, tenant, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from api.routes import jobs as jobs_routes

    monkeypatch.setattr(get_settings(), "stream_fallback_seconds", 30.0)
    monkeypatch.setattr(jobs_routes, "STREAM_POLL_SECONDS", 30.0)
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    reader = SseReader(server, key, job_id)
    reader.start()
    wait_until(lambda: reader.messages(), what="the replayed `queued` event")
    time.sleep(0.5)  # the stream has read Postgres and waits
    with session_scope() as session:
        add_event(session, job_id, "a new event")
    committed = time.monotonic()
    wait_until(lambda: any(f["data"]["message"] == "a new event" for f in reader.messages()), timeout=5,
               what="the new event on the stream", interval=0.01)
    assert time.monotonic() - committed < 2.0
    cancel(job_id)
    assert reader.finish(timeout=5).frames[-1]["event"] == "done"


def test_an_event_that_was_never_announced_arrives_on_the_fallback_timer(server, tenant, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from api.routes import jobs as jobs_routes
    from common.ids import new_id

    monkeypatch.setattr(get_settings(), "stream_fallback_seconds", 1.0)
    monkeypatch.setattr(jobs_routes, "STREAM_POLL_SECONDS", 30.0)  # only the fallback timer can find it
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    reader = SseReader(server, key, job_id)
    reader.start()
    wait_until(lambda: reader.messages(), what="the replayed `queued` event")
    with session_scope() as session:  # written behind add_event's back: no announcement (a lost message)
        session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, tenant_id=tenant_id, level="info",
                             type="message", message="unannounced", data=None, attempt=0))
    wait_until(lambda: any(f["data"]["message"] == "unannounced" for f in reader.messages()), timeout=10,
               what="the unannounced event")
    cancel(job_id)
    reader.finish(timeout=5)


def test_another_tenant_is_served_while_one_tenant_holds_its_maximum_of_streams(http, streams, capped,  # type: ignore[no-untyped-def]
                                                                                 monkeypatch) -> None:
    monkeypatch.setattr(get_settings(), "max_streams_per_tenant", 20)
    tenant_a, key_a = make_tenant()
    job_a = queued_job(tenant_a)
    answers = [streams.start(job_a, key_a).status_code for _ in range(30)]
    assert answers.count(200) == 20 and answers.count(429) == 10
    tenant_b, key_b = make_tenant()
    queued_job(tenant_b)
    slowest = 0.0
    for _ in range(20):
        started = time.monotonic()
        assert http.get("/jobs", headers=auth(key_b)).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 1.0, f"another tenant's GET /jobs took {slowest:.2f} s"
