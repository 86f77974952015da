"""`hyperparameters.eval_samples` at POST /jobs and POST /jobs/estimate: the JSON schema describes it (the
dashboard's form is built from it), a job that can have samples is accepted with the value stored, and the specs
that cannot are refused in the OpenAI error shape naming the field and saying the fix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.factories import chat_rows, jsonl, spec, upload
from tests.support.http import assert_error, auth

PARAM = "hyperparameters.eval_samples"


@pytest.fixture
def chat_file(client, tenant) -> str:  # type: ignore[no-untyped-def]
    return upload(client, tenant[1], jsonl(chat_rows(8))).json()["id"]


def with_samples(training_file: str, n: int, **hyperparameters: Any) -> dict[str, Any]:
    body = spec(training_file)
    body["hyperparameters"] = {**body["hyperparameters"], "eval_samples": n, **hyperparameters}
    return body


def test_the_schema_describes_eval_samples_with_its_default_and_bounds(client) -> None:  # type: ignore[no-untyped-def]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    field = schema["Hyperparameters"]["properties"]["eval_samples"]
    assert (field["default"], field["minimum"], field["maximum"]) == (0, 0, 16)
    assert "validation" in field["description"] and "eval_samples" in field["description"]


def test_a_job_with_validation_data_and_eval_samples_is_accepted(client, tenant, chat_file) -> None:  # type: ignore[no-untyped-def]
    body = with_samples(chat_file, 3, eval_steps=2)
    body["validation_file"] = chat_file
    resp = client.post("/jobs", headers=auth(tenant[1]), json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["hyperparameters"]["eval_samples"] == 3
    split = with_samples(chat_file, 2)
    split["validation_split"] = 0.25
    assert client.post("/jobs", headers=auth(tenant[1]), json=split).status_code == 200


def test_eval_samples_without_validation_data_is_400_naming_the_field(client, tenant, chat_file) -> None:  # type: ignore[no-untyped-def]
    for path in ("/jobs", "/jobs/estimate"):
        err = assert_error(client.post(path, headers=auth(tenant[1]), json=with_samples(chat_file, 2)), 400,
                           "invalid_eval_samples", PARAM)
        assert "validation_file or validation_split" in err["message"]


def test_eval_samples_with_evaluation_off_is_400_naming_the_field(client, tenant, chat_file) -> None:  # type: ignore[no-untyped-def]
    body = with_samples(chat_file, 2, eval_steps=None)
    body["validation_file"] = chat_file
    err = assert_error(client.post("/jobs", headers=auth(tenant[1]), json=body), 400, "invalid_eval_samples", PARAM)
    assert "eval_steps" in err["message"]


def test_eval_samples_for_a_reward_model_is_400_naming_the_field(client, tenant) -> None:  # type: ignore[no-untyped-def]
    pairs = [{"prompt": [{"role": "user", "content": f"Q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": "b"}]} for i in range(8)]
    file_id = upload(client, tenant[1], jsonl(pairs)).json()["id"]
    body = {**with_samples(file_id, 2), "stage": "rm", "validation_file": file_id}
    err = assert_error(client.post("/jobs", headers=auth(tenant[1]), json=body), 400, "invalid_eval_samples", PARAM)
    assert "reward model" in err["message"] and "remove eval_samples" in err["message"]


def test_more_eval_samples_than_the_maximum_is_refused_naming_the_field(client, tenant, chat_file) -> None:  # type: ignore[no-untyped-def]
    body = with_samples(chat_file, 17)
    body["validation_file"] = chat_file
    err = assert_error(client.post("/jobs", headers=auth(tenant[1]), json=body), 422, "invalid_value", PARAM)
    assert "16" in err["message"]
    assert_error(client.post("/jobs", headers=auth(tenant[1]), json={**body, "hyperparameters": {"eval_samples": -1}}),
                 422, "invalid_value", PARAM)
