"""A succeeded job's `result_files` through the official `openai` SDK against the live stack: one file of purpose
fine-tune-results whose content is the job's step metrics as CSV, the same numbers as GET /jobs/{id}/metrics; it
cannot be used as a training file."""

from __future__ import annotations

import csv
import io

import httpx
import openai
import pytest

from tests.support.factories import chat_rows, jsonl, make_tenant
from tests.support.servers import LiveService, wait_for

pytestmark = pytest.mark.slow


def test_a_succeeded_job_has_a_results_file_with_its_step_metrics_as_csv(live_service: LiveService) -> None:
    _, key = make_tenant()
    sdk = openai.OpenAI(base_url=f"{live_service.url}/v1", api_key=key, max_retries=0, timeout=60)
    http = httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    file_id = sdk.files.create(file=("t.jsonl", io.BytesIO(jsonl(chat_rows(16)))), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id, seed=5,
                                      hyperparameters={"n_epochs": 1, "batch_size": 4})
    done = wait_for(http, job.id, {"succeeded", "failed", "cancelled"}, live_service)
    assert done["status"] == "succeeded", f"{done}\n{live_service.logs()}"

    finished = sdk.fine_tuning.jobs.retrieve(job.id)
    assert len(finished.result_files) == 1
    results = sdk.files.retrieve(finished.result_files[0])
    assert (results.purpose, results.filename) == ("fine-tune-results", "step_metrics.csv")
    rows = list(csv.DictReader(io.StringIO(sdk.files.content(results.id).text)))
    series = http.get(f"/jobs/{job.id}/metrics").json()["data"]
    assert [int(r["step"]) for r in rows] == [p["step"] for p in series] and rows, "one row per recorded step"
    assert [float(r["train_loss"]) for r in rows] == [p["loss"] for p in series]
    assert int(rows[-1]["step"]) == done["progress"]["total_steps"]

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=results.id)
    assert refused.value.body["param"] == "training_file" and "not a dataset" in refused.value.body["message"]  # type: ignore[index]
