"""The official `openai` SDK against the OpenAI-compatible surface: files and fine-tuning jobs."""

from __future__ import annotations

import io
from typing import Any

import openai
import pytest

from common.redis_client import get_redis
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, make_tenant
from worker.maintenance import broker_job_ids


@pytest.fixture
def sdk(client, tenant) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url="http://testserver/v1", api_key=tenant[1], http_client=client, max_retries=0)


def test_files_and_jobs_through_the_sdk(sdk: openai.OpenAI) -> None:
    uploaded = sdk.files.create(file=("train.jsonl", io.BytesIO(jsonl(chat_rows(8)))), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed" and uploaded.bytes > 0
    assert sdk.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert uploaded.id in [f.id for f in sdk.files.list()]

    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="sdk", seed=3,
                                      method={"type": "supervised", "supervised": {"hyperparameters": {
                                          "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}}},
                                      metadata={"team": "search"})
    assert job.object == "fine_tuning.job" and job.model == "tiny-llama" and job.status == "validating_files"
    assert job.id in broker_job_ids(get_redis(), get_settings().validate_queue), "submitted like POST /jobs"
    assert job.seed == 3 and job.metadata == {"team": "search"}
    again = sdk.fine_tuning.jobs.retrieve(job.id)
    assert again.hyperparameters.n_epochs == 2 and again.hyperparameters.batch_size == 4
    assert job.id in [j.id for j in sdk.fine_tuning.jobs.list(limit=5)]
    events = sdk.fine_tuning.jobs.list_events(job.id)
    assert events.data and events.data[-1].message.startswith("Created fine-tuning job")
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def test_learning_rate_multiplier_scales_the_lora_default(sdk: openai.OpenAI) -> None:
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id,
                                      hyperparameters={"learning_rate_multiplier": 0.5})
    assert sdk.fine_tuning.jobs.retrieve(job.id).model_dump()["hyperparameters"]["learning_rate"] == pytest.approx(1e-4)


def test_learning_rate_multiplier_scales_the_dpo_default_not_the_supervised_one(sdk: openai.OpenAI) -> None:
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)]
    file_id = sdk.files.create(file=("p.jsonl", io.BytesIO(jsonl(rows))), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"learning_rate_multiplier": 2.0}}})
    assert sdk.fine_tuning.jobs.retrieve(job.id).model_dump()["hyperparameters"]["learning_rate"] == pytest.approx(1e-5)


def test_method_type_reinforcement_is_refused_naming_the_supported_ones(sdk: openai.OpenAI) -> None:
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id,
                                    method={"type": "reinforcement"})  # type: ignore[typeddict-item]
    body = _body(refused.value)
    assert (body["code"], body["param"]) == ("unsupported_method", "method.type")
    assert "'supervised'" in body["message"] and "'dpo'" in body["message"]


def test_jobs_list_keeps_the_jobs_whose_metadata_holds_every_pair_of_the_filter(sdk: openai.OpenAI) -> None:
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    search = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id,
                                         metadata={"team": "search", "run": "a"})
    ads = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id, metadata={"team": "ads", "run": "a"})
    bare = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id)
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"team": "search"})] == [search.id]
    assert {j.id for j in sdk.fine_tuning.jobs.list(metadata={"run": "a"})} == {search.id, ads.id}
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"team": "ads", "run": "b"})] == []
    assert bare.id in {j.id for j in sdk.fine_tuning.jobs.list(metadata={})}, "an empty filter keeps every job"


def test_a_malformed_or_too_long_metadata_filter_is_400_naming_metadata(client, tenant) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {tenant[1]}"}
    for query, words in (("metadata=team", "metadata[key]=value"), ("metadata[team=x", "metadata[key]=value"),
                         ("metadata[team]=a&metadata[team]=b", "given twice"),
                         (f"metadata[team]={'x' * 513}", "at most 512")):
        r = client.get(f"/v1/fine_tuning/jobs?{query}", headers=headers)
        assert r.status_code == 400, (query, r.text)
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("metadata", "invalid_metadata") and words in error["message"]


def test_files_delete_is_refused_while_a_queued_job_uses_the_file_and_works_once_it_is_cancelled(
        sdk: openai.OpenAI) -> None:
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id)
    with pytest.raises(openai.ConflictError) as in_use:
        sdk.files.delete(file_id)
    assert _body(in_use.value)["code"] == "file_in_use" and job.id in _body(in_use.value)["message"]
    sdk.fine_tuning.jobs.cancel(job.id)
    assert sdk.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file_id)


@pytest.mark.usefixtures("tiny_model")  # the job's memory estimate reads its config.json
def test_event_levels_are_openais_info_warn_and_error(sdk: openai.OpenAI) -> None:
    """No worker is registered in this test's pool, so the job gets the 'no worker has registered' warning."""
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id)
    levels = {e.level for e in sdk.fine_tuning.jobs.list_events(job.id)}
    assert "warn" in levels and levels <= {"info", "warn", "error"}


def test_openais_routes_this_server_does_not_offer_are_404_unsupported_endpoint_saying_why(
        sdk: openai.OpenAI, client, tenant) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as permissions:
        sdk.fine_tuning.checkpoints.permissions.list("ft:tiny-llama:ftjob-x:ckpt-step-1")
    body = _body(permissions.value)
    assert body["code"] == "unsupported_endpoint" and "belongs to its tenant" in body["message"]
    for method, path in (("POST", "/v1/fine_tuning/checkpoints/c/permissions"),
                         ("DELETE", "/v1/fine_tuning/checkpoints/c/permissions/p"),
                         ("POST", "/v1/fine_tuning/alpha/graders/run"),
                         ("POST", "/v1/fine_tuning/alpha/graders/validate")):
        r = client.request(method, path, headers={"Authorization": f"Bearer {tenant[1]}"}, json={})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unsupported_endpoint"), (method, path, r.text)
    assert client.post("/v1/fine_tuning/alpha/graders/run", json={}).status_code == 401, "a key is still needed"


def test_files_list_keeps_one_purpose_when_asked(sdk: openai.OpenAI) -> None:
    train = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    valid = sdk.files.create(file=("v.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune-validation").id  # type: ignore[arg-type]
    assert {f.id for f in sdk.files.list(purpose="fine-tune")} == {train}
    assert {f.id for f in sdk.files.list()} == {train, valid}


def _body(error: openai.APIStatusError) -> dict[str, Any]:
    """The OpenAI error body (the SDK types it as `object`)."""
    assert isinstance(error.body, dict), error.body
    return error.body


def test_sdk_errors(sdk: openai.OpenAI) -> None:
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as bad_model:
        sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)
    assert _body(bad_model.value)["param"] == "base_model" and "tiny-llama" in _body(bad_model.value)["message"]
    with pytest.raises(openai.UnprocessableEntityError) as unknown:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id,
                                    hyperparameters={"n_epochs": 2, "warp_speed": 9})  # type: ignore[arg-type]
    assert _body(unknown.value)["param"] == "hyperparameters.warp_speed"
    with pytest.raises(openai.UnprocessableEntityError) as bad_suffix:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id, suffix="No Spaces Please")
    assert _body(bad_suffix.value)["param"] == "suffix"
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve("file-nope")


def test_other_tenant_is_not_found(sdk: openai.OpenAI, client) -> None:  # type: ignore[no-untyped-def]
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(4)))), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id)
    other = openai.OpenAI(base_url="http://testserver/v1", api_key=make_tenant()[1], http_client=client,
                          max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url="http://testserver/v1", api_key="tq-wrong", http_client=client,
                      max_retries=0).fine_tuning.jobs.list()
