"""The worker's paths through an S3 store (moto's S3-compatible server on loopback, a stand-in for S3:
tests/support/s3_server.py), with no folder shared with the store: an upload is checked from a copy, a
checkpoint goes up through the relay, and the next attempt's prepare fetches the job's file and that checkpoint
into its own work folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from common import state
from common.artifacts_s3 import S3ArtifactStore
from common.db import session_scope
from common.models import Job
from common.schemas.job_spec import JobSpec
from common.services import files as file_service
from common.services import jobs as job_service
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, spec
from tests.support.s3_server import S3Server
from worker.prepare import prepare_job_dir
from worker.relay import CheckpointRelay
from worker.workdirs import remove_attempt_dirs


@pytest.fixture
def store(moto_s3: S3Server) -> S3ArtifactStore:
    return S3ArtifactStore(moto_s3.new_bucket(), "tq", client=moto_s3.client(), part_size=5 * 1024 * 1024)


def test_an_upload_checkpoint_and_resume_go_through_the_bucket_only(store: S3ArtifactStore, tenant: tuple[str, str],
                                                                     tiny_model: Path, tmp_path: Path) -> None:
    settings = get_settings()
    rows = chat_rows(8)
    with session_scope() as session:
        upload = file_service.create_file(session, store, settings, tenant_id=tenant[0], src=io.BytesIO(jsonl(rows)),
                                          filename="train.jsonl", purpose="fine-tune")
        assert (upload.status, upload.row_count) == ("processed", 8), upload.errors
        job, _ = job_service.create_job(session, settings, tenant_id=tenant[0],
                                        spec=JobSpec.model_validate(spec(upload.id)))
        state.mark_queued(session, job)
        job.status, job.attempt = "running", 1  # as a worker's claim leaves it
        job_id = job.id
    assert store.exists(upload.storage_key)
    assert not (settings.artifacts_path / upload.storage_key).exists()  # not in the local store's folder
    assert list((settings.work_path / "uploads").glob(".copy-*")) == []  # the checked copy is gone

    saved = tmp_path / "checkpoint-3"
    saved.mkdir()
    (saved / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    (saved / "trainer_state.json").write_text('{"global_step": 3}')
    with session_scope() as session:
        running = session.get_one(Job, job_id)
        CheckpointRelay(running, 1, settings, store).handle(
            {"type": "checkpoint", "step": 3, "path": str(saved), "metrics": {}})  # type: ignore[typeddict-item]
    prefix = f"checkpoints/{tenant[0]}/{job_id}/attempt-1/step-3"
    assert store.list_prefix(prefix) == [f"{prefix}/adapter_model.safetensors", f"{prefix}/trainer_state.json"]
    assert not saved.exists()  # the relay frees the local copy once the bucket has it

    with session_scope() as session:
        prepared = prepare_job_dir(session, store, settings, session.get_one(Job, job_id), 2)
    try:
        job_dir = prepared.job_dir
        assert prepared.resumed_from_step == 3
        assert (job_dir / "resume" / "adapter_model.safetensors").read_bytes() == b"w" * 1000
        trained = [json.loads(line) for line in (job_dir / "train.jsonl").read_text().splitlines()]
        assert len(trained) == len(rows)
        assert sorted(p.name for p in job_dir.iterdir()) == ["job.json", "resume", "train.jsonl"]  # no copy left
    finally:
        remove_attempt_dirs(settings, job_id, 2, "succeeded")
