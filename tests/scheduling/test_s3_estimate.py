"""Placement by fit for base models kept in a bucket (TUNEQUEUE_BASE_MODELS path s3://bucket/prefix), on a real
S3-compatible server (moto's, on loopback: tests/support/s3_server.py): the memory estimate reads the model's
config.json from the bucket and nothing else (common/model_cache.py `remote_config`), so such a job is placed as the
same model from a local folder would be; a prefix without a config.json submits with no estimate, as a hub model."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from common import state
from common.artifacts import get_store
from common.db import session_scope
from common.model_cache import get_model_cache
from common.models import Job, Worker
from common.scheduling import placement
from common.scheduling.claim import claim_next
from common.schemas.job_spec import JobSpec, stored_spec, training_spec
from common.services import files as file_service
from common.services import jobs as job_service
from common.settings import BaseModelEntry, Settings
from tests.support.factories import chat_rows, jsonl, spec
from tests.support.model_bucket import upload_folder
from tests.support.s3_server import S3Server
from worker.check_job_files import check_job_files

SPEC = {"hyperparameters": {"n_epochs": 1, "batch_size": "auto", "max_seq_length": 512}}
ROWS = 64  # batch_size auto resolves to 8 rows


@pytest.fixture
def s3_settings(s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The suite's S3 settings (tests/conftest.py), with a worker pool of the test's own, emptied afterwards."""
    monkeypatch.setattr(s3_settings, "celery_queue", f"tunequeue.test.pool.{secrets.token_hex(4)}")
    yield s3_settings
    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.queue == s3_settings.celery_queue))


def register_s3_model(settings: Settings, s3: S3Server, folder: Path) -> str:
    """`folder` uploaded to a new bucket and registered as a base model; its id."""
    model_id = f"s3-{secrets.token_hex(3)}"
    source = upload_folder(s3.client(), s3.new_bucket(), "models/tiny-llama", folder)
    settings.base_models[model_id] = BaseModelEntry(path=source, template="chatml")
    return model_id


def resolved(base_model: str) -> Any:
    """The spec `submit` sends, as the worker reads it."""
    return training_spec(stored_spec(JobSpec.model_validate(spec("file-x", base_model=base_model, **SPEC)), ROWS))


def needs(settings: Settings, base_model: str) -> placement.Needs | None:
    return placement.needs_of(settings, resolved(base_model), auto_batch=True)


def register_worker(settings: Settings, memory_bytes: int) -> placement.Device:
    device = placement.Device(id=f"test-s3-host-{secrets.token_hex(3)}:cpu", host="test-s3-host", kind="cpu",
                              device_name="Test CPU", memory_bytes=memory_bytes, compute_capability=None,
                              bf16=False, bitsandbytes=False, flash_attention=False)
    with session_scope() as session:
        placement.register(session, settings.celery_queue, [device], state.now())
    return device


def submit(settings: Settings, tenant_id: str, base_model: str) -> Job:
    """A job created as POST /jobs creates it."""
    with session_scope() as session:
        upload = file_service.create_file(session, get_store(), settings, tenant_id=tenant_id, filename="t.jsonl",
                                          src=io.BytesIO(jsonl(chat_rows(ROWS))), purpose="fine-tune")
        job, _ = job_service.create_job(session, settings, tenant_id=tenant_id,
                                        spec=JobSpec.model_validate(spec(upload.id, base_model=base_model, **SPEC)))
        session.expunge(job)
        return job


def test_an_s3_model_is_estimated_from_its_config_in_the_bucket_like_the_same_model_from_a_local_folder(
        s3_settings: Settings, moto_s3: S3Server, tiny_model: Path) -> None:
    model_id = register_s3_model(s3_settings, moto_s3, tiny_model)
    remote, local = needs(s3_settings, model_id), needs(s3_settings, "tiny-llama")
    assert remote is not None and local is not None
    assert remote == local
    small = register_worker(s3_settings, remote.cpu_bytes * 3)
    fitted = placement.auto_micro_batch(s3_settings, resolved(model_id), small)
    assert fitted is not None and fitted == placement.auto_micro_batch(s3_settings, resolved("tiny-llama"), small)
    assert fitted[0] > 1, "the auto batch size fits the worker, not the default micro-batch"
    assert get_model_cache(s3_settings).entries() == [], "the estimate fetched files into the model cache"


