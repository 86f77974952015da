"""Where the user commands find the API and the key: `TUNEQUEUE_URL` / `TUNEQUEUE_API_KEY`, or a profile of the
file `tunequeue login` writes (`$XDG_CONFIG_HOME/tunequeue/config.toml`, else `~/.config/tunequeue/config.toml`,
mode 0600).

Precedence (docs/cli.md, "Configuration"):
1. a profile named with `--profile NAME` (or `TUNEQUEUE_PROFILE`): that profile, whole; the environment's URL and
   key are not mixed in, so a key is never sent to a URL it was not saved with;
2. otherwise each of `TUNEQUEUE_URL` and `TUNEQUEUE_API_KEY` that is set wins over the profile `default`;
3. then the profile `default`; the URL defaults to http://127.0.0.1:8000.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cli.user.exits import CONFIG, UserError

DEFAULT_PROFILE = "default"
DEFAULT_URL = "http://127.0.0.1:8000"
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Config:
    url: str
    api_key: str
    source: str  # where they came from, for messages: "environment", "profile 'default' (path)", …


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/tunequeue/config.toml` (an absolute XDG_CONFIG_HOME only, as the spec says), else
    `~/.config/tunequeue/config.toml`."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path(env.get("HOME") or Path.home()) / ".config"
    return root / "tunequeue" / "config.toml"


def check_profile_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise UserError(f"profile name {name!r}: use 1 to 64 letters, digits, '_' or '-'", CONFIG)
    return name


def check_url(url: str, where: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"{where}: {url!r} is not an http(s) URL such as {DEFAULT_URL}", CONFIG)
    return url.strip().rstrip("/")


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    """The profiles of the file ({} when it does not exist); a file that cannot be read is a UserError."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}; fix it or write it again with `tunequeue login`", CONFIG) from None
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise UserError(f"{path}: [profiles.NAME] tables expected; write it again with `tunequeue login`", CONFIG)
    return {name: {k: str(v) for k, v in p.items()} for name, p in profiles.items()}


def resolve(profile: str | None, env: Mapping[str, str] | None = None, path: Path | None = None) -> Config:
    """The URL and key to use (the module's docstring says which wins); a UserError (exit 3) when there is none."""
    env = os.environ if env is None else env
    path = config_path(env) if path is None else path
    if profile:
        check_profile_name(profile)
        saved = read_profiles(path).get(profile)
        if saved is None:
            raise UserError(f"no profile {profile!r} in {path}: run `tunequeue --profile {profile} login`", CONFIG)
        where = f"profile {profile!r} ({path})"
        if not saved.get("api_key"):
            raise UserError(f"{where} has no api_key: run `tunequeue --profile {profile} login`", CONFIG)
        return Config(check_url(saved.get("url") or DEFAULT_URL, where), saved["api_key"], where)
    env_url, env_key = env.get("TUNEQUEUE_URL", "").strip(), env.get("TUNEQUEUE_API_KEY", "").strip()
    saved = {} if env_url and env_key else read_profiles(path).get(DEFAULT_PROFILE, {})
    key = env_key or saved.get("api_key", "")
    if not key:
        raise UserError("no API key: set TUNEQUEUE_API_KEY (and TUNEQUEUE_URL), or run `tunequeue login`", CONFIG)
    url = env_url or saved.get("url") or DEFAULT_URL
    sources = sorted({"environment" if env_key else f"profile {DEFAULT_PROFILE!r} ({path})",
                      "environment" if env_url else f"profile {DEFAULT_PROFILE!r} ({path})"})
    source = " and ".join(sources)
    return Config(check_url(url, "TUNEQUEUE_URL" if env_url else source), key, source)


def save_profile(path: Path, name: str, url: str, api_key: str) -> None:
    """Add or replace a profile. The file is written whole under a scratch name created 0600 and then renamed,
    so it is never readable by others, not even for a moment; its folder is made 0700."""
    check_profile_name(name)
    profiles = read_profiles(path)
    profiles[name] = {"url": url, "api_key": api_key}
    lines = ["# written by `tunequeue login`; docs/cli.md", ""]
    for profile, values in sorted(profiles.items()):
        lines.append(f"[profiles.{profile}]")
        # A JSON string (ensure_ascii=False) is a valid TOML basic string.
        lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines))
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
