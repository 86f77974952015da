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
