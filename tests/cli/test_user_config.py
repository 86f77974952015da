"""Where the user commands find the URL and key (cli/user/config.py): an explicit profile whole, else each
environment variable over the profile `default`, else that profile; a clear error (exit 3) for nothing, an unknown
profile or a broken file; `tunequeue login`'s file written 0600 in a 0700 folder under XDG_CONFIG_HOME."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cli.user.config import DEFAULT_URL, config_path, resolve, save_profile
from cli.user.exits import CONFIG, UserError


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = config_path({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    save_profile(file, "default", "http://saved:8000", "tq-saved")
    save_profile(file, "prod", "https://prod.example/tuneq", "tq-prod")
    return file


def test_the_file_lives_under_xdg_config_home_else_home_config(tmp_path: Path) -> None:
    assert config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/tunequeue/config.toml")
    assert config_path({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}) == Path("/h/.config/tunequeue/config.toml")
    assert config_path({"HOME": "/h"}) == Path("/h/.config/tunequeue/config.toml")


def test_the_profile_file_is_owner_only_and_keeps_other_profiles(path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    save_profile(path, "default", "http://other:1", 'tq-"quoted"\\')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve(None, {}, path).api_key == 'tq-"quoted"\\'
    assert resolve("prod", {}, path).api_key == "tq-prod"


def test_the_environment_wins_over_the_default_profile_value_by_value(path: Path) -> None:
    both = resolve(None, {"TUNEQUEUE_URL": "http://env:1", "TUNEQUEUE_API_KEY": "tq-env"}, path)
    assert (both.url, both.api_key, both.source) == ("http://env:1", "tq-env", "environment")
    key_only = resolve(None, {"TUNEQUEUE_API_KEY": "tq-env"}, path)
    assert (key_only.url, key_only.api_key) == ("http://saved:8000", "tq-env")
    url_only = resolve(None, {"TUNEQUEUE_URL": "http://env:1/"}, path)
    assert (url_only.url, url_only.api_key) == ("http://env:1", "tq-saved")
    saved = resolve(None, {}, path)
    assert (saved.url, saved.api_key) == ("http://saved:8000", "tq-saved")


def test_a_named_profile_is_used_whole_even_with_the_environment_set(path: Path) -> None:
    named = resolve("prod", {"TUNEQUEUE_URL": "http://env:1", "TUNEQUEUE_API_KEY": "tq-env"}, path)
    assert (named.url, named.api_key) == ("https://prod.example/tuneq", "tq-prod")


def test_the_environment_alone_needs_no_file(tmp_path: Path) -> None:
    found = resolve(None, {"TUNEQUEUE_API_KEY": "tq-env"}, tmp_path / "missing.toml")
    assert (found.url, found.api_key) == (DEFAULT_URL, "tq-env")


@pytest.mark.parametrize(("profile", "env", "says"), [
    (None, {}, "no API key: set TUNEQUEUE_API_KEY"),
    ("staging", {}, "no profile 'staging' in"),
    ("bad name", {}, "profile name 'bad name'"),
    (None, {"TUNEQUEUE_API_KEY": "k", "TUNEQUEUE_URL": "ftp://x"}, "TUNEQUEUE_URL: 'ftp://x' is not an http(s) URL"),
])
def test_a_missing_or_invalid_configuration_is_a_config_error(tmp_path: Path, profile: str | None,
                                                               env: dict[str, str], says: str) -> None:
    with pytest.raises(UserError) as raised:
        resolve(profile, env, tmp_path / "none.toml")
    assert raised.value.code == CONFIG and says in raised.value.message, raised.value.message


def test_a_broken_file_is_named_in_the_error(tmp_path: Path) -> None:
    broken = tmp_path / "config.toml"
    broken.write_text("[profiles.default\nurl = 'x'\n")
    with pytest.raises(UserError) as raised:
        resolve(None, {}, broken)
    assert raised.value.code == CONFIG and str(broken) in raised.value.message
