"""/readyz when Postgres is down: it says which check fails, never where the database is or who connects to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.db import get_engine
from common.settings import get_settings
from tests.support.http import assert_error
from tests.support.servers import free_port

# A role and a database name that appear nowhere but in the URL: if the body has them, it came from the driver.
ROLE, DATABASE = "readyz_probe_role", "readyz_probe_db"


@pytest.fixture
def api_without_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, int]]:
    """The app with its settings pointed at a port nothing listens on (Redis and the artifact store stay up)."""
    from api.main import create_app

    port = free_port()
    monkeypatch.setenv("TUNEQUEUE_DATABASE_URL", f"postgresql+psycopg://{ROLE}:hunter2hunter2@127.0.0.1:{port}/{DATABASE}")
    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        with TestClient(create_app(), raise_server_exceptions=False) as client:
            yield client, port
    finally:
        get_settings.cache_clear()
        get_engine.cache_clear()


def test_readyz_with_postgres_unreachable_names_the_failing_check_but_not_the_host_port_or_role(
        api_without_postgres: tuple[TestClient, int], caplog: pytest.LogCaptureFixture) -> None:
    client, port = api_without_postgres
    resp: Any = client.get("/readyz")  # Starlette's TestClient answers with its own httpx's Response class
    assert_error(resp, 503, "not_ready")
    body = resp.json()
    assert body["checks"] == {"postgres": "error", "redis": "ok", "artifacts": "ok"}
    for secret in ("127.0.0.1", str(port), ROLE, DATABASE, "hunter2", "psycopg", "connection", "refused"):
        assert secret not in resp.text.lower(), f"{secret!r} in {resp.text}"
    # The operator still learns why: the driver's text goes to the log.
    assert any(str(port) in record.getMessage() for record in caplog.records), caplog.text
