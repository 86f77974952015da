"""`tunequeue` — admin and developer commands.

  tunequeue admin create-tenant NAME
  tunequeue admin create-key --tenant NAME [--role member|admin] [--name LABEL]   (prints the key once)
  tunequeue db create | db upgrade
  tunequeue dev tiny-model PATH
  tunequeue dev setup [--key-file var/dev-api-key]   (what `make up` runs before starting the processes)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from common.settings import get_settings

DEV_TENANT = "dev"


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
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.attributes["database_url"] = url or get_settings().database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def _tenant_and_key(tenant_name: str, role: str, label: str, *, create_tenant: bool) -> str:
    from common import auth
    from common.db import session_scope
    from common.errors import NotFound

    with session_scope() as session:
        try:
            tenant = auth.get_tenant_by_name(session, tenant_name)
        except NotFound:
            if not create_tenant:
                raise
            tenant = auth.create_tenant(session, tenant_name)
        _, plaintext = auth.create_key(session, tenant, role=role, name=label)
    return plaintext


def dev_setup(key_file: Path) -> str:
    """Create + migrate the database, build the demo model if absent, ensure a dev key. Returns the key."""
    from common import auth
    from common.db import session_scope
    from common.registry import local_path

    settings = get_settings()
    if create_database(settings.database_url):
        print(f"created database {make_url(settings.database_url).database}")
    upgrade_database()
    entry = settings.base_models.get("tiny-llama")
    path = local_path(entry) if entry else None
    if path is not None and not (path / "config.json").is_file():
        from worker.tiny_model import build_tiny_model

        print(f"building the tiny demo model into {path} …")
        build_tiny_model(path)
    if key_file.is_file():
        existing = key_file.read_text().strip()
        with session_scope() as session:
            if auth.lookup_key(session, existing) is not None:
                return existing
    key = _tenant_and_key(DEV_TENANT, "admin", "make up", create_tenant=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunequeue", description="TuneQueue admin and developer commands")
    groups = parser.add_subparsers(dest="group", required=True)

    admin = groups.add_parser("admin", help="tenants and API keys").add_subparsers(dest="cmd", required=True)
    p = admin.add_parser("create-tenant", help="create a tenant")
    p.add_argument("name")
    p = admin.add_parser("create-key", help="create an API key for a tenant; printed once, stored hashed")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", choices=["member", "admin"], default="member")
    p.add_argument("--name", default="", help="a label for the key")

    db = groups.add_parser("db", help="database").add_subparsers(dest="cmd", required=True)
    db.add_parser("create", help="create the database if it is missing")
    db.add_parser("upgrade", help="alembic upgrade head")

    dev = groups.add_parser("dev", help="developer helpers").add_subparsers(dest="cmd", required=True)
    p = dev.add_parser("tiny-model", help="build a tiny random Llama + BPE tokenizer (offline)")
    p.add_argument("path", type=Path)
    p = dev.add_parser("setup", help="database, migrations, demo model and a dev key (used by `make up`)")
    p.add_argument("--key-file", type=Path, default=Path("var/dev-api-key"))

    args = parser.parse_args(argv)
    settings = get_settings()
    if (args.group, args.cmd) == ("admin", "create-tenant"):
        from common import auth
        from common.db import session_scope

        with session_scope() as session:
            tenant = auth.create_tenant(session, args.name)
            print(f"created tenant {tenant.name} ({tenant.id})")
    elif (args.group, args.cmd) == ("admin", "create-key"):
        print(_tenant_and_key(args.tenant, args.role, args.name, create_tenant=False))
    elif (args.group, args.cmd) == ("db", "create"):
        create_database(settings.database_url)
    elif (args.group, args.cmd) == ("db", "upgrade"):
        upgrade_database()
    elif (args.group, args.cmd) == ("dev", "tiny-model"):
        from worker.tiny_model import build_tiny_model

        print(build_tiny_model(args.path))
    elif (args.group, args.cmd) == ("dev", "setup"):
        key = dev_setup(args.key_file)
        print(f"development API key (also in {args.key_file}):\n  {key}")
    return 0


def run() -> None:
    from common.errors import TuneQueueError

    try:
        sys.exit(main())
    except TuneQueueError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
