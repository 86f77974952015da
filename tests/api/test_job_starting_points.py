"""What a job starts from (`from_model`, `resume_from`) and its chat `template` are checked when it is posted,
exactly as the worker will look them up (worker/prepare.py), instead of failing the job after queueing. Another
tenant's model or checkpoint is answered exactly like one that does not exist."""

from __future__ import annotations

from typing import Any

import pytest

from common.db import session_scope
from common.ids import new_id
from common.models import Checkpoint, Job, Model
from common.models.base import utcnow
from tests.support.factories import chat_rows, jsonl, make_job_row, make_tenant, spec, upload
from tests.support.http import assert_error, auth


def _own_file(client, key: str) -> str:  # type: ignore[no-untyped-def]
    return upload(client, key, jsonl(chat_rows(8))).json()["id"]


def _model(tenant_id: str, *, base_model: str = "tiny-llama", deleted: bool = False) -> str:
    """A published adapter row of a finished job of the tenant."""
    job_id = make_job_row(tenant_id, status="succeeded")
    model_id = f"ft:{base_model}:{job_id}"
    with session_scope() as session:
        session.add(Model(id=model_id, tenant_id=tenant_id, job_id=job_id, base_model=base_model,
                          storage_key=f"models/{tenant_id}/{job_id}/attempt-1", manifest={"files": []},
                          deleted_at=utcnow() if deleted else None))
    return model_id


def _checkpoint(tenant_id: str, *, base_model: str = "tiny-llama") -> str:
    job_id = make_job_row(tenant_id, status="failed")
    checkpoint_id = new_id("ftckpt")
    with session_scope() as session:
        if base_model != "tiny-llama":
            session.get_one(Job, job_id).base_model = base_model
        session.add(Checkpoint(id=checkpoint_id, job_id=job_id, tenant_id=tenant_id, step=10, metrics={},
                               storage_key=f"checkpoints/{tenant_id}/{job_id}/attempt-1/step-10", attempt=1))
    return checkpoint_id


def _post(client, key: str, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    return client.post("/jobs", headers=auth(key), json=body)


def _jobs_posted(client, key: str, training_file: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The ids of the tenant's jobs on `training_file` (make_job_row's own jobs are on other files)."""
    jobs = client.get("/jobs?limit=100", headers=auth(key)).json()["data"]
    return [j["id"] for j in jobs if j["training_file"] == training_file]


@pytest.mark.parametrize(("field", "make", "prefix", "code"), [
    ("from_model", _model, "ft:tiny-llama:", "model_not_found"),
    ("resume_from", _checkpoint, "ftckpt-", "checkpoint_not_found"),
])
def test_another_tenants_starting_point_is_404_like_a_missing_one_and_own_one_is_accepted(  # type: ignore[no-untyped-def]
        client, tenant, field, make, prefix, code) -> None:
    tenant_id, key = tenant
    theirs = make(make_tenant()[0])
    missing = prefix + "ftjob-doesnotexist"
    training_file = _own_file(client, key)
    answers = []
    for value in (theirs, missing):
        err = assert_error(_post(client, key, spec(training_file, **{field: value})), 404, code, field)
        answers.append(err | {"message": err["message"].replace(value, "<id>")})
    assert answers[0] == answers[1]  # nothing tells that the other tenant's one exists
    assert _jobs_posted(client, key, training_file) == []
    # The tenant's own one is still accepted, and the job records it for the worker.
    ours = make(tenant_id)
    resp = _post(client, key, spec(training_file, **{field: ours}))
    assert resp.status_code == 200, resp.text
    with session_scope() as session:
        assert session.get_one(Job, resp.json()["id"]).spec[field] == ours


def test_a_deleted_own_model_is_404(client, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    body = spec(_own_file(client, key), from_model=_model(tenant_id, deleted=True))
    assert_error(_post(client, key, body), 404, "model_not_found", "from_model")


@pytest.mark.parametrize(("field", "make"), [("from_model", _model), ("resume_from", _checkpoint)])
def test_own_starting_point_of_another_base_model_is_400(client, tenant, field, make) -> None:  # type: ignore[no-untyped-def]
    tenant_id, key = tenant
    training_file = _own_file(client, key)
    err = assert_error(_post(client, key, spec(training_file, **{field: make(tenant_id, base_model="other-base")})),
                       400, "base_model_mismatch", field)
    assert "other-base" in err["message"]
    assert _jobs_posted(client, key, training_file) == []


def test_unknown_template_is_400_and_creates_no_job(client, tenant) -> None:  # type: ignore[no-untyped-def]
    _, key = tenant
    training_file = _own_file(client, key)
    err = assert_error(_post(client, key, spec(training_file, template="chatml-v9")), 400, "invalid_template",
                       "template")
    assert "chatml" in err["message"]  # the names it takes
    assert _jobs_posted(client, key, training_file) == []
    assert _post(client, key, spec(training_file, template="chatml")).status_code == 200
