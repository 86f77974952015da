"""How the API proves to the inference server (`serve`) that a request comes from it, and for which tenant.

Serve answers only requests that carry the shared secret TUNEQUEUE_SERVE_TOKEN as `Authorization: Bearer <token>`,
and generates only for the tenant named in `TENANT_HEADER`, re-checking that the model is that tenant's
(worker/serve/app.py). Anyone else on the host or the network who reaches serve's port gets a 401.

In production the token must be set, or api and serve refuse to start. Elsewhere an unset token is generated once
into `DEV_TOKEN_FILE` (created 0600, never loosened afterwards), which both processes of `make up` read: a fresh
machine needs no manual step, and the file is as private as the development API key beside it."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from common.private_files import write_private
from common.settings import SERVE_TOKEN_MIN_LENGTH, Settings

TENANT_HEADER = "X-TuneQueue-Tenant"
# Relative to the working directory, like every var/ default (make up runs from the repository root).
DEV_TOKEN_FILE = Path("var/serve-token")

_FROM_FILE: dict[Path, str] = {}


class ServeTokenError(RuntimeError):
    """No usable token (none set in production, or an unsafe development file): the process must not start."""


def serve_token(settings: Settings) -> str:
    """The shared secret: TUNEQUEUE_SERVE_TOKEN, else (not in production) the development file's."""
    if settings.serve_token is not None:
        return settings.serve_token.get_secret_value()
    if settings.environment == "production":
        raise ServeTokenError(
            "TUNEQUEUE_SERVE_TOKEN must be set in production: the shared secret the API sends to the inference "
            "server, which answers nothing else. Give api and serve the same value, e.g. `openssl rand -hex 32`.")
    path = DEV_TOKEN_FILE.resolve()
    if path not in _FROM_FILE:
        _FROM_FILE[path] = _read_or_create(path)
    return _FROM_FILE[path]


def auth_headers(settings: Settings, tenant_id: str) -> dict[str, str]:
    """What the API sends with every request it forwards to serve."""
    return {"Authorization": f"Bearer {serve_token(settings)}", TENANT_HEADER: tenant_id}


def _read_or_create(path: Path) -> str:
    """The token in `path`, made first if missing. api and serve start together: the loser of the race reads the
    winner's token. The file appears whole (written under another name, then hard-linked into place), so nobody
    reads half a token."""
    if not path.exists():
        write_private(path, secrets.token_hex(32) + "\n", replace=False)
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.getuid():
        raise ServeTokenError(f"{path} (the development serve token) must be yours and private (mode 0600); "
                                f"it is mode {stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}. Delete it: the "
                                "next start makes a new one.")
    token = path.read_text().strip()
    if len(token) < SERVE_TOKEN_MIN_LENGTH:
        raise ServeTokenError(f"{path} holds no usable serve token; delete it: the next start makes a new one.")
    return token
