from __future__ import annotations

from tests.support.http import assert_error


def test_health_needs_no_key(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_every_dependency(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/readyz").json()
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "artifacts": "ok"}


def test_no_key_is_401(client) -> None:  # type: ignore[no-untyped-def]
    for method, path in (("get", "/jobs"), ("get", "/files"), ("post", "/jobs"), ("get", "/v1/models")):
        err = assert_error(getattr(client, method)(path), 401, "missing_api_key")
        assert "Authorization: Bearer" in err["message"]


def test_wrong_key_is_401(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/jobs", headers={"Authorization": "Bearer tq-nope"}), 401, "invalid_api_key")
    assert_error(client.get("/jobs", headers={"Authorization": "Basic abc"}), 401, "invalid_api_key")


def test_unknown_route_is_openai_shaped_404(client, tenant) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/nope", headers={"Authorization": f"Bearer {tenant[1]}"}), 404, "not_found")
