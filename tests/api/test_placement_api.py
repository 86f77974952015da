"""Placement by fit over the API: POST /jobs/estimate, the job's `estimate`, POST /jobs refused with 400
insufficient_resources when no device registered in the API's pool can run the job (and accepted with a warning
event when none has registered), and GET /workers showing registered devices that are not live."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete

from common import state
from common.db import session_scope
from common.models import Worker
from common.scheduling import placement
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, make_tenant, spec, upload
from tests.support.http import assert_error
from tests.support.http import auth as bearer

GIB = 2**30
pytestmark = pytest.mark.usefixtures("tiny_model")  # the estimate reads its config.json


@pytest.fixture
def registered() -> Iterator[Any]:
    """Register devices in the API's pool (the run's queue) for one test; they are removed after it."""
    ids: list[str] = []

    def add(memory: int, name: str) -> placement.Device:
        d = placement.Device(id=f"test-placement-{name}:cpu", host=f"test-placement-{name}", kind="cpu",
                             device_name=f"{name} CPU", memory_bytes=memory, compute_capability=None, bf16=False,
                             bitsandbytes=False, flash_attention=False)
        with session_scope() as session:
            placement.register(session, get_settings().celery_queue, [d], state.now())
        ids.append(d.id)
        return d

    yield add
    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.id.in_(ids)))


def _file(client: Any, key: str) -> str:
    up = upload(client, key, jsonl(chat_rows(16)))
    assert up.status_code == 200, up.text
    return str(up.json()["id"])


def test_with_no_worker_registered_a_job_is_accepted_with_a_warning_event_and_carries_its_estimate(client) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    job = client.post("/jobs", json=spec(_file(client, key)), headers=bearer(key)).json()
    assert job["estimate"]["cpu"]["total_bytes"] > 0 and job["estimate"]["cuda"]["total_bytes"] > 0
    events = client.get(f"/jobs/{job['id']}/events", headers=bearer(key)).json()["data"]
    assert any(e["level"] == "warn" and e["message"].startswith("No worker has registered") for e in events)


def test_estimate_answers_per_registered_worker_and_creates_nothing(client, registered) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    file_id = _file(client, key)
    body = client.post("/jobs/estimate", json=spec(file_id), headers=bearer(key)).json()
    need = body["estimate"]["cpu"]["total_bytes"]
    assert body["object"] == "job.estimate" and body["runnable"] is None and body["workers"] == []
    registered(need // 2, "small")
    big = registered(need * 2, "big")
    body = client.post("/jobs/estimate", json=spec(file_id), headers=bearer(key)).json()
    assert {w["id"]: w["fits"] for w in body["workers"]} == {"test-placement-small:cpu": False, big.id: True}
    assert body["runnable"] is True
    assert client.get("/jobs", headers=bearer(key)).json()["data"] == [], "an estimate is not a job"
    assert_error(client.post("/jobs/estimate", json=spec("file-nope"), headers=bearer(key)), 404,
                 param="training_file")


def test_a_job_no_registered_worker_can_hold_is_400_insufficient_resources(client, registered) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    file_id = _file(client, key)
    need = client.post("/jobs/estimate", json=spec(file_id), headers=bearer(key)).json()["estimate"]["cpu"]
    registered(need["total_bytes"] // 2, "tight")
    err = assert_error(client.post("/jobs", json=spec(file_id), headers=bearer(key)), 400, "insufficient_resources",
                       "hyperparameters")
    assert "test-placement-tight:cpu" in err["message"] and "max_seq_length" in err["message"]
    assert client.get("/jobs", headers=bearer(key)).json()["data"] == []


def test_get_workers_shows_a_registered_device_not_live_now_as_offline_with_what_it_runs(client, registered) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    d = registered(3 * GIB, "offline")
    workers = {w["id"]: w for w in client.get("/workers", headers=bearer(key)).json()["data"]}
    shown = workers[d.id]
    assert shown["online"] is False and shown["busy"] is False
    assert shown["device"]["memory_bytes"] == 3 * GIB and shown["device"]["kind"] == "cpu"
    assert shown["device"]["bitsandbytes"] is False
