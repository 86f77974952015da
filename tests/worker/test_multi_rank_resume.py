"""A job of two devices on a real stack (API and Celery workers as processes, tests/support/cluster.py): a CPU
worker that declares two devices (TUNEQUEUE_WORKER_DEVICES=2) claims it and trains it as two torchrun ranks; the
worker is SIGKILLed once a checkpoint is recorded, its torchrun and both ranks die with it, and the next worker's
attempt resumes from that checkpoint, again on two ranks, and publishes the model."""

from __future__ import annotations

import io
import signal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from common.models import Checkpoint, JobEvent, JobRun, Model
from tests.support.cluster import Cluster, api, tenant_key, training_children, wait_until
from tests.support.factories import chat_rows, jsonl

pytestmark = pytest.mark.slow
SAVE_STEPS = 6


def rows(db_url: str, model: type, job_id: str) -> list:  # type: ignore[type-arg]
    """The job's rows of `model`, oldest first (by primary key)."""
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            key = next(iter(model.__table__.primary_key.columns))  # type: ignore[attr-defined]
            return list(session.scalars(select(model).where(model.job_id == job_id)  # type: ignore[attr-defined]
                                        .order_by(key)))
    finally:
        engine.dispose()


def test_a_two_rank_job_whose_worker_is_killed_resumes_from_its_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    # A CPU worker of two devices, also on a host with GPUs.
    cluster = Cluster(tmp_path, TUNEQUEUE_WORKER_DEVICES="2", CUDA_VISIBLE_DEVICES="")
    db = cluster.env["TUNEQUEUE_DATABASE_URL"]
    try:
        cluster.start_api()
        cluster.start_worker("w1")
        client = api(cluster, tenant_key(db))
        up = client.post("/files", files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(48))))})
        assert up.status_code == 200, up.text
        created = client.post("/jobs", json={
            "base_model": "tiny-llama", "training_file": up.json()["id"], "seed": 7, "resources": {"devices": 2},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"n_epochs": 2, "batch_size": 2, "learning_rate": 5e-3, "max_seq_length": 64,
                                "save_steps": SAVE_STEPS}})
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        wait_until(lambda: rows(db, Checkpoint, job_id), 180, "a first checkpoint")
        wait_until(lambda: len(training_children(job_id)) == 3, 10, "torchrun and its two ranks")
        cluster.signal("w1", signal.SIGKILL)
        wait_until(lambda: not training_children(job_id), 20, "torchrun and both ranks to die with the worker")
        cluster.start_worker("w2")
        job = wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in
                         {"succeeded", "failed", "cancelled"} and j, 300, "the job to end")
        assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
        assert job["attempt"] == 2 and job["resources"] == {"devices": 2}
        assert job["progress"]["step"] == job["progress"]["total_steps"], job["progress"]
        events = rows(db, JobEvent, job_id)
        resumed = [e.data["resumed_from_step"] for e in events if e.data and "resumed_from_step" in e.data]
        assert resumed and resumed[0] >= SAVE_STEPS, [e.message for e in events]
        assert [e.data["ranks"] for e in events if e.data and "ranks" in e.data] == [2, 2], "both attempts, 2 ranks"
        assert sum("on 2 ranks (DDP over gloo)" in e.message for e in events) == 2
        assert [r.devices for r in rows(db, JobRun, job_id)] == [2, 2], "fair share counts both devices"
        assert len(rows(db, Model, job_id)) == 1
    finally:
        cluster.close()
