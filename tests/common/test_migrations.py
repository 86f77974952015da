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


def test_keys_jobs_and_files_from_before_users_belong_to_user_default() -> None:
    """0006 adds `user_name`: a key, a file and a job made at 0005 belong to "default" afterwards."""
    from alembic import command
    from alembic.config import Config

    url = str(make_url(DATABASE_URL).set(database=f"tunequeue_mig_{secrets.token_hex(4)}").render_as_string(False))
    create_database(url)
    engine = create_engine(url)
    try:
        cfg = Config("alembic.ini")
        cfg.attributes["database_url"] = url
        cfg.attributes["configure_logger"] = False
        command.upgrade(cfg, "0005")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('ten-1', 'old', now())"))
            conn.execute(text("INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, role, created_at) "
                              "VALUES ('key-1', 'ten-1', '', 'tq-abc', 'hash', 'member', now())"))
            conn.execute(text("INSERT INTO files (id, tenant_id, filename, purpose, bytes, sha256, storage_key, "
                              "status, stages, row_count, errors, created_at) VALUES ('file-1', 'ten-1', 'a.jsonl', "
                              "'fine-tune', 1, '', 'k', 'processed', '[]', 1, '[]', now())"))
            conn.execute(text("INSERT INTO jobs (id, tenant_id, base_model, training_file_id, spec, status, attempt, "
                              "cancel_requested, created_at) VALUES ('job-1', 'ten-1', 'm', 'file-1', '{}', 'queued', "
                              "0, false, now())"))
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            users = [conn.execute(text(f"SELECT user_name FROM {table}")).scalar_one()
                     for table in ("api_keys", "files", "jobs")]
        assert users == ["default", "default", "default"]
    finally:
        engine.dispose()
        with admin_engine().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
