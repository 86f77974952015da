from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from common import auth
from tests.faults.cluster import Cluster

pytestmark = pytest.mark.slow


def tenant_key(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            tenant = auth.create_tenant(session, f"faults-{secrets.token_hex(4)}")
            _, key = auth.create_key(session, tenant)
            session.commit()
            return key
    finally:
        engine.dispose()


def api(cluster: Cluster, key: str) -> httpx.Client:
    return httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture
def cluster(tiny_model: Path, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
