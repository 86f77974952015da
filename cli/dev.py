"""`tunequeue dev setup`: what `make up` (scripts/up.sh) runs before starting the processes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from cli.admin import create_key
from common import auth
from common.db import session_scope
from common.db_setup import create_database, upgrade_database
from common.registry import local_path
from common.settings import get_settings

DEV_TENANT = "dev"


def dev_setup(key_file: Path) -> str:
    """Create + migrate the database, build the demo model if absent, ensure a dev key. Returns the key."""
    settings = get_settings()
    if create_database(settings.database_url):
        print(f"created database {make_url(settings.database_url).database}")
    upgrade_database()
    entry = settings.base_models.get("tiny-llama")
    path = local_path(entry) if entry else None
    if path is not None and not (path / "config.json").is_file():
        from worker.tiny_model import build_tiny_model  # torch and transformers: only when the model is missing

        print(f"building the tiny demo model into {path} …")
        build_tiny_model(path)
    if key_file.is_file():
        existing = key_file.read_text().strip()
        with session_scope() as session:
            if auth.lookup_key(session, existing) is not None:
                return existing
    key = create_key(DEV_TENANT, "admin", "make up", create_tenant=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key
