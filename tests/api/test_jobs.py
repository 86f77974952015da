"""POST /jobs validation and the cancel of a job before it trains. No worker listens on this run's queues, so
the jobs created here stay in `validating_files`: that is what lets a cancel be observed before any training."""

from __future__ import annotations

import pytest

from common.redis_client import get_redis
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, make_tenant, spec, upload
from tests.support.http import assert_error, auth
from worker.maintenance import broker_job_ids


@pytest.fixture
def good_file(client, tenant) -> str:  # type: ignore[no-untyped-def]
    return upload(client, tenant[1], jsonl(chat_rows(8))).json()["id"]


def post_job(client, key, body, **headers):  # type: ignore[no-untyped-def]
    return client.post("/jobs", headers={**auth(key), **headers}, json=body)


@pytest.mark.usefixtures("tiny_model")  # the placement warning needs its estimate, which reads config.json
def test_create_job_starts_validating_files_and_enqueues_the_check(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    resp = post_job(client, tenant[1], spec(good_file, metadata={"team": "search"}))
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert (job["status"], job["model"], job["training_file"]) == ("validating_files", "tiny-llama", good_file)
    assert job["id"] in broker_job_ids(get_redis(), get_settings().validate_queue)
    assert job["stage"] == "sft"
    assert job["metadata"] == {"team": "search"} and job["hyperparameters"]["batch_size"] == 4
    got = client.get(f"/jobs/{job['id']}", headers=auth(tenant[1])).json()
    assert got["status"] == "validating_files" and got["queue_position"] is None
    events = client.get(f"/jobs/{job['id']}/events", headers=auth(tenant[1])).json()
    newest_first = [e["message"] for e in events["data"]]
    assert newest_first[0].startswith("No worker has registered in this pool yet")  # placement: no device yet
    assert newest_first[1].startswith(f"Validating training file: {good_file}")


def test_auto_hyperparameters_are_resolved(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    body = {"base_model": "tiny-llama", "training_file": good_file}
    job = post_job(client, tenant[1], body).json()
    hp = job["hyperparameters"]
    assert hp["n_epochs"] == 3 and hp["batch_size"] == 2 and hp["learning_rate"] == 2e-4


def test_unknown_field_is_422_naming_it(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    err = assert_error(post_job(client, tenant[1], spec(good_file, colour="blue")), 422, "unknown_field", "colour")
    assert "colour" in err["message"]
    nested = spec(good_file)
    nested["method"]["lora"]["rank"] = 8
    assert_error(post_job(client, tenant[1], nested), 422, "unknown_field", "method.lora.rank")


@pytest.mark.parametrize(("patch", "param"), [
    ({"method": {"type": "lora", "lora": {"r": 512}}}, "method.lora.r"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate"),
    ({"suffix": "Has Spaces!"}, "suffix"),
    ({"stage": "magic"}, "stage"),
])
def test_bad_values_are_422_with_param(client, tenant, good_file, patch, param) -> None:  # type: ignore[no-untyped-def]
    assert_error(post_job(client, tenant[1], spec(good_file, **patch)), 422, param=param)


def test_missing_training_file_field(client, tenant) -> None:  # type: ignore[no-untyped-def]
    assert_error(post_job(client, tenant[1], {"base_model": "tiny-llama"}), 422, "missing_field", "training_file")


def test_not_json_body(client, tenant) -> None:  # type: ignore[no-untyped-def]
    resp = client.post("/jobs", headers={**auth(tenant[1]), "Content-Type": "application/json"}, content=b"{oops")
    assert_error(resp, 422, "invalid_json")


def test_unknown_base_model_lists_registered(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    err = assert_error(post_job(client, tenant[1], spec(good_file, base_model="gpt-9")), 400, "model_not_found",
                       "base_model")
    assert "tiny-llama" in err["message"]


def test_file_that_cannot_feed_the_stage(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    err = assert_error(post_job(client, tenant[1], spec(good_file, stage="dpo", method={"type": "lora"})), 400,
                       "invalid_training_file", "training_file")
    assert "dpo" in err["message"] and "chat" in err["message"]


def test_file_with_errors_is_refused(client, tenant) -> None:  # type: ignore[no-untyped-def]
    bad = upload(client, tenant[1], b'{"messages": [{"role": "user", "content": "hi"}]}\n').json()
    assert bad["status"] == "error"
    err = assert_error(post_job(client, tenant[1], spec(bad["id"])), 400, "invalid_training_file", "training_file")
    assert "line 1" in err["message"]


def test_other_tenants_file_and_job_are_404(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    job_id = post_job(client, tenant[1], spec(good_file)).json()["id"]
    _, other = make_tenant()
    assert_error(post_job(client, other, spec(good_file)), 404, "file_not_found", "training_file")
    assert_error(client.get(f"/jobs/{job_id}", headers=auth(other)), 404, "job_not_found")
    assert_error(client.post(f"/jobs/{job_id}/cancel", headers=auth(other)), 404, "job_not_found")
    assert_error(client.get(f"/jobs/{job_id}/events", headers=auth(other)), 404, "job_not_found")
    assert client.get("/jobs", headers=auth(other)).json()["data"] == []


def test_cancel_job_before_it_trains(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    job_id = post_job(client, tenant[1], spec(good_file)).json()["id"]
    resp = client.post(f"/jobs/{job_id}/cancel", headers=auth(tenant[1]))
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    # it never trains: no worker may claim it
    from common import state
    from common.db import session_scope

    with session_scope() as session:
        assert state.claim(session, job_id, worker="w", lease_seconds=60) is None
    assert_error(client.post(f"/jobs/{job_id}/cancel", headers=auth(tenant[1])), 400, "job_not_cancellable")


def test_idempotency_key(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    first = post_job(client, tenant[1], spec(good_file), **{"Idempotency-Key": "k-1"}).json()
    again = post_job(client, tenant[1], spec(good_file), **{"Idempotency-Key": "k-1"}).json()
    assert first["id"] == again["id"]
    assert broker_job_ids(get_redis(), get_settings().validate_queue).count(first["id"]) == 1, "enqueued once"
    assert_error(post_job(client, tenant[1], spec(good_file, seed=7), **{"Idempotency-Key": "k-1"}), 400,
                 "idempotency_key_reused", "Idempotency-Key")


def test_idempotency_key_takes_a_default_written_out_for_the_same_job(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    first = post_job(client, tenant[1], spec(good_file), **{"Idempotency-Key": "k-defaults"}).json()
    spelled = {**spec(good_file), "resources": {"devices": 1}}
    again = post_job(client, tenant[1], spelled, **{"Idempotency-Key": "k-defaults"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    other = {**spec(good_file), "resources": {"devices": 2}}
    assert_error(post_job(client, tenant[1], other, **{"Idempotency-Key": "k-defaults"}), 400,
                 "idempotency_key_reused", "Idempotency-Key")


def test_list_jobs_filters_by_status(client, tenant, good_file) -> None:  # type: ignore[no-untyped-def]
    a = post_job(client, tenant[1], spec(good_file)).json()["id"]
    b = post_job(client, tenant[1], spec(good_file)).json()["id"]
    client.post(f"/jobs/{a}/cancel", headers=auth(tenant[1]))
    cancelled = client.get("/jobs?status=cancelled", headers=auth(tenant[1])).json()["data"]
    validating = client.get("/jobs?status=validating_files", headers=auth(tenant[1])).json()["data"]
    assert [j["id"] for j in cancelled] == [a] and [j["id"] for j in validating] == [b]
    assert_error(client.get("/jobs?status=nope", headers=auth(tenant[1])), 400, param="status")
