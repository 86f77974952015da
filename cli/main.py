"""`tunequeue`: one command, two halves.

- `admin`, `db`, `dev` (cli/ops.py, argparse): the operator's and developer's commands, straight on the database.
- everything else (cli/user/, typer + rich): a user's commands over the public HTTP API, through tunequeue_client
  (docs/cli.md).

`tunequeue --help` lists both. The operator's half is dispatched before typer is imported, and the user's half
never imports the server's code (SQLAlchemy, torch), so each starts quickly.
"""

from __future__ import annotations

import sys
from typing import NoReturn

OPS_GROUPS = ("admin", "db", "dev")


def main(argv: list[str] | None = None) -> int:
    """The admin, db and dev commands (cli/ops.py) on `argv` (default: sys.argv[1:]); returns the exit code."""
    from cli.ops import main as ops_main

    return ops_main(argv)


def run_ops(argv: list[str]) -> NoReturn:
    """An admin, db or dev command as the console script runs it: a TuneQueueError is one line and exit code 2."""
    from common.errors import TuneQueueError

    try:
        sys.exit(main(argv))
    except TuneQueueError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in OPS_GROUPS:
        run_ops(argv)
    from cli.user.app import run_app

    sys.exit(run_app(argv, ops=run_ops))


if __name__ == "__main__":
    run()
