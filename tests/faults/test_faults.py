"""The fault-injection suite (issue 7): every scenario owns its processes (and, where it restarts one, its own
redis-server or Postgres cluster), is bounded in time, and checks the promise — nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import Session

from common.models import Checkpoint, Job, JobEvent, Model
from tests.support.cluster import Cluster, OwnPostgres, OwnRedis, api, tenant_key, training_children, wait_until
from tests.support.factories import chat_rows, jsonl

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}


def long_spec(file_id: str, **hp: Any) -> dict[str, Any]:
    """~130 optimizer steps of the tiny model: long enough to be hit mid-training."""
    hyper = {"n_epochs": 2, "batch_size": 1, "learning_rate": 5e-3, "max_seq_length": 64, "logging_steps": 5}
    hyper.update(hp)
    return {"base_model": "tiny-llama", "training_file": file_id, "hyperparameters": hyper, "seed": 7,
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}


def submit(client: httpx.Client, rows: int = 64, **hp: Any) -> str:
    up = client.post("/files", files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(rows))))})
    assert up.status_code == 200, up.text
    resp = client.post("/jobs", json=long_spec(up.json()["id"], **hp))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def job_row(db_url: str, job_id: str) -> Job:
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            return session.get_one(Job, job_id)
    finally:
        engine.dispose()


def count(db_url: str, model: Any, job_id: str, *where: Any) -> int:
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(model)
                                      .where(model.job_id == job_id, *where)) or 0)
    finally:
        engine.dispose()


def events(db_url: str, job_id: str) -> list[JobEvent]:
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    finally:
        engine.dispose()


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float, cluster: Cluster) -> dict:
    try:
        return wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in statuses and j,
                          timeout, f"{job_id} to reach {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None


def wait_checkpoint(db_url: str, job_id: str, cluster: Cluster, timeout: float = 90) -> None:
    try:
        wait_until(lambda: count(db_url, Checkpoint, job_id) >= 1, timeout, "a first checkpoint")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from None


def db_url(cluster: Cluster) -> str:
    return cluster.env["TUNEQUEUE_DATABASE_URL"]


def assert_completed_once(cluster: Cluster, client: httpx.Client, job_id: str) -> dict:
    job = wait_status(client, job_id, TERMINAL, 240, cluster)
    assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
    assert count(db_url(cluster), Model, job_id) == 1  # exactly one adapter published
    progress = job["progress"]
    assert progress["step"] == progress["total_steps"], progress  # the plan's optimizer steps, no more, no less
    return job


def test_1_sigkill_worker_resumes_elsewhere_from_checkpoint(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker("w1")
    client = api(cluster, tenant_key(db_url(cluster)))
    job_id = submit(client, save_steps=25)
    wait_checkpoint(db_url(cluster), job_id, cluster)
    children = training_children(job_id)
    assert children, "no training child found"
    cluster.signal("w1", signal.SIGKILL)  # the worker parent…
    wait_until(lambda: not training_children(job_id), 10, "the orphaned child to die with its parent")
    killed_at = time.monotonic()
    cluster.start_worker("w2")  # …and another worker takes over once the lease expires
    job = assert_completed_once(cluster, client, job_id)
    recovery = time.monotonic() - killed_at
    assert job["attempt"] == 2
    resumed = [e.data for e in events(db_url(cluster), job_id) if e.data and "resumed_from_step" in e.data]
    assert resumed and resumed[0]["resumed_from_step"] >= 25, [e.message for e in events(db_url(cluster), job_id)]
    print(f"scenario 1: recovered in {recovery:.1f}s, resumed from step {resumed[0]['resumed_from_step']}")

    # The same job uninterrupted ends at (nearly) the same loss: resuming restored optimizer, schedule and data order.
    reference = submit(client, save_steps=25)
    ref = assert_completed_once(cluster, client, reference)
    assert abs(job["progress"]["loss"] - ref["progress"]["loss"]) < 0.15 * ref["progress"]["loss"], (job, ref)


def test_2_sigkill_training_child_only(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker("w1")
    client = api(cluster, tenant_key(db_url(cluster)))
    job_id = submit(client, save_steps=25)
    wait_checkpoint(db_url(cluster), job_id, cluster)
    for pid in training_children(job_id):
        import os

        os.kill(pid, signal.SIGKILL)
    job = assert_completed_once(cluster, client, job_id)
    assert job["attempt"] == 2
    messages = [e.message for e in events(db_url(cluster), job_id)]
    assert any("killed by SIGKILL" in m for m in messages), messages
    assert any(m.startswith("Resuming from the checkpoint") for m in messages), messages


def test_3_double_delivery_trains_once(cluster: Cluster) -> None:
    cluster.start_api()
    # Workers listen to the run queue only: the job is made `queued` by hand, then its message is sent twice.
    cluster.start_worker("w1", queues=cluster.queue)
    cluster.start_worker("w2", queues=cluster.queue)
    client = api(cluster, tenant_key(db_url(cluster)))
    job_id = submit(client, rows=16, n_epochs=2)
    engine = create_engine(db_url(cluster))
    with Session(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="queued"))
        session.commit()
    engine.dispose()
    bell = Celery(broker=cluster.env["TUNEQUEUE_REDIS_URL"])
    for _ in range(2):
        bell.send_task("jobs.run", args=[job_id], queue=cluster.queue)
    assert_completed_once(cluster, client, job_id)
    started = [e for e in events(db_url(cluster), job_id)
               if e.type == "state" and (e.data or {}).get("status") == "running"]
    assert len(started) == 1 and job_row(db_url(cluster), job_id).attempt == 1
    wait_until(lambda: "nothing is claimable" in cluster.logs(), 20, "the second copy to be acked and dropped")


def test_4_redis_restart_loses_no_job(tiny_model: Path, tmp_path: Path) -> None:
    own = OwnRedis()
    own.start()
    cluster = Cluster(tmp_path, TUNEQUEUE_REDIS_URL=own.url)
    try:
        cluster.start_api()
        cluster.start_worker("w1")
        client = api(cluster, tenant_key(db_url(cluster)))
        jobs = [submit(client, rows=16, n_epochs=2) for _ in range(3)]
        wait_status(client, jobs[0], {"running"}, 60, cluster)
        own.restart()  # nothing persisted: every queued message and the unacked one are gone
        for job_id in jobs:
            job = wait_status(client, job_id, TERMINAL, 240, cluster)
            assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
            assert count(db_url(cluster), Model, job_id) == 1
        republished = [e for j in jobs for e in events(db_url(cluster), j) if "broker had no message" in e.message]
        assert republished, "the reconciler should have republished the lost messages"
    finally:
        cluster.close()
        own.close()


def test_5_postgres_restart_during_training(tiny_model: Path, tmp_path: Path) -> None:
    from common.db_setup import create_database, upgrade_database

    pg = OwnPostgres()
    pg.start()
    cluster = Cluster(tmp_path, TUNEQUEUE_DATABASE_URL=pg.url, TUNEQUEUE_LEASE_SECONDS="30")
    try:
        create_database(pg.url)
        upgrade_database(pg.url)
        cluster.start_api()
        cluster.start_worker("w1")
        client = api(cluster, tenant_key(pg.url))
        job_id = submit(client)
        wait_until(lambda: (client.get(f"/jobs/{job_id}").json().get("progress") or {}).get("step", 0) >= 5, 90,
                   "training to be under way")
        pg.restart()
        job = assert_completed_once(cluster, client, job_id)
        assert job["attempt"] == 1, "a database restart must not cost a retry"
        assert not [e for e in events(pg.url, job_id) if e.level == "error"], "no false failure"
    finally:
        cluster.close()
        pg.close()


def test_6_concurrent_posts_with_idempotency_keys(cluster: Cluster) -> None:
    cluster.start_api()  # no worker: only the API's bookkeeping is under test
    key = tenant_key(db_url(cluster))
    client = api(cluster, key)
    file_id = client.post("/files", files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(4))))}).json()["id"]
    body = long_spec(file_id)

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=60, limits=limits) as ac:
            keys = [f"k-{i}" for i in range(150)] + [f"k-{i}" for i in range(50)]
            return await asyncio.gather(*(ac.post("/jobs", json=body, headers={"Idempotency-Key": k})
                                          for k in keys))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses), {r.status_code: r.text for r in responses}
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 150 and ids[150:] == ids[:50]
    listed: set[str] = set()
    after = None
    while True:
        page = client.get("/jobs", params={"limit": 100, **({"after": after} if after else {})}).json()
        listed |= {j["id"] for j in page["data"]}
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert listed == set(ids)


def test_7_cancel_during_training(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker("w1")
    client = api(cluster, tenant_key(db_url(cluster)))
    job_id = submit(client)
    wait_until(lambda: (client.get(f"/jobs/{job_id}").json().get("progress") or {}).get("step", 0) >= 5, 90,
               "training to be under way")
    asked = time.monotonic()
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = wait_status(client, job_id, TERMINAL, 15, cluster)
    took = time.monotonic() - asked
    assert job["status"] == "cancelled", job
    assert not training_children(job_id), "the training child outlived the cancel"
    assert count(db_url(cluster), Model, job_id) == 0
    artifacts = Path(cluster.env["TUNEQUEUE_ARTIFACTS"]) / "models"
    assert not list(artifacts.glob(f"*/{job_id}")), "nothing is published after a cancel"
    print(f"scenario 7: cancelled {took:.1f}s after the request")


def test_8_injected_cuda_oom(tiny_model: Path, tmp_path: Path) -> None:
    """Every child of this worker meets a fake CUDA OOM at step 2: a fixed batch size fails with advice; with
    batch_size "auto" the worker halves the micro-batch, doubles accumulation, and the job succeeds."""
    cluster = Cluster(tmp_path, TUNEQUEUE_FAULT_INJECTION=json.dumps({"oom_at_step": 2}))
    try:
        cluster.start_api()
        cluster.start_worker("w1")
        client = api(cluster, tenant_key(db_url(cluster)))
        fixed = submit(client, rows=16, n_epochs=1, batch_size=4)
        auto = submit(client, rows=16, n_epochs=1, batch_size="auto")

        job = wait_status(client, fixed, TERMINAL, 120, cluster)
        assert job["status"] == "failed" and job["error"]["code"] == "cuda_oom", job
        assert "batch_size" in job["error"]["message"]

        job = wait_status(client, auto, TERMINAL, 120, cluster)
        assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
        retry = [e.data for e in events(db_url(cluster), auto) if e.data and "micro_batch_size" in e.data]
        assert retry and retry[0]["micro_batch_size"] < 4, [e.message for e in events(db_url(cluster), auto)]
    finally:
        cluster.close()


def test_9_sigterm_worker_checkpoints_and_hands_back(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker("w1")
    client = api(cluster, tenant_key(db_url(cluster)))
    job_id = submit(client, save_steps=1000)  # no periodic checkpoint: the one saved on SIGTERM is the resume point
    wait_until(lambda: (client.get(f"/jobs/{job_id}").json().get("progress") or {}).get("step", 0) >= 10, 90,
               "training to be under way")
    cluster.signal("w1", signal.SIGTERM)
    assert cluster.wait_exit("w1", 60) == 0
    queued = job_row(db_url(cluster), job_id)
    assert queued.status == "queued", queued.status  # handed back at once, not after a lease expiry
    assert count(db_url(cluster), Checkpoint, job_id) == 1
    cluster.start_worker("w2")
    job = assert_completed_once(cluster, client, job_id)
    assert job["attempt"] == 2
