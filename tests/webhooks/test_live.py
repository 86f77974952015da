"""Webhooks on a real stack (tests/support/cluster.py: its own database and queues, the API and Celery workers as
real processes, the tiny model trained): a job's lifecycle reaches a real receiver as signed deliveries, and a
worker killed in the middle of an attempt loses nothing: another sends the same event under the same webhook-id.
The receiver listens on 127.0.0.1, so the processes run with TUNEQUEUE_WEBHOOK_ALLOW=127.0.0.1."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from common import auth, state
from common.ids import new_id
from common.models import File, Job, WebhookDelivery
from common.schemas.job_spec import JobSpec, stored_spec
from common.services import webhooks as service
from common.webhooks import events
from common.webhooks.events import EVENT_TYPES
from tests.support.cluster import Cluster, api, tenant_key, wait_until
from tests.support.factories import chat_rows, jsonl
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.slow
FAST_WEBHOOKS = {"TUNEQUEUE_WEBHOOK_ALLOW": "127.0.0.1", "TUNEQUEUE_WEBHOOK_POLL_SECONDS": "0.2"}


@pytest.fixture
def webhook_cluster(tiny_model: Path, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, **FAST_WEBHOOKS)
    try:
        yield c
    finally:
        c.close()


def _kinds(receiver: Receiver) -> list[str]:
    import json

    return [json.loads(r.body)["type"] for r in receiver.received]


def test_a_jobs_lifecycle_reaches_a_real_receiver_as_signed_queued_running_checkpoint_and_succeeded_deliveries(
        webhook_cluster: Cluster, receiver: Receiver) -> None:
    cluster = webhook_cluster
    cluster.start_api()
    cluster.start_worker("worker")
    client = api(cluster, tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"], ("admin",)))
    made = client.post("/webhooks", json={"url": receiver.url})
    assert made.status_code == 200, made.text
    receiver.secrets.append(made.json()["secret"])
    up = client.post("/files", files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(16))))})
    spec: dict[str, Any] = {"base_model": "tiny-llama", "training_file": up.json()["id"], "seed": 7,
                            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                            "hyperparameters": {"n_epochs": 1, "batch_size": 1, "max_steps": 4, "save_steps": 2,
                                                "learning_rate": 5e-3, "max_seq_length": 64}}
    job_id = client.post("/jobs", json=spec).json()["id"]
    wait_until(lambda: events.SUCCEEDED in _kinds(receiver), 240, f"the succeeded webhook\n{cluster.logs()}")
    cancelled = client.post("/jobs", json=spec).json()["id"]  # a second job, cancelled before it runs
    assert client.post(f"/jobs/{cancelled}/cancel").status_code == 200
    wait_until(lambda: events.CANCELLED in _kinds(receiver), 60, "the cancelled webhook")

    assert all(r.verified for r in receiver.received), [r.headers for r in receiver.received]
    import json

    bodies = [json.loads(r.body) for r in receiver.received]
    of_job = [b["type"] for b in sorted(bodies, key=lambda b: b["created_at"]) if b["data"]["id"] == job_id]
    assert of_job[0] == events.QUEUED and of_job[1] == events.RUNNING and of_job[-1] == events.SUCCEEDED, of_job
    assert of_job.count(events.CHECKPOINT) >= 1, of_job
    assert [b["type"] for b in bodies if b["data"]["id"] == cancelled] == [events.CANCELLED]
    assert len({r.webhook_id for r in receiver.received}) == len(receiver.received)  # one request per event
    assert all(b["id"] == r.webhook_id for b, r in zip(bodies, receiver.received, strict=True))
    shown = client.get(f"/webhooks/{made.json()['id']}/deliveries?limit=100").json()["data"]
    assert len(shown) == len(receiver.received) and {d["state"] for d in shown} == {"delivered"}


def _job_in(session: Session, tenant_id: str) -> Job:
    file = File(id=new_id("file"), tenant_id=tenant_id, filename="x.jsonl", storage_key="files/none",
                status="processed", format="chat", stages=["sft"], row_count=1)
    session.add(file)
    session.flush()
    job = Job(id=new_id("ftjob"), tenant_id=tenant_id, base_model="tiny-llama", training_file_id=file.id,
              spec=stored_spec(JobSpec(base_model="tiny-llama", training_file=file.id), 1),
              status="validating_files", attempt=0, queue="nowhere")  # no worker's pool: only its events matter
    session.add(job)
    session.flush()
    return job


def test_a_worker_killed_mid_attempt_loses_nothing_and_another_sends_the_same_webhook_id(
        webhook_cluster: Cluster, receiver: Receiver) -> None:
    cluster = webhook_cluster
    engine = create_engine(cluster.env["TUNEQUEUE_DATABASE_URL"])
    with Session(engine, expire_on_commit=False) as session:
        tenant = auth.create_tenant(session, "killed-sender")
        endpoint = service.create(session, tenant.id, url=receiver.url, events=list(EVENT_TYPES), description="",
                                  user="default")
        receiver.secrets.append(endpoint.secret)
        job = _job_in(session, tenant.id)
        receiver.hold_next()  # the first attempt reaches the receiver and gets no answer
        state.mark_queued(session, job)
        session.commit()
    cluster.start_worker("first")
    assert receiver.wait_holding(60), cluster.logs()
    cluster.signal("first", signal.SIGKILL)  # the sender dies holding the row, before it wrote anything
    cluster.wait_exit("first", 30)
    with Session(engine) as session:
        [row] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)).all()
        assert (row.state, row.attempts) == ("pending", 0)  # the lost attempt committed nothing: still due
    receiver.release()
    cluster.start_worker("second")
    wait_until(lambda: len(receiver.received) >= 2 and _state(engine, endpoint.id) == "delivered", 60,
               f"the second worker to deliver\n{cluster.logs()}")
    assert {r.webhook_id for r in receiver.received} == {row.event_id}  # the same id on both: receivers dedupe
    assert all(r.verified for r in receiver.received) and len({r.body for r in receiver.received}) == 1
    with Session(engine) as session:
        [row] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)).all()
    assert (row.state, row.attempts, row.last_status_code) == ("delivered", 1, 200)
    engine.dispose()


def _state(engine: Any, endpoint_id: str) -> str | None:
    with Session(engine) as session:
        return session.scalar(select(WebhookDelivery.state).where(WebhookDelivery.endpoint_id == endpoint_id))
