"""API keys are looked up once and trusted for TUNEQUEUE_KEY_CACHE_SECONDS (api/deps.py, common/auth.py
`KeyCache`): a key revoked in the database stops working within that many seconds, and the cache holds sha256s,
never a key itself."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, update

from common.auth import hash_key
from common.db import session_scope
from common.models import ApiKey
from common.settings import get_settings
from tests.support.factories import make_tenant
from tests.support.http import assert_error, auth


@pytest.fixture
def cache_seconds(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    seconds = 2.0
    monkeypatch.setattr(get_settings(), "key_cache_seconds", seconds)
    yield seconds


def _revoke(key: str) -> None:
    with session_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=func.now()))


def test_revoked_key_works_from_the_cache_then_is_refused_once_the_cache_seconds_pass(
        client, cache_seconds: float) -> None:  # type: ignore[no-untyped-def]
    _, key = make_tenant()
    assert client.get("/jobs", headers=auth(key)).status_code == 200  # looked up in Postgres and remembered
    _revoke(key)
    revoked = time.monotonic()
    # Within the cache's seconds the API still trusts what it looked up (it asks Postgres no more)...
    assert client.get("/jobs", headers=auth(key)).status_code == 200
    # ...and after them the key is refused.
    while (resp := client.get("/jobs", headers=auth(key))).status_code == 200:
        assert time.monotonic() - revoked < cache_seconds + 2.0, "the revoked key still works after the cache TTL"
        time.sleep(0.1)
    assert_error(resp, 401, "invalid_api_key")


def test_revoked_key_is_refused_at_once_with_the_cache_off(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(get_settings(), "key_cache_seconds", 0.0)
    _, key = make_tenant()
    assert client.get("/jobs", headers=auth(key)).status_code == 200
    _revoke(key)
    assert_error(client.get("/jobs", headers=auth(key)), 401, "invalid_api_key")


def test_key_cache_holds_the_sha256_of_a_key_never_the_key(client, cache_seconds: float) -> None:  # type: ignore[no-untyped-def]
    from api.deps import key_cache

    _, key = make_tenant()
    assert client.get("/files", headers=auth(key)).status_code == 200
    assert hash_key(key) in key_cache().hashes()
    assert key not in key_cache().hashes()


def test_unknown_key_is_not_remembered_so_a_new_key_works_at_once(client, cache_seconds: float) -> None:  # type: ignore[no-untyped-def]
    from api.deps import key_cache

    assert_error(client.get("/jobs", headers=auth("tq-not-a-key")), 401, "invalid_api_key")
    assert hash_key("tq-not-a-key") not in key_cache().hashes()


def test_concurrent_requests_with_an_uncached_key_share_one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """When a busy key's cache entry ends, the requests arriving meanwhile wait for one lookup (api/deps.py
    `_look_up`) instead of each taking an admission slot and a connection for the same row."""
    import asyncio

    import httpx

    from api import deps
    from api.main import create_app

    calls: list[str] = []
    real = deps.find_identity

    async def counted(reader, key_hash):  # type: ignore[no-untyped-def]
        calls.append(key_hash)
        return await real(reader, key_hash)

    monkeypatch.setattr(deps, "find_identity", counted)
    _, key = make_tenant()

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answers = await asyncio.gather(*(client.get("/files", headers=auth(key)) for _ in range(40)))
        from common.read_pool import close_pool

        await close_pool()
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * 40
    assert calls == [hash_key(key)], f"{len(calls)} lookups for one key"
