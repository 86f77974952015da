"""The typer application: the global `--profile`, the command groups, and the one place where an error becomes a
line on stderr and an exit code (cli/user/exits.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import httpx
import typer

from cli.user import chat, files, jobs, login, models
from cli.user.exits import API_ERROR, CONFIG, INTERRUPTED, UserError
from cli.user.output import error
from cli.user.session import State, state
from tunequeue_client import ApiError

OPS_PANEL = "Operator commands (on the database; `tunequeue admin --help` …)"
OPS_HELP = {"admin": "tenants, API keys, quotas", "db": "create and migrate the database",
            "dev": "developer helpers: demo models, `make up`'s setup"}


def build_app(ops: Callable[[list[str]], Any]) -> typer.Typer:
    app = typer.Typer(name="tunequeue", no_args_is_help=True, pretty_exceptions_enable=False,
                      add_completion=False, rich_markup_mode="rich",
                      help="TuneQueue: fine-tune models over its API (docs/cli.md). Configure with `tunequeue login` "
                           "or TUNEQUEUE_URL and TUNEQUEUE_API_KEY.")

    @app.callback()
    def root(ctx: typer.Context,
             profile: Annotated[str | None, typer.Option(
                 "--profile", envvar="TUNEQUEUE_PROFILE", show_envvar=True,
                 help="use this saved profile (written by `tunequeue --profile NAME login`) instead of "
                      "TUNEQUEUE_URL/TUNEQUEUE_API_KEY and the profile `default`")] = None) -> None:
        state(ctx).profile = profile

    app.command("login", help="ask for the API's URL and a key, check the key, save them as a profile (0600)")(
        login.login)
    app.add_typer(files.app, name="files", help="upload, list, preview and delete datasets")
    app.add_typer(jobs.app, name="jobs", help="create, watch, list, cancel jobs; their events and metrics")
    app.add_typer(models.app, name="models", help="list, download and delete models")
    app.command("chat", help="chat with a model, streamed (/exit or Ctrl-D to leave)")(chat.chat)

    for group, text in OPS_HELP.items():
        def forward(ctx: typer.Context, group: str = group) -> None:
            ops([group, *ctx.args])

        app.command(group, help=text, rich_help_panel=OPS_PANEL, add_help_option=False,
                    context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(forward)
    return app


def run_app(argv: list[str], *, ops: Callable[[list[str]], Any]) -> int:
    """Run the user commands on `argv`; returns the exit code."""
    current = State()
    try:
        build_app(ops)(args=argv, prog_name="tunequeue", obj=current)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        error(exc.message)
        return exc.code
    except ApiError as exc:
        return _api_error(exc, current)
    except httpx.TransportError as exc:
        url = current.config.url if current.config else "the API"
        error(f"cannot reach {url}: {exc or type(exc).__name__}; is the URL right (TUNEQUEUE_URL, `tunequeue login`)?")
        return API_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return INTERRUPTED
    finally:
        for made in current.clients:
            made.close()
    return 0


def _api_error(exc: ApiError, current: State) -> int:
    where = f" (param: {exc.param})" if exc.param else ""
    if exc.status == 401:
        source = current.config.source if current.config else "the configuration"
        url = current.config.url if current.config else "the API"
        error(f"{url} refused the API key from {source}: {exc.message.rstrip('.')}; run `tunequeue login` or set "
              "TUNEQUEUE_API_KEY")
        return CONFIG
    error(f"{exc.message} [{exc.status} {exc.code or exc.type}]{where}")
    return API_ERROR
