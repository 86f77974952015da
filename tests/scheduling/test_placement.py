"""Placement by fit (common/scheduling/placement.py) against the real Postgres and the tiny model's config: what a
job needs, the refusal of a job no registered device can run, the claim weighing only jobs the device can run,
an auto batch size fitted to the device, and the devices' registration."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from common import state
from common.db import session_scope
from common.models import Job, Worker
from common.scheduling import placement
from common.scheduling.claim import claim_next
from common.schemas.job_spec import JobSpec, stored_spec, training_spec
from common.settings import get_settings
from tests.support.factories import make_job_row, make_tenant

GIB = 2**30


def resolved(**spec: Any) -> Any:
    body = {"base_model": "tiny-llama", "training_file": "file-x", **spec}
    stored = stored_spec(JobSpec.model_validate(body), 64)
    return training_spec(stored), placement.batch_size_is_auto(stored)


def needs(**spec: Any) -> placement.Needs:
    job_spec, auto = resolved(**spec)
    got = placement.needs_of(get_settings(), job_spec, auto_batch=auto)
    assert got is not None
    return got


def device(memory: int, kind: str = "cpu", **flags: bool) -> placement.Device:
    return placement.Device(id=f"test-host-{secrets.token_hex(3)}:{kind}", host="test-host", kind=kind,  # type: ignore[arg-type]
                            device_name="Test device", memory_bytes=memory, compute_capability=None,
                            bf16=False, bitsandbytes=flags.get("bitsandbytes", False),
                            flash_attention=flags.get("flash_attention", False))


def register(pool: str, *devices: placement.Device) -> None:
    with session_scope() as session:
        placement.register(session, pool, list(devices), state.now())


def test_a_job_needs_more_at_a_longer_sequence_and_qlora_and_flash_attention_need_their_libraries(tiny_model) -> None:  # type: ignore[no-untyped-def]
    short, long = needs(hyperparameters={"max_seq_length": 128}), needs(hyperparameters={"max_seq_length": 4096})
    assert 0 < short.cpu_bytes < long.cpu_bytes and 0 < short.cuda_bytes < long.cuda_bytes
    assert (short.bitsandbytes, short.flash_attention) == (False, False)
    assert needs(method={"type": "qlora"}).bitsandbytes
    assert needs(hyperparameters={"attention": "flash_attention_2"}).flash_attention
    assert short.estimate["cpu"]["total_bytes"] == short.cpu_bytes and short.estimate["measured_peak_bytes"] is None


def test_an_auto_batch_size_is_estimated_at_one_row_and_an_explicit_one_at_its_micro_batch(tiny_model) -> None:  # type: ignore[no-untyped-def]
    auto = needs(hyperparameters={"max_seq_length": 2048})
    explicit = needs(hyperparameters={"max_seq_length": 2048, "batch_size": 16})
    assert auto.estimate["micro_batch_size"] == 1 and explicit.estimate["micro_batch_size"] == 16
    assert auto.cpu_bytes < explicit.cpu_bytes


def test_with_no_worker_registered_a_job_is_accepted_with_a_warning(pool, tiny_model) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        warning = placement.place(session, pool, needs())
    assert warning is not None and warning.startswith("No worker has registered in this pool yet")


def test_a_job_no_registered_device_can_hold_is_refused_naming_its_estimate_and_the_largest(pool, tiny_model) -> None:  # type: ignore[no-untyped-def]
    job = needs(hyperparameters={"max_seq_length": 4096})
    small, smaller = device(job.cpu_bytes // 2), device(job.cpu_bytes // 4)
    register(pool, small, smaller)
    with session_scope() as session, pytest.raises(placement.InsufficientResources) as refused:
        placement.place(session, pool, job)
    assert refused.value.code == "insufficient_resources" and refused.value.param == "hyperparameters"
    assert f"{job.cpu_bytes / GIB:.1f} GiB" in refused.value.message and small.id in refused.value.message
    register(pool, device(job.cpu_bytes * 2))
    with session_scope() as session:
        assert placement.place(session, pool, job) is None, "a device that fits is registered now"


def test_qlora_is_refused_where_no_device_has_bitsandbytes(pool, tiny_model) -> None:  # type: ignore[no-untyped-def]
    register(pool, device(64 * GIB, kind="cuda"))
    with session_scope() as session, pytest.raises(placement.InsufficientResources) as refused:
        placement.place(session, pool, needs(method={"type": "qlora"}))
    assert refused.value.param == "method.type" and "bitsandbytes" in refused.value.message


def test_a_worker_claims_the_oldest_job_its_device_can_run_and_leaves_the_one_it_cannot(pool, tiny_model) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    big = make_job_row(tenant, queue=pool, created_at=state.now() - timedelta(minutes=5))
    small = make_job_row(tenant, queue=pool)
    with session_scope() as session:
        session.get_one(Job, big).needs_cpu_bytes = 8 * GIB
        session.get_one(Job, small).needs_cpu_bytes = GIB
    fit = placement.Fit(kind="cpu", memory_bytes=2 * GIB, bitsandbytes=False, flash_attention=False)
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker="test-host:1", settings=get_settings(), fit=fit)
    assert got is not None and got[0] == small
    with session_scope() as session:
        assert claim_next(session, queue=pool, worker="test-host:1", settings=get_settings(), fit=fit) is None
    roomy = placement.Fit(kind="cpu", memory_bytes=16 * GIB, bitsandbytes=False, flash_attention=False)
    with session_scope() as session:
        got = claim_next(session, queue=pool, worker="test-host:2", settings=get_settings(), fit=roomy)
    assert got is not None and got[0] == big


def test_a_worker_without_bitsandbytes_does_not_claim_a_qlora_job(pool) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()[0]
    qlora = make_job_row(tenant, queue=pool)
    with session_scope() as session:
        session.get_one(Job, qlora).needs_bitsandbytes = True
    fit = placement.Fit(kind="cuda", memory_bytes=80 * GIB, bitsandbytes=False, flash_attention=True)
    with session_scope() as session:
        assert claim_next(session, queue=pool, worker="test-host:1", settings=get_settings(), fit=fit) is None


def test_an_auto_batch_size_takes_the_largest_micro_batch_that_fits_and_keeps_the_batch_size(tiny_model) -> None:  # type: ignore[no-untyped-def]
    spec, _ = resolved(hyperparameters={"max_seq_length": 2048, "batch_size": "auto"})
    batch = spec.hyperparameters.batch_size
    assert batch == 8  # 64 rows: auto resolves to 8
    one_row = needs(hyperparameters={"max_seq_length": 2048}).cpu_bytes
    roomy = placement.auto_micro_batch(get_settings(), spec, device(64 * GIB))
    assert roomy == (8, 1)
    tight = placement.auto_micro_batch(get_settings(), spec, device(one_row + (one_row // 20)))
    assert tight is not None and tight[0] * tight[1] == batch and tight[0] < 8


def test_registering_again_keeps_first_seen_and_moves_last_seen(pool) -> None:  # type: ignore[no-untyped-def]
    d = device(GIB)
    register(pool, d)
    with session_scope() as session:
        placement.register(session, pool, [d], state.now() + timedelta(minutes=1))
    with session_scope() as session:
        row = session.scalars(select(Worker).where(Worker.id == d.id)).one()
        assert row.last_seen_at - row.first_seen_at >= timedelta(seconds=59)
