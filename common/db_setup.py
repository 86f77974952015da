"""Create the database and bring its schema to the newest migration (migrations/, via alembic). Used by the
`tunequeue db` and `tunequeue dev setup` commands (cli/), the test session and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from common.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent  # alembic.ini and migrations/ live here


def create_database(url: str) -> bool:
    """Create the database named in `url` if it is missing. Returns whether it was created."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
            return not exists
    finally:
        admin.dispose()


def upgrade_database(url: str | None = None) -> None:
    """alembic upgrade head on `url` (default: the configured database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = url or get_settings().database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
