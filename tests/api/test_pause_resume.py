"""POST /jobs/{id}/pause and /resume (and OpenAI's fine_tuning.jobs.pause / resume) on jobs that no worker runs: a
queued job pauses at once and comes back to the queue with a doorbell; what cannot be paused or resumed is a 409 that
says so. A running job's pause (checkpoint, hold, resume from the checkpoint) is tested on a real stack in
tests/scheduling/test_live_pause.py."""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import select, update

from common import state
from common.db import session_scope
from common.models import Job, JobEvent
from common.redis_client import get_redis
from common.settings import get_settings
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import assert_error, auth
from worker.maintenance import broker_job_ids


def _status(job_id: str) -> str:
    with session_scope() as session:
        return str(session.scalar(select(Job.status).where(Job.id == job_id)))


def test_a_queued_job_pauses_at_once_and_resume_puts_it_back_in_the_queue_with_a_doorbell(client, tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job_row(tenant[0], "queued")
    paused = client.post(f"/jobs/{job_id}/pause", headers=auth(tenant[1]))
    assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    assert client.post(f"/jobs/{job_id}/pause", headers=auth(tenant[1])).json()["status"] == "paused", "idempotent"
    assert job_id not in broker_job_ids(get_redis(), get_settings().celery_queue)

    resumed = client.post(f"/jobs/{job_id}/resume", headers=auth(tenant[1]))
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
    assert job_id in broker_job_ids(get_redis(), get_settings().celery_queue), "the workers were rung"
    with session_scope() as session:
        statuses = [(e.data or {}).get("status") for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "state").order_by(JobEvent.seq))]
    assert statuses == ["paused", "queued"]


def test_the_openai_sdk_pauses_resumes_and_cancels_a_paused_job(client, tenant) -> None:  # type: ignore[no-untyped-def]
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=tenant[1], http_client=client, max_retries=0)
    job_id = make_job_row(tenant[0], "queued")
    assert sdk.fine_tuning.jobs.pause(job_id).status == "paused"  # type: ignore[comparison-overlap]
    assert sdk.fine_tuning.jobs.resume(job_id).status == "queued"
    sdk.fine_tuning.jobs.pause(job_id)
    assert sdk.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    assert _status(job_id) == "cancelled"


@pytest.mark.parametrize("status", ["validating_files", "succeeded", "failed", "cancelled"])
def test_a_job_that_is_not_queued_or_running_cannot_be_paused(client, tenant, status) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job_row(tenant[0], status)
    resp = client.post(f"/jobs/{job_id}/pause", headers=auth(tenant[1]))
    assert_error(resp, 409, code="job_not_pausable", param="job_id")
    assert status in resp.json()["error"]["message"] and _status(job_id) == status


@pytest.mark.parametrize("status", ["queued", "validating_files", "succeeded"])
def test_only_a_paused_job_can_be_resumed(client, tenant, status) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job_row(tenant[0], status)
    assert_error(client.post(f"/jobs/{job_id}/resume", headers=auth(tenant[1])), 409, code="job_not_paused",
                 param="job_id")
    assert _status(job_id) == status


def test_a_running_job_is_asked_to_pause_and_a_resume_before_it_held_withdraws_the_request(client, tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job_row(tenant[0], "running")
    asked = client.post(f"/jobs/{job_id}/pause", headers=auth(tenant[1])).json()
    assert asked["status"] == "running" and asked["pause_requested"] is True
    withdrawn = client.post(f"/jobs/{job_id}/resume", headers=auth(tenant[1])).json()
    assert withdrawn["status"] == "running" and withdrawn["pause_requested"] is False


def test_only_the_owning_attempt_holds_a_running_job(tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job_row(tenant[0], "running")
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(attempt=2, pause_requested=True))
    with session_scope() as session:
        assert not state.hold(session, job_id, 1), "a stale owner changes nothing"
    with session_scope() as session:
        assert state.hold(session, job_id, 2)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.pause_requested, job.worker) == ("paused", False, None)


def test_another_tenants_job_is_not_found_for_pause_and_resume(client, tenant) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job_row(make_tenant()[0], "queued")
    for action in ("pause", "resume"):
        assert_error(client.post(f"/jobs/{job_id}/{action}", headers=auth(tenant[1])), 404, param="job_id")
    assert _status(job_id) == "queued"
