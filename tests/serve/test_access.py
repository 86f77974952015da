"""Serve answers only the API: the shared token on every request but /healthz, a tenant on every generation, and
only that tenant's adapters (another tenant's is a 404 model_not_found, word for word the API's). In production
neither serve nor the API starts without the token; elsewhere an unset token is made once, 0600, and shared."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.errors import model_not_found
from common.serve_token import TENANT_HEADER, ServeTokenError, serve_token
from common.settings import Settings, get_settings
from tests.support.http import assert_error
from tests.support.servers import REPO
from tests.support.serving import PHRASE, PHRASE_MESSAGES, SERVE_HEADERS, SERVE_TOKEN, TENANT
from worker.serve.app import create_app
from worker.serve.server import ModelServer

pytestmark = pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def bare(serve_settings: Settings, model_server: ModelServer) -> Iterator[TestClient]:
    """A client that sends nothing by itself: each test says which headers it brings."""
    with TestClient(create_app(serve_settings, model_server)) as client:
        yield client


def with_tenant(tenant: str) -> dict[str, str]:
    return {**SERVE_HEADERS, TENANT_HEADER: tenant}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-serve-token"},
                                     {"Authorization": f"Basic {SERVE_TOKEN}"},
                                     {"Authorization": f"Bearer {SERVE_TOKEN[:-1]}"}],
                         ids=["none", "wrong", "not-bearer", "prefix"])
def test_every_route_but_healthz_answers_401_without_the_serve_token(bare: TestClient,
                                                                      headers: dict[str, str]) -> None:
    headers = {**headers, TENANT_HEADER: TENANT}
    for method, path, body in [("POST", "/v1/chat/completions", CHAT),
                               ("POST", "/v1/completions", {"model": "tiny-llama", "prompt": "x"}),
                               ("GET", "/status", None), ("GET", "/openapi.json", None), ("GET", "/docs", None),
                               ("GET", "/no-such-path", None), ("POST", "/v1/chat/completions", {"bad": "body"})]:
        resp = bare.request(method, path, json=body, headers=headers)
        err = assert_error(resp, 401, "invalid_serve_token")  # type: ignore[arg-type]
        assert err["type"] == "authentication_error" and "TUNEQUEUE_SERVE_TOKEN" in err["message"]
        assert "tiny-llama" not in resp.text


def test_healthz_is_open_and_says_only_that_serve_lives(bare: TestClient) -> None:
    resp = bare.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_status_answers_with_the_token(bare: TestClient) -> None:
    resp = bare.get("/status", headers=SERVE_HEADERS)
    assert resp.status_code == 200 and "bases" in resp.json()


def test_a_generation_without_a_tenant_is_a_400_naming_the_header(bare: TestClient) -> None:
    headers = {"Authorization": f"Bearer {SERVE_TOKEN}"}
    for tenant in (None, "", "  "):
        sent = headers if tenant is None else {**headers, TENANT_HEADER: tenant}
        assert_error(bare.post("/v1/chat/completions", json=CHAT, headers=sent), 400,  # type: ignore[arg-type]
                     "missing_tenant", param=TENANT_HEADER)


def test_another_tenants_adapter_is_model_not_found_as_the_api_says_it(bare: TestClient, phrase_adapter: str) -> None:
    body: dict[str, Any] = {"model": phrase_adapter, "messages": PHRASE_MESSAGES, "temperature": 0}
    stranger = bare.post("/v1/chat/completions", json=body, headers=with_tenant("tenant-stranger"))
    err = assert_error(stranger, 404, "model_not_found", param="model")  # type: ignore[arg-type]
    assert stranger.json() == model_not_found(phrase_adapter).to_body()  # not a word more than for a missing id
    streamed = bare.post("/v1/chat/completions", json={**body, "stream": True}, headers=with_tenant("tenant-stranger"))
    assert streamed.json() == stranger.json(), err
    completion = bare.post("/v1/completions", json={"model": phrase_adapter, "prompt": "x"},
                           headers=with_tenant("tenant-stranger"))
    assert completion.json() == stranger.json()

    own = bare.post("/v1/chat/completions", json=body, headers=with_tenant(TENANT))
    assert own.status_code == 200 and own.json()["choices"][0]["message"]["content"] == PHRASE
    # Base models are everyone's.
    assert bare.post("/v1/chat/completions", json=CHAT, headers=with_tenant("tenant-stranger")).status_code == 200


# --- starting without a token -----------------------------------------------------------------------------------


def test_serve_refuses_to_start_in_production_without_the_token(serve_settings: Settings) -> None:
    production = serve_settings.model_copy(update={"environment": "production", "serve_token": None})
    with pytest.raises(ServeTokenError, match="TUNEQUEUE_SERVE_TOKEN must be set in production"):
        create_app(production, ModelServer(production))
    env = {**os.environ, "TUNEQUEUE_ENVIRONMENT": "production", "TUNEQUEUE_SERVE_TOKEN": "",
           "TUNEQUEUE_DATABASE_URL": production_database_url()}
    done = subprocess.run([sys.executable, "-m", "worker.serve"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "serve refuses to start: TUNEQUEUE_SERVE_TOKEN must be set" in done.stderr, \
        done.stderr[-2000:]


def test_api_refuses_to_start_in_production_without_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.main import create_app as create_api

    monkeypatch.setenv("TUNEQUEUE_ENVIRONMENT", "production")
    monkeypatch.setenv("TUNEQUEUE_DATABASE_URL", production_database_url())
    monkeypatch.delenv("TUNEQUEUE_SERVE_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(ServeTokenError, match="TUNEQUEUE_SERVE_TOKEN"), TestClient(create_api()):
            pass
        monkeypatch.setenv("TUNEQUEUE_SERVE_TOKEN", "x" * 40)
        get_settings.cache_clear()
        with TestClient(create_api()) as api:
            assert api.get("/healthz").status_code == 200
    finally:
        get_settings.cache_clear()


def production_database_url() -> str:
    """The test database's URL with a password, which production requires (the local Postgres trusts loopback and
    ignores it)."""
    from sqlalchemy.engine import make_url

    url = make_url(os.environ["TUNEQUEUE_DATABASE_URL"])
    return url.set(password=url.password or "not-a-default-password").render_as_string(hide_password=False)


def test_a_short_token_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Settings(serve_token="short")  # type: ignore[arg-type]
    assert Settings(serve_token="").serve_token is None  # type: ignore[arg-type]  # compose's empty ${VAR:-}


def test_development_token_is_made_once_0600_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o000)
    try:
        settings = Settings(environment="development", serve_token=None, _env_file=None)  # type: ignore[call-arg]
        # api and serve start together: every racer ends with the one token in the file.
        found: list[str] = []
        threads = [threading.Thread(target=lambda: found.append(serve_token(settings))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old)
    path = tmp_path / "var" / "serve-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(set(found)) == 1 and found[0] == path.read_text().strip() and len(found[0]) == 64
    assert [p.name for p in path.parent.iterdir()] == ["serve-token"]  # no scratch file left behind


def test_a_development_token_file_others_can_read_is_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "serve-token").write_text("a" * 64)
    (tmp_path / "var" / "serve-token").chmod(0o644)
    with pytest.raises(ServeTokenError, match="mode 0600"):
        serve_token(Settings(environment="development", serve_token=None, _env_file=None))  # type: ignore[call-arg]
