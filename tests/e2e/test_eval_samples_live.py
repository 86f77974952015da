"""Generated samples through the real stack (uvicorn + Celery worker + training child + Postgres + Redis): a job
with a validation file and `hyperparameters.eval_samples` gets one `eval_samples` event per evaluation, in the
shape the dashboard renders, both over Server-Sent Events as they happen and in GET /jobs/{id}/events."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.servers import LiveService
from tests.support.sse import SseReader

pytestmark = pytest.mark.slow

ANSWER = "The answer is forty two."


def stored_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        page = client.get(f"/jobs/{job_id}/events?limit=100{after}").json()
        out += page["data"]
        if not page["has_more"]:
            return list(reversed(out))
        after = f"&after={page['last_id']}"


def test_a_job_with_eval_samples_streams_one_eval_samples_event_per_evaluation(live_service: LiveService) -> None:
    _, key = make_tenant()
    client = httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def upload(rows: list[dict[str, Any]], name: str) -> str:
        file = client.post("/files", files={"file": (name, io.BytesIO(jsonl(rows)))}, data={"purpose": "fine-tune"})
        assert file.json()["status"] == "processed", file.text
        return str(file.json()["id"])

    held_out = [{"messages": [{"role": "system", "content": "You are terse."},
                              {"role": "user", "content": question},
                              {"role": "assistant", "content": ANSWER}]}
                for question in ("What is the answer, in short?", "Which number is it?", "Not sampled: the third.")]
    body = spec(upload(chat_rows(16, ANSWER), "train.jsonl"), validation_file=upload(held_out, "valid.jsonl"))
    # 16 rows / batch 4 × 2 epochs = 8 steps, an evaluation every 2: at steps 2, 4, 6 and 8
    body["hyperparameters"] = {**body["hyperparameters"], "n_epochs": 2, "eval_steps": 2, "eval_samples": 2}
    created = client.post("/jobs", json=body)
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]

    stream = SseReader(live_service.url, key, job_id)
    stream.start()
    stream.finish(timeout=600)
    assert stream.frames[-1]["event"] == "done", stream.frames[-3:]
    done = client.get(f"/jobs/{job_id}").json()
    assert done["status"] == "succeeded", f"{done}\n{live_service.logs()}"

    streamed = [f["data"] for f in stream.messages() if f["data"]["type"] == "eval_samples"]
    stored = [e for e in stored_events(client, job_id) if e["type"] == "eval_samples"]
    assert [e["id"] for e in streamed] == [e["id"] for e in stored], "streamed as they were stored, none missing"
    assert [e["data"]["step"] for e in stored] == [2, 4, 6, 8]
    for event in stored:
        assert event["object"] == "fine_tuning.job.event" and event["level"] == "info"
        assert event["message"].startswith(f"2 generated samples at step {event['data']['step']}")
        assert set(event["data"]) == {"step", "samples"}
        samples = event["data"]["samples"]
        assert [set(s) for s in samples] == [{"prompt", "reference", "answer"}] * 2
        assert [s["prompt"] for s in samples] == ["What is the answer, in short?", "Which number is it?"]
        assert [s["reference"] for s in samples] == [ANSWER, ANSWER]
        assert all(isinstance(s["answer"], str) for s in samples)
    # each evaluation's samples come after its metrics event (the dashboard shows them under that step)
    steps = [(e["type"], (e["data"] or {}).get("step")) for e in stored_events(client, job_id)
             if e["type"] in ("metrics", "eval_samples")]
    for event in stored:
        at = steps.index(("eval_samples", event["data"]["step"]))
        assert ("metrics", event["data"]["step"]) in steps[:at]
