"""The queue on a real stack (tests/support/cluster.py: its own database and queues, the API and workers as real
processes), training the tiny model: issue 14's "Done when". A validation-only worker checks files, so that every
job is queued before the one training worker starts, and what that worker runs first is the policy's choice, not
the order messages happened to arrive in."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from common.models import JobEvent, JobRun, Worker
from tests.support.cluster import Cluster, api, tenant_key, wait_until
from tests.support.factories import chat_rows, jsonl

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}


def _spec(file_id: str, *, steps: int, priority: str = "normal") -> dict[str, Any]:
    return {"base_model": "tiny-llama", "training_file": file_id, "priority": priority, "seed": 7,
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"n_epochs": 1, "batch_size": 1, "max_steps": steps, "learning_rate": 5e-3,
                                "max_seq_length": 64, "logging_steps": 5, "save_steps": 1000}}


def _submit(client: httpx.Client, *, steps: int = 4, priority: str = "normal") -> str:
    up = client.post("/files", files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(16))))})
    assert up.status_code == 200, up.text
    resp = client.post("/jobs", json=_spec(up.json()["id"], steps=steps, priority=priority))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _db(cluster: Cluster) -> Session:
    return Session(create_engine(cluster.env["TUNEQUEUE_DATABASE_URL"]))


def _claim_order(cluster: Cluster) -> list[str]:
    with _db(cluster) as session:
        return list(session.scalars(select(JobRun.job_id).order_by(JobRun.started_at)))


def _status(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/jobs/{job_id}").json()["status"])


def _start(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker("validator", queues=f"{cluster.queue}.validate")


def test_tenant_b_submitting_after_tenant_as_four_jobs_runs_second_not_fifth(cluster: Cluster) -> None:
    _start(cluster)
    a = api(cluster, tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"]))
    b = api(cluster, tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"]))
    a_jobs = []
    for _ in range(4):
        a_jobs.append(_submit(a))
        time.sleep(0.05)  # distinct creation times: A's are all older than B's
    b_job = _submit(b)
    jobs = [*a_jobs, b_job]
    wait_until(lambda: all(_status(a if j in a_jobs else b, j) == "queued" for j in jobs), 60, "all five queued")
    cluster.start_worker("gpu", queues=cluster.queue)
    wait_until(lambda: len(_claim_order(cluster)) >= 2, 120, "two jobs to start")
    order = _claim_order(cluster)
    assert order[:2] == [a_jobs[0], b_job], f"{order}\n{cluster.logs()}"
    wait_until(lambda: _status(b, b_job) in TERMINAL, 120, "B's job to finish")
    done = b.get(f"/jobs/{b_job}").json()
    assert done["status"] == "succeeded", cluster.logs()
    # placement by fit: the worker registered its device, and the job records its measured peak beside the estimate
    assert done["estimate"]["measured_peak_bytes"] > 0 and done["estimate"]["cpu"]["total_bytes"] > 0
    devices = [w["device"] for w in b.get("/workers").json()["data"] if w["online"] and w["device"]]
    assert any(d["pool"] == cluster.queue and d["kind"] == "cpu" for d in devices), devices
    for job_id in a_jobs[1:]:  # the rest only cost time: the order is what this test is about
        a.post(f"/jobs/{job_id}/cancel")


def test_a_high_priority_job_preempts_a_low_one_which_resumes_from_its_checkpoint_and_succeeds(
        cluster: Cluster) -> None:
    cluster.env.update({"TUNEQUEUE_PREEMPT_AFTER_SECONDS": "1", "TUNEQUEUE_MAINTENANCE_SECONDS": "1"})
    _start(cluster)
    member_key, admin_key = tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"], ("member", "admin")).split()
    member, admin = api(cluster, member_key), api(cluster, admin_key)
    low = _submit(member, steps=400, priority="low")
    wait_until(lambda: _status(member, low) == "queued", 60, "the low job queued")
    cluster.start_worker("gpu", queues=cluster.queue)
    wait_until(lambda: (member.get(f"/jobs/{low}").json().get("progress") or {}).get("step", 0) >= 5, 120,
               "the low job to train a few steps")
    high = _submit(admin, steps=4, priority="high")

    wait_until(lambda: _status(admin, high) in TERMINAL, 180, "the high job to finish")
    assert _status(admin, high) == "succeeded", cluster.logs()
    wait_until(lambda: _status(member, low) in TERMINAL, 300, "the low job to finish")
    done = member.get(f"/jobs/{low}").json()
    assert done["status"] == "succeeded", f"{done}\n{cluster.logs()}"
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 400

    with _db(cluster) as session:
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == low).order_by(JobEvent.seq)))
        runs = list(session.scalars(select(JobRun).where(JobRun.job_id.in_([low, high])).order_by(JobRun.started_at)))
    assert [e.type for e in events].count("preempted") == 1, [e.message for e in events]
    resumed = [e.data["resumed_from_step"] for e in events if e.data and "resumed_from_step" in e.data]
    assert len(resumed) == 1 and resumed[0] >= 5, [e.message for e in events]
    assert [(r.job_id, r.end_reason) for r in runs] == [(low, "preempted"), (high, "succeeded"), (low, "succeeded")]


def test_a_job_at_its_tenants_max_job_hours_checkpoints_fails_time_limit_exceeded_and_can_be_resumed(
        cluster: Cluster) -> None:
    from common.services.quotas import set_quotas

    _start(cluster)
    cluster.start_worker("gpu", queues=cluster.queue)
    client = api(cluster, tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"]))
    tenant_id = client.get("/quota").json()["organization_id"]
    with _db(cluster) as session:
        set_quotas(session, tenant_id, {"max_job_hours": 15 / 3600})
        session.commit()
    job_id = _submit(client, steps=4000)
    wait_until(lambda: _status(client, job_id) in TERMINAL, 180, "the job to be stopped")
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "time_limit_exceeded", f"{job}\n{cluster.logs()}"
    assert "resume_from" in job["error"]["message"]
    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints and checkpoints[0]["step_number"] > 0, checkpoints

    with _db(cluster) as session:
        set_quotas(session, tenant_id, {"max_job_hours": None})
        session.commit()
    file_id = client.get(f"/jobs/{job_id}").json()["training_file"]
    resumed = client.post("/jobs", json={**_spec(file_id, steps=4000), "resume_from": checkpoints[0]["id"]})
    assert resumed.status_code == 200, resumed.text
    step = checkpoints[0]["step_number"]
    wait_until(lambda: any(e.get("data") and e["data"].get("resumed_from_step") == step
                           for e in client.get(f"/jobs/{resumed.json()['id']}/events?limit=100").json()["data"]),
               120, "the new job to resume from the checkpoint")
    client.post(f"/jobs/{resumed.json()['id']}/cancel")


def test_a_training_worker_registers_its_device_at_start_and_a_validation_only_worker_does_not(
        cluster: Cluster) -> None:
    _start(cluster)
    client = api(cluster, tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"]))

    def pool_devices() -> list[str]:
        with _db(cluster) as session:
            return list(session.scalars(select(Worker.kind).where(Worker.queue == cluster.queue)))

    assert pool_devices() == [], "the validation-only worker registered a device"
    waiting = _submit(client)
    events = [e["message"] for e in client.get(f"/jobs/{waiting}/events").json()["data"]]
    assert any(m.startswith("No worker has registered in this pool yet") for m in events), events
    assert client.post(f"/jobs/{waiting}/cancel").status_code == 200  # nothing to claim: only start-up registers
    cluster.start_worker("gpu", queues=cluster.queue)
    wait_until(lambda: pool_devices() == ["cpu"], 30, "the training worker's device in the pool")
    later = _submit(client)
    events = [e["message"] for e in client.get(f"/jobs/{later}/events").json()["data"]]
    assert not any(m.startswith("No worker has registered") for m in events), events
