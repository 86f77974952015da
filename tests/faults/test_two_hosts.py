"""Workers on several hosts with no shared folder (issue 17): two workers, each in a folder of its own with its own
work and model-cache folders, share only Postgres, Redis and an S3 bucket (moto's S3-compatible server on loopback,
tests/support/s3_server.py) that holds the artifact store and the base model itself, as an s3:// folder. The worker
that runs the job is SIGKILLed once a checkpoint is in the bucket; the other fetches the model into its own cache,
resumes from that checkpoint and publishes the adapter to the bucket."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from common.artifacts_s3 import S3ArtifactStore
from common.models import Checkpoint, JobEvent
from tests.support.cluster import Cluster, api, tenant_key, training_children, wait_until
from tests.support.factories import chat_rows, jsonl
from tests.support.hosts import Host, child_job_dir, new_host, start_workers_on
from tests.support.model_bucket import upload_folder
from tests.support.s3_server import S3Server, assert_stored_where_the_stack_stores, s3_server
from tests.support.servers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with s3_server(tmp_path / "moto") as server:
        yield server


def rows(db_url: str, model: type, job_id: str) -> list:  # type: ignore[type-arg]
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(model).where(model.job_id == job_id)))  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def running_child(job_id: str, host: Host | None = None) -> tuple[int, Path] | None:
    """(pid, job folder) of the job's training child, on `host` if given."""
    for pid in training_children(job_id):
        job_dir = child_job_dir(pid)
        if job_dir is not None and (host is None or host.work in job_dir.parents):
            return pid, job_dir
    return None


def test_the_other_host_resumes_a_killed_hosts_job_from_the_checkpoint_in_the_bucket(
        s3: S3Server, tiny_model: Path, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    source = upload_folder(s3.client(), bucket, "base-models/tiny-llama", tiny_model)
    store = S3ArtifactStore(bucket, "artifacts", client=s3.client())
    (tmp_path / "logs").mkdir()
    cluster = Cluster(tmp_path / "logs", **s3.env(), TUNEQUEUE_ARTIFACTS=f"s3://{bucket}/artifacts",
                      TUNEQUEUE_BASE_MODELS=json.dumps({"tiny-llama": {"path": source, "template": "chatml"}}))
    hosts = [new_host(tmp_path, "host-a"), new_host(tmp_path, "host-b")]
    try:
        cluster.start_api()
        start_workers_on(cluster, hosts)
        db_url = cluster.env["TUNEQUEUE_DATABASE_URL"]
        tenant = tenant_key(db_url)
        client = api(cluster, tenant)
        up = client.post("/files", files={"file": ("t.jsonl", io.BytesIO(jsonl(chat_rows(24))))})
        assert up.status_code == 200, up.text
        created = client.post("/jobs", json={
            "base_model": "tiny-llama", "training_file": up.json()["id"], "seed": 7,
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"n_epochs": 2, "batch_size": 1, "learning_rate": 5e-3, "max_seq_length": 64,
                                "save_steps": 8}})
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]

        # Whichever host claimed it trains it from its own folders, on a local copy of the model from the bucket.
        found = wait_until(lambda: running_child(job_id), 120, "a training child")
        pid, job_dir = found
        runner = next(h for h in hosts if h.work in job_dir.parents)
        other = next(h for h in hosts if h is not runner)
        base = json.loads((job_dir / "job.json").read_text())["base_model"]
        assert runner.model_cache in Path(base["path"]).parents, base  # the child sees a local path only
        assert (Path(base["path"]) / "model.safetensors").is_file()
        wait_until(lambda: rows(db_url, Checkpoint, job_id), 120, "a checkpoint recorded")
        [checkpoint] = rows(db_url, Checkpoint, job_id)[:1]
        assert store.list_prefix(checkpoint.storage_key), "the recorded checkpoint is not in the bucket"

        cluster.signal(runner.name, signal.SIGKILL)  # the worker and, with it, its child
        wait_until(lambda: not running_child(job_id, runner), 15, "the killed host's child to die with it")

        # The other host resumes: in its own folders, with its own copy of the model.
        resumed = wait_until(lambda: running_child(job_id, other), 120, "the other host's training child")
        base = json.loads((resumed[1] / "job.json").read_text())["base_model"]
        assert other.model_cache in Path(base["path"]).parents, base
        job = wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in
                         {"succeeded", "failed", "cancelled"} and j, 240, "the job to end")
        assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
        assert job["attempt"] == 2
        steps = [e.data["resumed_from_step"] for e in rows(db_url, JobEvent, job_id)
                 if e.data and "resumed_from_step" in e.data]
        assert steps and steps[0] > 0 and steps[0] % 8 == 0, steps

        tenant_id = checkpoint.storage_key.split("/")[1]  # checkpoints/<tenant>/<job>/attempt-N/step-S
        published = store.list_prefix(f"models/{tenant_id}/{job_id}/attempt-2")
        assert any(k.endswith("/adapter_model.safetensors") for k in published), published
        assert_stored_where_the_stack_stores(store, tenant_id, job_id)  # and nothing in a local artifacts folder
    finally:
        cluster.close()

    # Neither host used the other's folders: each fetched the model into its own cache; the killed attempt's
    # folder is left on the killed host only; the repository's own var/ saw nothing of the job.
    for host in hosts:
        copies = [json.loads(p.read_text()) for p in host.model_cache.glob("*/entry.json")]
        assert any(c["source"] == source and c["part"] == "all" for c in copies), (host.name, copies)
    assert (runner.work / job_id / "attempt-1").is_dir()
    assert not (runner.work / job_id / "attempt-2").exists()
    assert not (other.work / job_id / "attempt-1").exists()
    assert not (REPO / "var" / "work" / job_id).exists()
