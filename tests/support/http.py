"""HTTP helpers for API tests: the bearer header, and the check that a response is the OpenAI error body."""

from __future__ import annotations

from typing import Any

import httpx


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(resp: httpx.Response, status: int, code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    """The error object of an OpenAI error body with this status (and code/param, when given)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"], err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err
