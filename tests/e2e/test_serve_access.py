"""The real `serve` process, asked directly as any local user could ask it on its port: without the API's token it
answers nothing but /healthz; with it, a tenant runs only base models and its own adapters and checkpoints (found
in Postgres: serve never heard of these on Redis), and another tenant's is the same 404 the API gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from common.serve_token import TENANT_HEADER
from tests.support.adapters import random_adapter
from tests.support.factories import make_job_row, make_tenant
from tests.support.http import assert_error, auth
from tests.support.servers import LiveService

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")]

QUESTION = [{"role": "user", "content": "Whose model is this?"}]


def record_unannounced(tenant_id: str, adapter_dir: Path) -> tuple[str, str]:
    """A published model and a checkpoint of its job, in Postgres only (no `tunequeue:models` message)."""
    from common.artifacts import get_store
    from common.db import session_scope
    from common.ids import new_id
    from common.models import Checkpoint, Job
    from worker.publish import record_model, upload_adapter

    job_id = make_job_row(tenant_id, status="running")
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        key, manifest = upload_adapter(get_store(), job, 0, adapter_dir)
        row = record_model(session, job, 0, key, manifest)
        assert row is not None
        checkpoint = Checkpoint(id=new_id("ftckpt"), job_id=job_id, tenant_id=tenant_id, step=1, metrics={},
                                storage_key=key, attempt=0)
        session.add(checkpoint)
        return row.id, checkpoint.id


def chat(service: LiveService, model: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{service.serve_url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": model, "messages": QUESTION, "max_tokens": 3, "temperature": 0})


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Bearer"], ids=["none", "wrong", "empty"])
def test_serve_answers_401_to_anyone_without_the_api_token(live_service: LiveService,
                                                           authorization: str | None) -> None:
    headers = {TENANT_HEADER: "tenant-anyone", **({"Authorization": authorization} if authorization else {})}
    for resp in (chat(live_service, "tiny-llama", headers),
                 httpx.get(f"{live_service.serve_url}/status", headers=headers),
                 httpx.get(f"{live_service.serve_url}/openapi.json", headers=headers)):
        err = assert_error(resp, 401, "invalid_serve_token")
        assert err["type"] == "authentication_error"
        assert "adapters" not in resp.text and "tiny-llama" not in resp.text
    health = httpx.get(f"{live_service.serve_url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_serve_runs_a_tenants_own_models_only(live_service: LiveService, tiny_model: Path, tmp_path: Path) -> None:
    owner, owner_key = make_tenant()
    stranger, stranger_key = make_tenant()
    model_id, checkpoint_id = record_unannounced(owner, random_adapter(tiny_model, tmp_path / "adapter", seed=7))

    for model in (model_id, checkpoint_id):
        refused = chat(live_service, model, live_service.serve_headers(stranger))
        assert_error(refused, 404, "model_not_found", param="model")
        # Word for word what the API tells the stranger: serve adds nothing to learn from.
        through_api = httpx.post(f"{live_service.url}/v1/chat/completions", headers=auth(stranger_key), timeout=60,
                                 json={"model": model, "messages": QUESTION, "max_tokens": 3})
        assert refused.json() == through_api.json()

        own = chat(live_service, model, live_service.serve_headers(owner))
        assert own.status_code == 200, own.text
        assert own.json()["model"] == model and own.json()["choices"][0]["message"]["content"] is not None

    # The API forwards with the token and the tenant: the owner's request goes through end to end.
    body: dict[str, Any] = {"model": model_id, "messages": QUESTION, "max_tokens": 3}
    assert httpx.post(f"{live_service.url}/v1/chat/completions", headers=auth(owner_key), json=body,
                      timeout=60).status_code == 200
    # A base model is everyone's; but a request with the token and no tenant is refused.
    assert chat(live_service, "tiny-llama", live_service.serve_headers(stranger)).status_code == 200
    assert_error(chat(live_service, "tiny-llama", live_service.serve_headers()), 400, "missing_tenant",
                 param=TENANT_HEADER)
