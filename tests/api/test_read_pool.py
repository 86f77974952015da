"""The API's hot reads on the asyncpg pool (common/read_pool.py): one compiled SQL per statement shape that still
carries each request's own values, a read that survives a Postgres restart, and a database that is down answered
as a 503 the client may retry, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db_setup import create_database, upgrade_database
from common.errors import Overloaded
from common.models import File, Job
from common.read_pool import _sql, close_pool, read
from common.services import reads
from common.services.jobs import jobs_statement
from common.services.queries import page_statement
from common.settings import get_settings
from tests.support.cluster import OwnPostgres
from tests.support.factories import chat_rows, jsonl, make_job_row, make_tenant, upload
from tests.support.http import assert_error, auth


def test_one_statement_shape_compiles_once_and_each_call_carries_its_own_tenant_and_limit() -> None:
    sql_a, args_a = _sql(page_statement(jobs_statement("tenant-a", None), Job, None, 20), None)
    sql_b, args_b = _sql(page_statement(jobs_statement("tenant-b", "queued"), Job, None, 5), None)
    sql_c, args_c = _sql(page_statement(jobs_statement("tenant-c", None), Job, None, 7), None)
    assert sql_a == sql_c and sql_a != sql_b  # the status filter is another shape
    assert args_a == ["tenant-a", 21] and args_c == ["tenant-c", 8]
    assert args_b == ["tenant-b", "queued", 6]


def test_two_tenants_listing_through_the_same_compiled_statement_each_see_only_their_own(client: Any) -> None:
    (tenant_a, key_a), (tenant_b, key_b) = make_tenant(), make_tenant()
    jobs_a = {make_job_row(tenant_a) for _ in range(3)}
    jobs_b = {make_job_row(tenant_b) for _ in range(2)}
    (_, key_c), (_, key_d) = make_tenant(), make_tenant()  # files only (a job row brings a file of its own)
    file_c = upload(client, key_c, jsonl(chat_rows(2))).json()["id"]
    file_d = upload(client, key_d, jsonl(chat_rows(2))).json()["id"]
    for _ in range(2):  # the second round runs on the compiled statements the first one left
        assert {j["id"] for j in client.get("/jobs", headers=auth(key_a)).json()["data"]} == jobs_a
        assert {j["id"] for j in client.get("/jobs", headers=auth(key_b)).json()["data"]} == jobs_b
        assert [f["id"] for f in client.get("/files", headers=auth(key_c)).json()["data"]] == [file_c]
        assert [f["id"] for f in client.get("/files", headers=auth(key_d)).json()["data"]] == [file_d]
        assert client.get(f"/files/{file_c}", headers=auth(key_c)).json()["id"] == file_c
        assert_error(client.get(f"/files/{file_c}", headers=auth(key_d)), 404, "file_not_found")


def test_a_page_after_a_cursor_continues_where_the_last_one_ended(client: Any) -> None:
    tenant, key = make_tenant()
    made = [make_job_row(tenant) for _ in range(5)]
    first = client.get("/jobs", params={"limit": 2}, headers=auth(key)).json()
    rest = client.get("/jobs", params={"limit": 10, "after": first["last_id"]}, headers=auth(key)).json()
    listed = [j["id"] for j in first["data"] + rest["data"]]
    assert listed == made[::-1] and first["has_more"] and not rest["has_more"]


@pytest.fixture
def own_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[OwnPostgres]:
    """A Postgres of this test's own, migrated, that the settings point at (so the read pool connects to it)."""
    pg = OwnPostgres()
    pg.start()
    try:
        create_database(pg.url)
        upgrade_database(pg.url)
        monkeypatch.setattr(get_settings(), "database_url", pg.url)
        yield pg
    finally:
        pg.close()


def test_a_read_after_a_postgres_restart_answers_on_its_first_try(own_postgres: OwnPostgres) -> None:
    async def scenario() -> tuple[int, int]:
        try:
            before = await read(lambda reader: reader.all(select(File.id)))
            own_postgres.restart()  # every pooled connection is now dead
            after = await read(lambda reader: reader.all(select(File.id)))
            return len(before), len(after)
        finally:
            await close_pool()

    assert asyncio.run(scenario()) == (0, 0)


def test_a_read_with_postgres_down_is_a_retryable_503_not_a_500(own_postgres: OwnPostgres) -> None:
    own_postgres.close()

    async def scenario() -> None:
        try:
            await read(lambda reader: reads.get_job(reader, "ftjob-x", "tenant-x"))
        finally:
            await close_pool()

    with pytest.raises(Overloaded) as raised:
        asyncio.run(scenario())
    assert raised.value.code == "database_unavailable" and raised.value.retry_after == 2
    from api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        resp: Any = client.get("/jobs", headers=auth("tq-any-key"))  # the key lookup is the first read
    assert_error(resp, 503, "database_unavailable")
    assert resp.headers["Retry-After"] == "2"
