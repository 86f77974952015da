"""`tunequeue login`: ask for the API's URL and a key, check the key against the API, save them as a profile."""

from __future__ import annotations

import os
from typing import Annotated

import httpx
import typer

from cli.user.config import DEFAULT_PROFILE, DEFAULT_URL, check_url, config_path, read_profiles, save_profile
from cli.user.exits import CONFIG, UserError
from cli.user.output import out
from cli.user.session import state
from tunequeue_client import ApiError, Client


def login(ctx: typer.Context,
          url: Annotated[str | None, typer.Option("--url", help="the API's URL; asked for when not given")] = None,
          ) -> None:
    profile = state(ctx).profile or DEFAULT_PROFILE
    path = config_path()
    saved = read_profiles(path).get(profile, {})
    if url is None:
        url = typer.prompt("TuneQueue API URL",
                           default=saved.get("url") or os.environ.get("TUNEQUEUE_URL") or DEFAULT_URL)
    url = check_url(url, "the URL")
    key = typer.prompt("API key (not shown)", hide_input=True).strip()
    if not key:
        raise UserError("no key given; nothing saved", CONFIG)
    try:
        with Client(url, key, timeout=20) as client:
            quota = client.quota()
    except ApiError as exc:
        raise UserError(f"{url} refused this key: {exc.message} [{exc.status} {exc.code}]; nothing saved",
                        CONFIG) from None
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach {url}: {exc or type(exc).__name__}; nothing saved", CONFIG) from None
    save_profile(path, profile, url, key)
    out.print(f"Signed in to {url} (organization {quota.get('organization_id')}); saved as profile "
              f"{profile!r} in {path} (mode 0600).", markup=False)
