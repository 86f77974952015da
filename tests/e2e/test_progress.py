"""A real training job followed live over real HTTP (uvicorn + Celery worker + Postgres + Redis): a Server-Sent
Events client that drops mid-way and resumes with Last-Event-ID, the job's Redis keys lost during the run,
`/workers` while it trains, the metrics series, and `/metrics` counters before and after."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from common.progress import ProgressChannel
from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.redis_keys import drop_redis_keys
from tests.support.servers import LiveService
from tests.support.sse import SseReader

pytestmark = pytest.mark.slow


def scrape(service: LiveService, admin: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{service.url}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        page = client.get(f"/jobs/{job_id}/events?limit=100{after}").json()
        out += page["data"]
        if not page["has_more"]:
            return list(reversed(out))
        after = f"&after={page['last_id']}"


def test_follow_a_real_job_live(live_service: LiveService, tiny_model: Any) -> None:
    _, key = make_tenant()
    _, admin = make_tenant(role="operator")
    client = httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    file = client.post("/files", files={"file": ("train.jsonl", io.BytesIO(jsonl(chat_rows(24))))},
                       data={"purpose": "fine-tune"}).json()
    before = scrape(live_service, admin)
    # 24 rows / batch 1 × 5 epochs = 120 steps: long enough that training is still under way after the Redis
    # keys are dropped at step 3, even on a loaded machine.
    hp = {"n_epochs": 5, "batch_size": 1, "learning_rate": 1e-2, "max_seq_length": 128}
    job = client.post("/jobs", json=spec(file["id"], hyperparameters=hp)).json()
    job_id = job["id"]

    def metrics_steps(frames: list[dict[str, Any]]) -> list[int]:
        return [f["data"]["data"]["step"] for f in frames if f["event"] == "message" and f["data"]["type"] == "metrics"]

    # A client follows from the start and goes away after step 3.
    first = SseReader(live_service.url, key, job_id,
                      stop_when=lambda frames: any(s >= 3 for s in metrics_steps(frames)))
    first.start()
    first.finish(timeout=300)
    assert metrics_steps(first.frames), f"{first.frames}\n{live_service.logs()}"
    dropped_at = metrics_steps(first.frames)[-1]

    # Redis loses this job's keys mid-run: Postgres still has the truth.
    drop_redis_keys(job_id)
    seen = client.get(f"/jobs/{job_id}").json()
    assert seen["status"] == "running", "the job should still train after step 3 of 120"
    assert seen["progress"] is not None and seen["progress"]["step"] >= dropped_at, seen["progress"]
    assert isinstance(seen["progress"]["gpus"], list) and seen["estimated_finish"] is not None
    workers = client.get("/workers").json()["data"]
    assert any(w["busy"] and (w["job"] or {}).get("id") == job_id for w in workers), workers

    # It comes back and resumes exactly where it left off, to the end.
    second = SseReader(live_service.url, key, job_id, last_event_id=int(first.messages()[-1]["id"]))
    second.start()
    second.finish(timeout=300)
    assert second.frames[-1]["event"] == "done", second.frames[-3:]
    done = client.get(f"/jobs/{job_id}").json()
    assert done["status"] == "succeeded", f"{done}\n{live_service.logs()}"

    history = all_events(client, job_id)
    streamed = first.messages() + second.messages()
    assert [int(f["id"]) for f in streamed] == [e["seq"] for e in history], "no gap, no duplicate, in order"
    assert [f["data"]["id"] for f in streamed] == [e["id"] for e in history]
    states = [e["data"]["status"] for e in history if e["type"] == "state"]
    assert states[-2:] == ["running", "succeeded"] and "queued" in states
    steps = [e["data"]["step"] for e in history if e["type"] == "metrics"]
    assert steps == sorted(steps) and steps[-1] == 120
    assert any(f["event"] == "progress" for f in first.frames + second.frames), "live progress rode along"
    live = ProgressChannel().read_progress(job_id)
    assert live is not None and live["step"] > dropped_at, "the live view came back at the next step"

    final = done["progress"]
    assert final["step"] == final["total_steps"] == 120 and isinstance(final["gpus"], list)
    assert final["process_rss_mb"] > 0, "a host without GPUs reports the training process' memory"

    series = client.get(f"/jobs/{job_id}/metrics").json()["data"]
    assert [p["step"] for p in series] == steps and series[0]["loss"] > series[-1]["loss"]
    assert all(p["tokens_per_second"] for p in series[1:]) and series[-1]["trained_tokens"] > 0

    after = scrape(live_service, admin)

    def delta(name: str, **labels: str) -> float:
        k = (name, frozenset(labels.items()))
        return after.get(k, 0.0) - before.get(k, 0.0)

    assert delta("tunequeue_trained_tokens_total") >= done["trained_tokens"] > 0
    assert delta("tunequeue_job_duration_seconds_count", state="succeeded") >= 1
    assert delta("tunequeue_jobs", state="succeeded") >= 1
    assert after[("tunequeue_workers", frozenset())] >= 1, "the idle worker stays registered"
    assert after[("tunequeue_scrape_source_up", frozenset({("source", "redis")}))] == 1
