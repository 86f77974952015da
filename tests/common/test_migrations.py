"""The Alembic history: upgrade head on an empty database, downgrade base, upgrade again; and the models match."""

from __future__ import annotations

import secrets

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from common.db_setup import create_database
from common.models import Base
from tests.support.environment import DATABASE_URL, admin_engine


def _run(url: str, direction: str) -> None:
    from alembic import command
    from alembic.config import Config

    from common.db_setup import upgrade_database

    if direction == "upgrade":
        upgrade_database(url)
        return
    cfg = Config("alembic.ini")
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    command.downgrade(cfg, "base")


def test_upgrade_downgrade_upgrade_and_no_drift() -> None:
    url = str(make_url(DATABASE_URL).set(database=f"tunequeue_mig_{secrets.token_hex(4)}").render_as_string(False))
    assert create_database(url) is True
    assert create_database(url) is False  # idempotent: `make up` runs it every time
    engine = create_engine(url)
    try:
        _run(url, "upgrade")
        tables = set(inspect(engine).get_table_names())
        assert {"tenants", "api_keys", "files", "jobs", "job_events", "checkpoints", "models"} <= tables
        with engine.connect() as conn:  # the ORM and the migrations describe the same schema
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        _run(url, "downgrade")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        _run(url, "upgrade")
        assert "jobs" in set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
        with admin_engine().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