def test_the_config_is_kept_while_its_etag_holds_and_read_again_when_the_model_changes_in_the_bucket(
        s3_settings: Settings, moto_s3: S3Server, tiny_model: Path) -> None:
    model_id = register_s3_model(s3_settings, moto_s3, tiny_model)
    source = s3_settings.base_models[model_id].path
    cache = get_model_cache(s3_settings)
    first = cache.remote_config(source)
    assert first is not None and cache.remote_config(source) is first, "parsed again although unchanged"
    before = needs(s3_settings, model_id)
    bucket, prefix = source.removeprefix("s3://").split("/", 1)
    wider = {**first, "hidden_size": first["hidden_size"] * 2, "intermediate_size": first["intermediate_size"] * 2}
    moto_s3.client().put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=json.dumps(wider).encode())
    assert cache.remote_config(source) == wider
    after = needs(s3_settings, model_id)
    assert before is not None and after is not None and after.cpu_bytes > before.cpu_bytes


def test_a_worker_too_small_for_an_s3_models_job_is_not_offered_it_and_a_pool_of_such_workers_refuses_it(
        s3_settings: Settings, moto_s3: S3Server, tiny_model: Path, tenant: tuple[str, str]) -> None:
    model_id = register_s3_model(s3_settings, moto_s3, tiny_model)
    want = needs(s3_settings, model_id)
    assert want is not None
    register_worker(s3_settings, want.cpu_bytes * 4)
    job = submit(s3_settings, tenant[0], model_id)
    assert job.needs_cpu_bytes == want.cpu_bytes and job.estimate is not None
    assert check_job_files(job.id) == "queued"

    def claim(memory_bytes: int) -> Any:
        fit = placement.Fit(kind="cpu", memory_bytes=memory_bytes, bitsandbytes=False, flash_attention=False)
        with session_scope() as session:
            return claim_next(session, queue=s3_settings.celery_queue, worker="test-s3-host:1", settings=s3_settings,
                              fit=fit)

    assert claim(want.cpu_bytes - 1) is None, "a worker too small for the job was offered it"
    assert claim(want.cpu_bytes) == (job.id, 1)

    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.queue == s3_settings.celery_queue))
    register_worker(s3_settings, want.cpu_bytes // 2)
    refusals = []
    for base_model in (model_id, "tiny-llama"):
        with pytest.raises(placement.InsufficientResources) as refused:
            submit(s3_settings, tenant[0], base_model)
        refusals.append((refused.value.code, refused.value.param, refused.value.message))
    assert refusals[0] == refusals[1], "an s3:// model is refused otherwise than the same model from a folder"


@pytest.mark.parametrize(("config", "why"), [(None, "NoSuchKey"), (b"{not json", "Expecting property name")],
                         ids=["missing", "not-json"])
def test_an_s3_prefix_without_a_readable_config_json_submits_with_no_estimate_and_is_logged_once(
        s3_settings: Settings, moto_s3: S3Server, tiny_model: Path, tenant: tuple[str, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, config: bytes | None, why: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_model / name).read_bytes())
    if config is not None:
        (folder / "config.json").write_bytes(config)
    model_id = register_s3_model(s3_settings, moto_s3, folder)
    register_worker(s3_settings, 2**20)  # far too small for any estimate: only an unknown one passes
    with caplog.at_level(logging.WARNING, logger="tunequeue.model_cache"):
        jobs = [submit(s3_settings, tenant[0], model_id) for _ in range(2)]
    assert [(j.estimate, j.needs_cpu_bytes, j.needs_cuda_bytes) for j in jobs] == [(None, None, None)] * 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "tunequeue.model_cache"]
    assert len(warnings) == 1, warnings
    assert s3_settings.base_models[model_id].path in warnings[0] and why in warnings[0]
