"""What the global options chose for this run, and the client made from it (on first use, so that `--help` and
`login` need no configuration)."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer

from cli.user.config import Config, resolve
from tunequeue_client import Client


@dataclass
class State:
    profile: str | None = None
    config: Config | None = None
    clients: list[Client] = field(default_factory=list)

    def client(self) -> Client:
        self.config = resolve(self.profile)
        made = Client(self.config.url, self.config.api_key)
        self.clients.append(made)
        return made


def state(ctx: typer.Context) -> State:
    found = ctx.find_object(State)
    assert found is not None, "run_app passes the State"
    return found


def client(ctx: typer.Context) -> Client:
    return state(ctx).client()
