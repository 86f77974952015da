"""Events (paginated and Server-Sent Events), metrics series, checkpoints and live progress of a job driven by hand:
the state machine claims and finishes it, and the worker's real relay (`ProgressRelay`) reports its progress, over
the real Postgres and Redis. The streams run against the app in a real uvicorn on a free port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from common.db import session_scope
from common.ids import new_id
from common.models import Checkpoint, Job, JobEvent
from common.progress import ProgressChannel
from common.worker_registry import WorkerRegistry
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth
from tests.support.jobs import claim, finish, lose_lease, progress, queued_job, relay
from tests.support.redis_keys import drop_redis_keys
from tests.support.servers import uvicorn_in_thread
from tests.support.sse import SseReader
from tests.support.waiting import wait_until
from worker import relay as relay_module


def db_event_seqs(job_id: str) -> list[int]:
    with session_scope() as session:
        return list(session.scalars(select(JobEvent.seq).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The app in a real uvicorn (streams need a real server: the test client buffers whole responses)."""
    from api.main import create_app

    with uvicorn_in_thread(create_app()) as url:
        yield url


# --- the stream ---------------------------------------------------------------------------------------------


def test_stream_follows_a_job_in_order_and_resumes_without_gaps_or_duplicates(server, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    first = SseReader(server, key, job_id, stop_when=lambda frames: any(
        f["event"] == "message" and f["data"]["type"] == "metrics" and f["data"]["data"]["step"] == 3
        for f in frames))
    first.start()
    attempt = claim(job_id)
    r = relay(job_id, tenant_id, attempt)
    wait_until(lambda: any(f["data"].get("data", {}) and f["data"]["data"].get("status") == "running"
                           for f in first.messages()), what="the running event on the stream")
    r.handle(progress(1))
    # Live progress rides along as `event: progress` frames without an id (not part of the durable sequence).
    live = wait_until(lambda: [f for f in first.frames if f["event"] == "progress"], what="a progress frame")
    assert live[-1]["id"] is None and live[-1]["data"]["object"] == "fine_tuning.job.progress"
    assert live[-1]["data"]["step"] == 1 and live[-1]["data"]["gpus"] == []
    for step in (2, 3, 4):
        r.handle(progress(step))
    first.finish()  # it disconnected after step 3's event

    # More happens while no one listens.
    r.handle({"type": "log", "level": "warning", "message": "the tokenizer has no pad token; using eos"})
    for step in range(5, 9):
        r.handle(progress(step))
    finish(job_id, attempt)

    got = first.messages()
    last_id = int(got[-1]["id"])
    resumed = SseReader(server, key, job_id, last_event_id=last_id)
    resumed.start()
    resumed.finish()
    assert resumed.status == 200 and resumed.content_type and resumed.content_type.startswith("text/event-stream")

    seqs = db_event_seqs(job_id)
    ids = [int(f["id"]) for f in got + resumed.messages()]
    assert ids == seqs, "exactly every event once, in order, across the reconnect"
    assert all(f["data"]["seq"] == int(f["id"]) for f in got + resumed.messages())
    steps = [f["data"]["data"]["step"] for f in got + resumed.messages() if f["data"]["type"] == "metrics"]
    assert steps == list(range(1, 9))
    states = [f["data"]["data"]["status"] for f in got + resumed.messages() if f["data"]["type"] == "state"]
    assert states == ["queued", "running", "succeeded"]
    assert resumed.frames[-1]["event"] == "done" and resumed.frames[-1]["data"]["status"] == "succeeded"
    assert resumed.frames[-2]["data"]["data"]["status"] == "succeeded", "done comes after the terminal event"

    # A reconnect after the end has nothing to wait for: 204 tells an EventSource to stop.
    after_end = httpx.get(f"{server}/jobs/{job_id}/events?stream=true",
                          headers={**auth(key), "Last-Event-ID": str(seqs[-1])})
    assert after_end.status_code == 204
    # Accept: text/event-stream alone asks for the stream too; a finished job's stream replays and ends.
    whole = SseReader(server, key, job_id, use_accept=True)
    whole.start()
    assert [int(f["id"]) for f in whole.finish().messages()] == seqs
    ProgressChannel().clear(job_id)


def test_stream_of_a_finished_job_replays_from_last_event_id_query(server, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    attempt = claim(job_id)
    finish(job_id, attempt, "failed")
    seqs = db_event_seqs(job_id)
    resp = httpx.get(f"{server}/jobs/{job_id}/events?stream=true&last_event_id={seqs[0]}", headers=auth(key))
    assert resp.status_code == 200
    ids = [int(line[4:]) for line in resp.text.splitlines() if line.startswith("id: ")]
    assert ids == seqs[1:]
    assert "event: done" in resp.text


def test_a_long_stream_ends_without_done_and_the_client_resumes(server, tenant, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from api.routes import jobs as jobs_routes

    monkeypatch.setattr(jobs_routes, "STREAM_MAX_SECONDS", 1.0)
    monkeypatch.setattr(jobs_routes, "STREAM_KEEPALIVE_SECONDS", 0.2)
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    attempt = claim(job_id)
    started = time.monotonic()
    resp = httpx.get(f"{server}/jobs/{job_id}/events?stream=true", headers=auth(key), timeout=30)
    assert resp.status_code == 200 and 1.0 <= time.monotonic() - started < 10
    assert "event: done" not in resp.text and ": keep-alive" in resp.text and resp.text.startswith("retry: ")
    ids = [int(line[4:]) for line in resp.text.splitlines() if line.startswith("id: ")]
    assert ids == db_event_seqs(job_id)
    finish(job_id, attempt, "cancelled")
    rest = httpx.get(f"{server}/jobs/{job_id}/events?stream=true", headers={**auth(key), "Last-Event-ID": str(ids[-1])})
    assert [int(line[4:]) for line in rest.text.splitlines() if line.startswith("id: ")] == db_event_seqs(job_id)[-1:]
    assert "event: done" in rest.text


@pytest.mark.parametrize(("query", "headers", "param", "code"), [
    ("stream=true", {"Last-Event-ID": "abc"}, "Last-Event-ID", "invalid_last_event_id"),
    ("stream=true", {"Last-Event-ID": "-4"}, "Last-Event-ID", "invalid_last_event_id"),
    ("stream=true&last_event_id=1.5", {}, "last_event_id", "invalid_last_event_id"),
    ("stream=true&after=ftevent-x", {}, "after", None),
    ("limit=0", {}, "limit", None),
    ("limit=101", {}, "limit", None),
    ("after=ftevent-nope", {}, "after", "invalid_cursor"),
])
def test_bad_event_requests_are_400(client, tenant, query, headers, param, code) -> None:  # type: ignore[no-untyped-def]
    job_id = queued_job(tenant[0])
    resp = client.get(f"/jobs/{job_id}/events?{query}", headers={**auth(tenant[1]), **headers})
    assert_error(resp, 400, code, param)


def test_events_of_another_tenant_are_404_also_as_a_stream(client, tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = queued_job(tenant[0])
    _, other = make_tenant()
    for path in ("events", "events?stream=true", "metrics", "checkpoints"):
        assert_error(client.get(f"/jobs/{job_id}/{path}", headers=auth(other)), 404, "job_not_found", "job_id")
    assert_error(client.get(f"/jobs/{job_id}/events?stream=maybe", headers=auth(tenant[1])), 422, param="stream")


def test_event_pages_are_newest_first(client, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    attempt = claim(job_id)
    r = relay(job_id, tenant_id, attempt)
    for step in range(1, 6):
        r.handle(progress(step))
    page = client.get(f"/jobs/{job_id}/events?limit=3", headers=auth(key)).json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 3
    rest = client.get(f"/jobs/{job_id}/events?limit=100&after={page['last_id']}", headers=auth(key)).json()
    seqs = [e["seq"] for e in page["data"] + rest["data"]]
    assert seqs == sorted(db_event_seqs(job_id), reverse=True) and rest["has_more"] is False
    event = page["data"][0]
    assert event["object"] == "fine_tuning.job.event" and event["id"].startswith("ftevent-")
    assert event["type"] == "metrics" and event["data"]["step"] == 5 and event["message"].startswith("Step 5/8")
    ProgressChannel().clear(job_id)


# --- progress in GET /jobs/{id} --------------------------------------------------------------------------


def test_progress_survives_a_redis_flush_and_returns_at_the_next_step(client, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    queued = client.get(f"/jobs/{job_id}", headers=auth(key)).json()
    assert queued["queue_position"] >= 1 and queued["progress"] is None and queued["estimated_finish"] is None
    attempt = claim(job_id)
    r = relay(job_id, tenant_id, attempt)
    r.handle(progress(1))
    r.handle(progress(2))
    job = client.get(f"/jobs/{job_id}", headers=auth(key)).json()
    p = job["progress"]
    assert job["status"] == "running" and job["queue_position"] is None
    assert {"step", "total_steps", "epoch", "loss", "learning_rate", "tokens_per_second", "eta_seconds", "gpus",
            "updated_at"} <= set(p)
    assert (p["step"], p["total_steps"], p["gpus"]) == (2, 8, [])
    assert job["estimated_finish"] == int(p["updated_at"] + p["eta_seconds"])

    drop_redis_keys(job_id)
    assert ProgressChannel().read_progress(job_id) is None
    truth = client.get(f"/jobs/{job_id}", headers=auth(key)).json()
    assert truth["status"] == "running" and truth["progress"]["step"] == 2, "Postgres still knows"
    assert truth["progress"]["loss"] == p["loss"] and truth["estimated_finish"] == job["estimated_finish"]

    r.handle(progress(3))
    back = ProgressChannel().read_progress(job_id)
    assert back is not None and back["step"] == 3, "the live view is back at the next step"
    assert client.get(f"/jobs/{job_id}", headers=auth(key)).json()["progress"]["step"] == 3
    finish(job_id, attempt)
    done = client.get(f"/jobs/{job_id}", headers=auth(key)).json()
    assert done["progress"]["step"] == 3 and done["estimated_finish"] is None
    ProgressChannel().clear(job_id)


def test_a_live_view_left_by_an_earlier_attempt_is_not_shown(client, tenant, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(relay_module, "DB_PROGRESS_SECONDS", 3600.0)  # a report that is not due stays in Redis
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    first = claim(job_id)
    old = relay(job_id, tenant_id, first, metrics_event_every=100)
    old.handle(progress(5))  # the first report is recorded in Postgres too
    old.handle(progress(6))  # not due: Redis only
    lose_lease(job_id)
    second = claim(job_id)
    left = ProgressChannel().read_progress(job_id)
    assert left is not None and (left["attempt"], left["step"]) == (first, 6)
    p = client.get(f"/jobs/{job_id}", headers=auth(key)).json()["progress"]
    assert (p["attempt"], p["step"]) == (first, 5), "Postgres' last record, not the earlier attempt's live view"
    relay(job_id, tenant_id, second).handle(progress(2))
    p = client.get(f"/jobs/{job_id}", headers=auth(key)).json()["progress"]
    assert (p["attempt"], p["step"]) == (second, 2)
    ProgressChannel().clear(job_id)


# --- metrics series and checkpoints ----------------------------------------------------------------------


def test_metrics_series_one_point_per_step_newest_attempt_wins(client, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    first = claim(job_id)
    r = relay(job_id, tenant_id, first)
    for step in range(1, 6):
        r.handle(progress(step, total=10, peak_memory_mb=512.0))
    lose_lease(job_id)  # requeued; the next attempt resumes from step 2
    second = claim(job_id)
    r2 = relay(job_id, tenant_id, second)
    r2.handle(progress(3, total=10, loss=9.0))
    r2.handle(progress(4, total=10, loss=None, valid_loss=1.25, valid_preference_accuracy=0.5))

    body = client.get(f"/jobs/{job_id}/metrics", headers=auth(key)).json()
    assert body["object"] == "list" and body["job_id"] == job_id and body["has_more"] is False
    points = body["data"]
    assert [(p["step"], p["attempt"]) for p in points] == [(1, first), (2, first), (3, second), (4, second)]
    assert points[2]["loss"] == 9.0 and points[0]["peak_memory_mb"] == 512.0
    assert (points[3]["valid_loss"], points[3]["valid_preference_accuracy"], points[3]["loss"]) == (1.25, 0.5, None)
    assert points[3]["valid_mean_token_accuracy"] is None
    assert {"learning_rate", "tokens_per_second", "gpu_memory_mb", "trained_tokens", "created_at"} <= set(points[0])
    page = client.get(f"/jobs/{job_id}/metrics?after_step=1&limit=2", headers=auth(key)).json()
    assert [p["step"] for p in page["data"]] == [2, 3] and page["has_more"] is True
    for query, param in (("limit=0", "limit"), ("limit=10001", "limit"), ("after_step=-1", "after_step")):
        assert_error(client.get(f"/jobs/{job_id}/metrics?{query}", headers=auth(key)), 400, param=param)
    assert_error(client.get(f"/jobs/{job_id}/metrics?after_step=x", headers=auth(key)), 422, param="after_step")
    ProgressChannel().clear(job_id)


def test_checkpoints_are_openai_checkpoint_objects(client, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    job_id = queued_job(tenant_id)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(spec={"stage": "sft", "suffix": "bot"}))
        for step, metrics in ((10, {"loss": 2.5}), (20, {"train_loss": 1.5, "eval_loss": 1.75, "lr": 1e-4}),
                              (30, {"train_loss": 1.0, "valid_loss": 1.2, "full_valid_loss": 1.1})):
            session.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, tenant_id=tenant_id, step=step,
                                   metrics=metrics, storage_key=f"checkpoints/{job_id}/{step}", attempt=1))
            session.flush()
    page = client.get(f"/jobs/{job_id}/checkpoints?limit=2", headers=auth(key)).json()
    assert page["object"] == "list" and page["has_more"] is True
    newest = page["data"][0]
    assert newest["object"] == "fine_tuning.job.checkpoint" and newest["id"].startswith("ftckpt-")
    assert newest["step_number"] == 30 and newest["fine_tuning_job_id"] == job_id
    assert newest["fine_tuned_model_checkpoint"] == f"ft:tiny-llama:bot:{job_id}:ckpt-step-30"
    assert newest["metrics"]["step"] == 30 and newest["metrics"]["full_valid_loss"] == 1.1
    assert {"train_loss": 1.5, "valid_loss": 1.75, "lr": 1e-4}.items() <= page["data"][1]["metrics"].items()
    rest = client.get(f"/jobs/{job_id}/checkpoints?after={page['last_id']}", headers=auth(key)).json()
    assert [c["step_number"] for c in rest["data"]] == [10] and rest["data"][0]["metrics"]["train_loss"] == 2.5
    assert_error(client.get(f"/jobs/{job_id}/checkpoints?after=ftckpt-nope", headers=auth(key)), 400, param="after")
    assert_error(client.get(f"/jobs/{job_id}/checkpoints?limit=0", headers=auth(key)), 400, param="limit")
    assert client.get(f"/jobs/{queued_job(tenant_id)}/checkpoints", headers=auth(key)).json()["data"] == []


# --- workers --------------------------------------------------------------------------------------------


def test_workers_show_gpus_to_all_and_jobs_to_their_owner_or_the_operator(client, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    _, other = make_tenant()
    _, other_admin = make_tenant(role="admin")
    _, operator = make_tenant(role="operator")
    host = f"test-host-{new_id('h')[-8:]}"
    registry = WorkerRegistry()
    gpu = {"index": 0, "name": "Stand-in GPU", "memory_used_mb": 1024.0, "memory_total_mb": 81559.0,
           "memory_free_mb": 80535.0, "utilization_pct": 87.0}
    registry.register(host, "0", {"host": host, "worker": f"{host}:1", "gpu": gpu, "job_id": "ftjob-mine",
                                        "tenant_id": tenant_id, "attempt": 1, "updated_at": time.time()}, 30)
    registry.register(host, "1", {"host": host, "worker": f"{host}:2", "gpu": {**gpu, "index": 1},
                                        "job_id": None, "tenant_id": None, "updated_at": time.time()}, 30)
    try:
        def mine(k: str) -> list[dict[str, Any]]:
            resp = client.get("/workers", headers=auth(k))
            assert resp.status_code == 200, resp.text
            return [w for w in resp.json()["data"] if w["host"] == host]

        own = mine(key)
        assert [w["id"] for w in own] == [f"{host}:0", f"{host}:1"]
        assert own[0]["busy"] and own[0]["job"]["id"] == "ftjob-mine" and "organization_id" not in own[0]["job"]
        assert own[0]["gpu"]["memory_total_mb"] == 81559.0 and 0 < own[0]["expires_in"] <= 30
        assert not own[1]["busy"] and own[1]["job"] is None
        theirs = mine(other)
        assert theirs[0]["busy"] and theirs[0]["job"] is None, "another tenant's job stays hidden"
        assert mine(other_admin)[0]["job"] is None, "from another tenant's admin too"
        assert mine(operator)[0]["job"]["organization_id"] == tenant_id
        assert_error(client.get("/workers"), 401)
    finally:
        registry.unregister(host, "0")
        registry.unregister(host, "1")
