"""`resources.devices` over the API: the values POST /jobs refuses (each with the field and what to write instead),
the global batch that must split evenly over the devices, the job object showing what it asked for, and a job that
needs more devices than any worker of its pool has, refused at submission with the largest worker named."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete

from common import state
from common.db import session_scope
from common.models import Worker
from common.scheduling import placement
from common.schemas.job_spec import MAX_DEVICES
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, spec, upload
from tests.support.http import assert_error, auth

pytestmark = pytest.mark.usefixtures("tiny_model")  # the estimate reads its config.json


@pytest.fixture
def good_file(client, tenant) -> str:  # type: ignore[no-untyped-def]
    return str(upload(client, tenant[1], jsonl(chat_rows(16))).json()["id"])


def post_job(client: Any, key: str, body: dict[str, Any]) -> Any:
    return client.post("/jobs", headers=auth(key), json=body)


@pytest.mark.parametrize(("devices", "says"), [
    (0, "between 1 and 16"),
    (-2, "between 1 and 16"),
    (MAX_DEVICES + 1, "between 1 and 16"),
    (1.5, "whole number of devices"),
    ("two", "whole number of devices"),
    (True, "whole number of devices"),
    (None, "whole number of devices"),
])
def test_a_device_count_that_is_not_a_whole_number_from_1_to_16_is_refused_naming_the_field(  # type: ignore[no-untyped-def]
        client, tenant, good_file, devices, says) -> None:
    err = assert_error(post_job(client, tenant[1], spec(good_file, resources={"devices": devices})), 422,
                       "invalid_value", "resources.devices")
    assert says in err["message"] and "got" in err["message"], err


def test_an_unknown_resources_field_is_refused_naming_it(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    assert_error(post_job(client, tenant[1], spec(good_file, resources={"gpus": 2})), 422, "unknown_field",
                 "resources.gpus")


def test_a_batch_size_that_does_not_split_over_the_devices_is_refused_with_one_that_does(  # type: ignore[no-untyped-def]
        client, tenant, good_file) -> None:
    body = spec(good_file, resources={"devices": 2})
    body["hyperparameters"]["batch_size"] = 3
    err = assert_error(post_job(client, tenant[1], body), 422, "invalid_value")
    assert "multiple of resources.devices (2)" in err["message"] and "batch_size 2" in err["message"], err


def test_the_job_object_shows_its_devices_and_an_auto_batch_splits_over_them(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    body = {"base_model": "tiny-llama", "training_file": good_file, "resources": {"devices": 3}}
    created = post_job(client, tenant[1], body)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["resources"] == {"devices": 3}
    assert job["hyperparameters"]["batch_size"] % 3 == 0  # 16 rows: auto would be 4; the nearest split of 3
    got = client.get(f"/jobs/{job['id']}", headers=auth(tenant[1])).json()
    listed = client.get("/jobs", headers=auth(tenant[1])).json()["data"]
    assert got["resources"] == {"devices": 3} and [j["resources"] for j in listed if j["id"] == job["id"]] == [
        {"devices": 3}]
    default = post_job(client, tenant[1], spec(good_file)).json()
    assert default["resources"] == {"devices": 1}


@pytest.fixture
def two_device_worker() -> Iterator[placement.Device]:
    """A CPU worker of two devices registered in the API's pool for one test, removed after it."""
    d = placement.Device(id="test-resources-host:cpu", host="test-resources-host", kind="cpu",
                         device_name="Test CPU", memory_bytes=64 * 2**30, compute_capability=None, bf16=False,
                         bitsandbytes=False, flash_attention=False, devices=2)
    with session_scope() as session:
        placement.register(session, get_settings().celery_queue, [d], state.now())
    yield d
    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.id == d.id))


def test_a_job_needing_more_devices_than_any_worker_of_the_pool_has_is_refused_with_the_largest(  # type: ignore[no-untyped-def]
        client, good_file, tenant, two_device_worker) -> None:
    _, key = tenant
    err = assert_error(post_job(client, key, spec(good_file, resources={"devices": 4})), 400,
                       "insufficient_resources", "resources.devices")
    assert "needs 4 devices" in err["message"] and "has 2" in err["message"], err
    assert "TUNEQUEUE_WORKER_DEVICES" in err["message"] and two_device_worker.id in err["message"], err
    fits = post_job(client, key, spec(good_file, resources={"devices": 2}))
    assert fits.status_code == 200, fits.text
    listed = client.get("/workers", headers=auth(key)).json()["data"]
    assert [w["device"]["devices"] for w in listed if (w.get("device") or {}).get("id") == two_device_worker.id] == [2]
