"""The key that encrypts tenants' secrets at rest (common/services/secrets.py; docs/security.md, "Secrets at rest").

TUNEQUEUE_SECRETS_KEY holds one or more Fernet keys, comma-separated: the first encrypts, every one decrypts, so
an operator rotates by putting a new key first and re-saving the secrets (or leaving the old key listed). Fernet is
AES-128-CBC with an HMAC-SHA256 over it: a ciphertext changed in the table, or read with another key, fails to
decrypt instead of yielding garbage.

In production an unset key means secrets can be neither stored nor used: `SecretsUnavailable` (503 at the API, a
failed job at the worker), never a silently weaker fallback. Elsewhere an unset key is generated once into
`DEV_KEY_FILE` (created 0600), which the API and the workers of `make up` (and the tests) read, like the
development serve token beside it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from common.errors import NotReady
from common.private_files import write_private
from common.settings import Settings

DEV_KEY_FILE = Path("var/secrets-key")  # relative to the working directory, like every var/ default
SETTING = "TUNEQUEUE_SECRETS_KEY"

_FROM_FILE: dict[Path, str] = {}


class SecretsUnavailable(NotReady):
    """No usable key: 503 at the API (nothing the caller can fix), a failed job at a worker."""

    code = "secrets_unavailable"


def _keys_text(settings: Settings) -> str:
    if settings.secrets_key is not None:
        return settings.secrets_key.get_secret_value()
    if settings.environment == "production":
        raise SecretsUnavailable(
            f"this server stores no secrets: the operator has not set {SETTING} (a Fernet key, made with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`); "
            "give the API and every worker the same value")
    path = DEV_KEY_FILE.resolve()
    if path not in _FROM_FILE:
        _FROM_FILE[path] = _read_or_create(path)
    return _FROM_FILE[path]


def fernet(settings: Settings) -> MultiFernet:
    """The key ring of TUNEQUEUE_SECRETS_KEY (or the development file's)."""
    text = _keys_text(settings)
    try:
        return MultiFernet([Fernet(part.strip().encode()) for part in text.split(",") if part.strip()])
    except (ValueError, TypeError):
        raise SecretsUnavailable(f"{SETTING} is not a comma-separated list of Fernet keys (32 url-safe base64 "
                                 "bytes each); the secrets cannot be read or stored until it is fixed") from None


def encrypt(settings: Settings, value: str) -> bytes:
    return fernet(settings).encrypt(value.encode("utf-8"))


def decrypt(settings: Settings, token: bytes, *, name: str) -> str:
    try:
        return fernet(settings).decrypt(bytes(token)).decode("utf-8")
    except InvalidToken:
        raise SecretsUnavailable(f"the secret {name} cannot be decrypted with {SETTING}: the key was changed "
                                 "without keeping the old one in the list. Put the old key back after the new "
                                 "one, or store the secret again (PUT /secrets/{name})") from None


def _read_or_create(path: Path) -> str:
    if not path.exists():
        write_private(path, Fernet.generate_key().decode() + "\n", replace=False)
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != os.getuid():
        raise SecretsUnavailable(f"{path} (the development secrets key) must be yours and private (mode 0600); it "
                                 f"is mode {stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}")
    return path.read_text().strip()
