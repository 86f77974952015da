"""`/secrets` (api/routes/secrets.py) and the job spec's `integrations` at POST /jobs and POST /v1/fine_tuning/jobs:
a tenant admin stores tracker credentials that no route returns, the table holds them encrypted, members are
refused, another tenant neither sees nor uses them, and every bad input is an OpenAI error naming the field (and
never quoting the secret). The trackers themselves, on a real training run: tests/worker/test_trackers.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from api.deps import settings_dep
from common import auth as auth_service
from common.db import session_scope
from common.models import Job, JobEvent, Tenant, TenantSecret
from common.secrets_box import decrypt
from common.settings import get_settings
from tests.support.factories import chat_rows, jsonl, make_tenant, spec, upload
from tests.support.http import assert_error, auth

WANDB = {"type": "wandb", "wandb": {"project": "tq-tests", "name": "run-1", "entity": "team", "tags": ["a", "b"]}}


@pytest.fixture
def admin() -> tuple[str, str]:
    return make_tenant(role="admin")


def member_of(tenant_id: str) -> str:
    with session_scope() as session:
        _, key = auth_service.create_key(session, session.get_one(Tenant, tenant_id), role="member")
        return key


def fake_secret() -> str:
    return "wk-" + secrets.token_hex(20)


def put(client: Any, key: str, name: str, value: Any) -> Any:
    return client.put(f"/secrets/{name}", json={"value": value}, headers=auth(key))


def processed_file(client: Any, key: str) -> str:
    resp = upload(client, key, jsonl(chat_rows(8)))
    assert resp.status_code == 200 and resp.json()["status"] == "processed", resp.text
    file_id: str = resp.json()["id"]
    return file_id


def test_an_admin_stores_a_secret_that_no_route_returns(client: Any, admin: tuple[str, str]) -> None:
    value, newer = fake_secret(), fake_secret()
    first = put(client, admin[1], "WANDB_API_KEY", value)
    assert first.status_code == 200, first.text
    assert set(first.json()) == {"object", "name", "created_at", "updated_at", "created_by"}
    assert first.json()["name"] == "WANDB_API_KEY" and first.json()["object"] == "secret"
    replaced = put(client, admin[1], "WANDB_API_KEY", newer)
    assert replaced.json()["created_at"] == first.json()["created_at"]
    assert put(client, admin[1], "MLFLOW_TRACKING_TOKEN", value).status_code == 200
    listed = client.get("/secrets", headers=auth(admin[1]))
    assert [s["name"] for s in listed.json()["data"]] == ["MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY"]
    file_id = processed_file(client, admin[1])
    job = client.post("/jobs", json=spec(file_id, integrations=[WANDB]), headers=auth(admin[1]))
    assert job.status_code == 200, job.text
    events = client.get(f"/jobs/{job.json()['id']}/events", headers=auth(admin[1]))
    for resp in (first, replaced, listed, job, events, client.get(f"/jobs/{job.json()['id']}", headers=auth(admin[1]))):
        assert value not in resp.text and newer not in resp.text


def test_the_table_holds_the_value_encrypted_and_the_key_decrypts_it(client: Any,
                                                                     admin: tuple[str, str]) -> None:
    value = fake_secret()
    assert put(client, admin[1], "MLFLOW_TRACKING_PASSWORD", value).status_code == 200
    with session_scope() as session:
        row = session.scalars(select(TenantSecret).where(TenantSecret.tenant_id == admin[0])).one()
        stored = bytes(row.ciphertext)
    assert value.encode() not in stored and value[3:].encode() not in stored
    assert stored.startswith(b"gAAAA")  # a Fernet token
    assert decrypt(get_settings(), stored, name="MLFLOW_TRACKING_PASSWORD") == value


def test_a_member_key_may_not_manage_secrets(client: Any, admin: tuple[str, str]) -> None:
    member = member_of(admin[0])
    for resp in (put(client, member, "WANDB_API_KEY", fake_secret()), client.get("/secrets", headers=auth(member)),
                 client.delete("/secrets/WANDB_API_KEY", headers=auth(member))):
        assert_error(resp, 403, "permission_denied")
    assert_error(client.get("/secrets"), 401)


def test_another_tenant_neither_sees_nor_deletes_nor_uses_a_secret(client: Any,
                                                                    admin: tuple[str, str]) -> None:
    assert put(client, admin[1], "WANDB_API_KEY", fake_secret()).status_code == 200
    _, other = make_tenant(role="admin")
    assert client.get("/secrets", headers=auth(other)).json()["data"] == []
    assert_error(client.delete("/secrets/WANDB_API_KEY", headers=auth(other)), 404, "secret_not_found", "name")
    file_id = processed_file(client, other)
    refused = assert_error(client.post("/jobs", json=spec(file_id, integrations=[WANDB]), headers=auth(other)),
                           400, "missing_secret", "integrations[0]")
    assert "PUT /secrets/WANDB_API_KEY" in refused["message"]
    assert [s["name"] for s in client.get("/secrets", headers=auth(admin[1])).json()["data"]] == ["WANDB_API_KEY"]


def test_a_deleted_secret_is_gone_and_a_wandb_job_is_refused_again(client: Any,
                                                                   admin: tuple[str, str]) -> None:
    assert put(client, admin[1], "WANDB_API_KEY", fake_secret()).status_code == 200
    deleted = client.delete("/secrets/WANDB_API_KEY", headers=auth(admin[1]))
    assert deleted.json() == {"object": "secret.deleted", "name": "WANDB_API_KEY", "deleted": True}
    assert client.get("/secrets", headers=auth(admin[1])).json()["data"] == []
    assert_error(client.delete("/secrets/WANDB_API_KEY", headers=auth(admin[1])), 404, "secret_not_found")
    file_id = processed_file(client, admin[1])
    assert_error(client.post("/jobs", json=spec(file_id, integrations=[WANDB]), headers=auth(admin[1])),
                 400, "missing_secret", "integrations[0]")


@pytest.mark.parametrize(("name", "value", "code", "param"), [
    ("AWS_SECRET_ACCESS_KEY", "x" * 20, "invalid_secret_name", "name"),
    ("LD_PRELOAD", "/tmp/evil.so", "invalid_secret_name", "name"),
    ("wandb_api_key", "x" * 20, "invalid_secret_name", "name"),
    ("WANDB_API_KEY", "", "invalid_secret_value", "value"),
    ("WANDB_API_KEY", "   ", "invalid_secret_value", "value"),
    ("WANDB_API_KEY", "s3cr3t-" + "y" * 4090, "invalid_secret_value", "value"),
    ("WANDB_API_KEY", "s3cr3t-line\nbreak", "invalid_secret_value", "value"),
    ("WANDB_API_KEY", 12345678, "invalid_secret_value", "value"),
])
def test_bad_secret_input_is_refused_naming_the_field_without_quoting_the_value(
        client: Any, admin: tuple[str, str], name: str, value: Any, code: str, param: str) -> None:
    resp = put(client, admin[1], name, value)
    assert_error(resp, 400, code, param)
    if isinstance(value, str) and value.strip():
        assert value not in resp.text and "s3cr3t" not in resp.text
    assert client.get("/secrets", headers=auth(admin[1])).json()["data"] == []


def test_a_body_without_value_or_with_other_fields_is_a_schema_error(client: Any,
                                                                     admin: tuple[str, str]) -> None:
    assert_error(client.put("/secrets/WANDB_API_KEY", json={}, headers=auth(admin[1])), 422, "missing_field", "value")
    assert_error(client.put("/secrets/WANDB_API_KEY", json={"value": "abc", "v": 1}, headers=auth(admin[1])),
                 422, "unknown_field", "v")


@pytest.fixture
def production_client() -> Iterator[TestClient]:
    from api.main import create_app

    app = create_app()
    app.dependency_overrides[settings_dep] = lambda: get_settings().model_copy(
        update={"environment": "production", "secrets_key": None})
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_production_without_a_secrets_key_refuses_to_store_a_secret_saying_which_setting(
        production_client: Any, admin: tuple[str, str]) -> None:
    err = assert_error(put(production_client, admin[1], "WANDB_API_KEY", fake_secret()), 503, "secrets_unavailable")
    assert "TUNEQUEUE_SECRETS_KEY" in err["message"]
    assert production_client.get("/secrets", headers=auth(admin[1])).json()["data"] == []


@pytest.mark.parametrize(("integrations", "status", "code", "param"), [
    ([{"type": "comet", "comet": {}}], 422, "invalid_value", "integrations[0].type"),
    ([{"type": "mlflow", "mlflow": {}}], 422, "missing_field", "integrations[0].mlflow.tracking_uri"),
    ([{"type": "mlflow"}], 422, "invalid_value", "integrations[0]"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "file:///var/lib/tunequeue"}}], 422, "invalid_value",
     "integrations[0].mlflow.tracking_uri"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "https://u:p@mlflow.example.com"}}], 422, "invalid_value",
     "integrations[0].mlflow.tracking_uri"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "http://169.254.169.254/latest"}}], 400,
     "destination_not_allowed", "integrations[0].mlflow.tracking_uri"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}], 400,
     "destination_not_allowed", "integrations[0].mlflow.tracking_uri"),
    ([{"type": "wandb", "wandb": {"name": "no-project"}}], 422, "missing_field", "integrations[0].wandb.project"),
    ([{"type": "wandb", "wandb": {"project": "bad project!"}}], 422, "invalid_value", "integrations[0].wandb.project"),
    ([{"type": "wandb", "wandb": {"project": "p", "tags": ["t"] * 21}}], 422, "invalid_value",
     "integrations[0].wandb.tags"),
    ([{"type": "wandb", "wandb": {"project": "p", "colour": "red"}}], 422, "unknown_field",
     "integrations[0].wandb.colour"),
    ([{"type": "tensorboard", "tensorboard": {"log_dir": "/etc"}}], 422, "unknown_field",
     "integrations[0].tensorboard.log_dir"),
    ([{"type": "tensorboard", "wandb": {"project": "p"}}], 422, "invalid_value", "integrations[0]"),
    ([{"type": "tensorboard"}, {"type": "tensorboard"}], 422, "invalid_value", "integrations"),
    ([{"type": "wandb", "wandb": {"project": "p"}}], 400, "missing_secret", "integrations[0]"),
])
def test_bad_integrations_are_refused_at_post_jobs_naming_the_field(
        client: Any, admin: tuple[str, str], integrations: list[Any], status: int, code: str,
        param: str) -> None:
    file_id = processed_file(client, admin[1])
    err = assert_error(client.post("/jobs", json=spec(file_id, integrations=integrations), headers=auth(admin[1])),
                       status, code, param)
    assert param.split(".")[-1] in err["message"] or code in ("missing_secret", "destination_not_allowed") \
        or param == "integrations"


def test_the_job_object_echoes_its_integrations_in_openais_shape(client: Any, admin: tuple[str, str]) -> None:
    file_id = processed_file(client, admin[1])
    tensorboard = {"type": "tensorboard", "tensorboard": {}}
    resp = client.post("/jobs", json=spec(file_id, integrations=[tensorboard]), headers=auth(admin[1]))
    assert resp.status_code == 200, resp.text
    assert resp.json()["integrations"] == [tensorboard]
    assert client.get(f"/jobs/{resp.json()['id']}", headers=auth(admin[1])).json()["integrations"] == [tensorboard]
    plain = client.post("/jobs", json=spec(file_id), headers=auth(admin[1]))
    assert plain.json()["integrations"] is None


def test_the_openai_sdk_creates_a_job_with_a_wandb_integration_and_reads_it_back(
        client: Any, admin: tuple[str, str]) -> None:
    value = fake_secret()
    assert put(client, admin[1], "WANDB_API_KEY", value).status_code == 200
    sdk = openai.OpenAI(api_key=admin[1], base_url=str(client.base_url) + "/v1", http_client=client)
    file_id = processed_file(client, admin[1])
    job = sdk.fine_tuning.jobs.create(model="tiny-llama", training_file=file_id,
                                      integrations=[{"type": "wandb", "wandb": {"project": "tq", "tags": ["x"]}}])
    assert job.integrations is not None and job.integrations[0].type == "wandb"
    assert job.integrations[0].wandb.project == "tq" and job.integrations[0].wandb.tags == ["x"]
    again = sdk.fine_tuning.jobs.retrieve(job.id)
    assert again.integrations is not None and again.integrations[0].wandb.project == "tq"
    with session_scope() as session:
        stored = session.get_one(Job, job.id).spec
        events = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)))
    assert value not in str(stored) + str(events)


def test_the_openai_route_refuses_a_bad_integration_with_the_native_param(client: Any,
                                                                          admin: tuple[str, str]) -> None:
    file_id = processed_file(client, admin[1])
    body = {"model": "tiny-llama", "training_file": file_id,
            "integrations": [{"type": "mlflow", "mlflow": {"experiment": "e"}}]}
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth(admin[1])), 422, None,
                 "integrations[0].mlflow.tracking_uri")


def test_a_worker_with_another_key_cannot_decrypt_and_a_rotated_key_list_still_does(admin: tuple[str, str]) -> None:
    from cryptography.fernet import Fernet

    from common.secrets_box import SecretsUnavailable
    from common.services import secrets as service

    value = fake_secret()
    old_key = Fernet.generate_key().decode()
    old = get_settings().model_copy(update={"secrets_key": SecretStr(old_key)})
    with session_scope() as session:
        service.put(session, old, admin[0], "MLFLOW_TRACKING_TOKEN", value, user="alice")
    mlflow = [{"type": "mlflow", "mlflow": {"tracking_uri": "https://mlflow.example.com"}}]
    new_key = Fernet.generate_key().decode()
    with session_scope() as session:
        assert service.child_environment(session, old, admin[0], mlflow) == {"MLFLOW_TRACKING_TOKEN": value}
        assert service.child_environment(session, old, admin[0], [{"type": "tensorboard"}]) == {}
        rotated = old.model_copy(update={"secrets_key": SecretStr(f"{new_key},{old_key}")})
        assert service.child_environment(session, rotated, admin[0], mlflow) == {"MLFLOW_TRACKING_TOKEN": value}
        other = old.model_copy(update={"secrets_key": SecretStr(new_key)})
        with pytest.raises(SecretsUnavailable, match="cannot be decrypted") as refused:
            service.child_environment(session, other, admin[0], mlflow)
    assert value not in str(refused.value)
