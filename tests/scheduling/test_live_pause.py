"""Pause and resume on a real stack (tests/support/cluster.py): a running job asked to pause checkpoints, holds in
`paused` with no worker, is resumed, continues from that checkpoint and succeeds; its runs say so."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from common.models import JobEvent, JobRun
from tests.scheduling.test_live_queue import TERMINAL, _db, _start, _status, _submit
from tests.support.cluster import Cluster, api, tenant_key, wait_until

pytestmark = pytest.mark.slow


def test_a_paused_running_job_checkpoints_holds_and_after_resume_continues_from_that_checkpoint(
        cluster: Cluster) -> None:
    _start(cluster)
    client = api(cluster, tenant_key(cluster.env["TUNEQUEUE_DATABASE_URL"], ("member",)))
    job = _submit(client, steps=400)
    wait_until(lambda: _status(client, job) == "queued", 60, "the job queued")
    cluster.start_worker("gpu", queues=cluster.queue)
    wait_until(lambda: (client.get(f"/jobs/{job}").json().get("progress") or {}).get("step", 0) >= 5, 120,
               "the job to train a few steps")

    asked = client.post(f"/jobs/{job}/pause").json()
    assert asked["pause_requested"] is True, asked
    wait_until(lambda: _status(client, job) == "paused", 120, "the job to checkpoint and hold")
    held = client.get(f"/jobs/{job}").json()
    assert held["pause_requested"] is False
    checkpoints = client.get(f"/jobs/{job}/checkpoints").json()["data"]
    assert checkpoints and checkpoints[0]["step_number"] >= 5, checkpoints

    resumed = client.post(f"/jobs/{job}/resume").json()
    assert resumed["status"] == "queued", resumed
    wait_until(lambda: _status(client, job) in TERMINAL, 300, "the job to finish")
    done = client.get(f"/jobs/{job}").json()
    assert done["status"] == "succeeded", f"{done}\n{cluster.logs()}"
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 400

    with _db(cluster) as session:
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job).order_by(JobEvent.seq)))
        runs = list(session.scalars(select(JobRun).where(JobRun.job_id == job).order_by(JobRun.started_at)))
    statuses = [(e.data or {}).get("status") for e in events if e.type == "state"]
    assert statuses[-4:] == ["paused", "queued", "running", "succeeded"], statuses
    resumed_from = [e.data["resumed_from_step"] for e in events if e.data and "resumed_from_step" in e.data]
    assert resumed_from == [checkpoints[0]["step_number"]], [e.message for e in events]
    assert [r.end_reason for r in runs] == ["paused", "succeeded"]
