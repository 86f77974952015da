from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The app in-process over the real Postgres/Redis, for the scheduling tests that read the job object."""
    from api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def pool() -> Iterator[str]:
    """A worker pool (queue name) of the test's own; the devices registered in it are removed afterwards."""
    from common.db import session_scope
    from common.models import Worker

    name = f"tunequeue.test.pool.{secrets.token_hex(4)}"
    yield name
    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.queue == name))
