"""The `tunequeue` console script as a user runs it: a subprocess (`run_cli`), or a program in a real terminal
(`Terminal`: a tmux session on a socket of its own, driven with send-keys and read with capture-pane), with an
environment that holds only what the test gives it (none of the caller's CLI settings, a config folder of its own)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import BIN, REPO
from tests.support.waiting import wait_until

TUNEQUEUE = str(BIN / "tunequeue")
USER_SETTINGS = ("TUNEQUEUE_URL", "TUNEQUEUE_API_KEY", "TUNEQUEUE_PROFILE", "COLUMNS", "NO_COLOR", "FORCE_COLOR")


def cli_env(home: Path, url: str | None = None, key: str | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment without the CLI's settings (TUNEQUEUE_URL, _API_KEY, _PROFILE; the test
    database's stay, for the operator commands), HOME and XDG_CONFIG_HOME in `home`, then the URL and key given."""
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), **extra)
    if url is not None:
        env["TUNEQUEUE_URL"] = url
    if key is not None:
        env["TUNEQUEUE_API_KEY"] = key
    return env


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, self
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 600) -> Result:
    done = subprocess.run([TUNEQUEUE, *args], env=env, cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)


class Terminal:
    """One tmux session (200 × 50) on a private server, running a command; the pane stays after it exits, and
    the command's exit status is printed as `[exit N]`."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        tmux = shutil.which("tmux")
        assert tmux, "tmux is not installed: `make browser-tools` installs it (.ci/run does)"
        self.socket = f"tq-cli-{secrets.token_hex(4)}"
        self.base = [tmux, "-L", self.socket, "-f", "/dev/null"]
        shell = f"{shlex.join(command)}; echo \"[exit $?]\"; sleep 600"
        subprocess.run([*self.base, "new-session", "-d", "-s", "t", "-x", "200", "-y", "50", "-c", str(cwd),
                        "sh", "-c", shell], env={**env, "TERM": "xterm-256color"}, check=True)

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", "t", "-S", "-200"], capture_output=True,
                              text=True, check=True).stdout

    def send(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "t", *keys], check=True)

    def type_line(self, text: str) -> None:
        self.send("-l", text)
        self.send("Enter")

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first match of `pattern` on the screen, once it is there."""
        found: re.Match[str] = wait_until(lambda: re.search(pattern, self.screen(), re.M), timeout,
                                          f"{pattern!r} on the screen", interval=0.2)
        return found

    def exit_status(self, timeout: float = 60) -> int:
        return int(self.wait_for(r"^\[exit (\d+)\]", timeout).group(1))

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


@contextmanager
def terminal(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[Terminal]:
    term = Terminal(command, env, cwd)
    try:
        yield term
    except BaseException:
        print(f"--- the terminal's screen ---\n{term.screen()}")
        raise
    finally:
        term.close()
