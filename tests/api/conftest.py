from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The app in-process over real Postgres/Redis/artifact folder (the end-to-end tests use real uvicorn)."""
    from api.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c

