"""The CLI's interactive commands in a real terminal (tmux: send-keys in, capture-pane out) against the live
stack: `chat` streams an answer from the tiny model and leaves on /exit and on Ctrl-D; `jobs watch` draws its
progress bar (step/total, loss, tokens/s, ETA, memory) while a job trains and exits 0 when it succeeds; `login`
asks for the URL and a hidden key, saves a profile the next command uses, and refuses a wrong key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cli.user.exits import CONFIG
from tests.support.cli import TUNEQUEUE, cli_env, run_cli, terminal
from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.servers import REPO, LiveService
from tunequeue_client import Client

pytestmark = pytest.mark.slow

CHAT = {"max_tokens": 12, "temperature": 1.0, "seed": 3}


def test_chat_streams_an_answer_in_a_terminal_and_leaves_on_exit_and_on_ctrl_d(live_service: LiveService,
                                                                                 tmp_path: Path) -> None:
    _, key = make_tenant()
    env = cli_env(tmp_path, live_service.url, key)
    with Client(live_service.url, key) as client:  # what the same request answers (the same seed, the same text)
        expected = client.chat_completion("tiny-llama", [{"role": "system", "content": "Be terse."},
                                                         {"role": "user", "content": "Hello there"}],
                                          **CHAT)["choices"][0]["message"]["content"]
    command = [TUNEQUEUE, "chat", "tiny-llama", "--system", "Be terse.", "--max-tokens", "12", "--temperature",
               "1", "--seed", "3"]
    with terminal(command, env, REPO) as term:
        term.wait_for(r"^you>\s*$")
        term.type_line("Hello there")
        answer = term.wait_for(r"^tiny-llama> ((?:.*\n)*?)you>\s*$").group(1)
        # The random-weight model's text, less the control characters the CLI does not let reach the terminal.
        shown = "".join(c for c in expected if c.isprintable() or c.isspace()).split()
        assert shown and answer.split() == shown, (answer, expected)
        term.type_line("/exit")
        assert term.exit_status() == 0
    with terminal(command, env, REPO) as term:
        term.wait_for(r"^you>\s*$")
        term.send("C-d")
        assert term.exit_status() == 0


def test_jobs_watch_draws_the_progress_bar_while_the_job_trains_and_exits_0(live_service: LiveService,
                                                                            tmp_path: Path) -> None:
    _, key = make_tenant()
    with Client(live_service.url, key) as client:
        file = client.upload_bytes(jsonl(chat_rows(16)), "train.jsonl")
        body = spec(file["id"])
        body["hyperparameters"]["n_epochs"] = 20
        job = client.create_job(body)
    with terminal([TUNEQUEUE, "jobs", "watch", job["id"]], cli_env(tmp_path, live_service.url, key), REPO) as term:
        bar = term.wait_for(r"(\d+)/(\d+) steps +loss [0-9.]+ +\d+ tok/s +ETA \S+ +(RSS \d+ MB|GPU)", timeout=300)
        assert 0 < int(bar.group(1)) <= int(bar.group(2)), bar.group(0)
        assert term.exit_status(timeout=600) == 0, live_service.logs()
        assert f"{job['id']} succeeded: model ft:tiny-llama:test:{job['id']}" in term.screen()
        total = bar.group(2)
        assert term.wait_for(rf"{job['id']} succeeded.*{total}/{total} steps", timeout=5) is not None


def test_login_asks_for_the_url_and_a_hidden_key_and_saves_a_profile_the_next_command_uses(
        live_service: LiveService, tmp_path: Path) -> None:
    _, key = make_tenant()
    env = cli_env(tmp_path)
    with terminal([TUNEQUEUE, "login"], env, REPO) as term:
        term.wait_for(r"TuneQueue API URL \[http://127\.0\.0\.1:8000\]:\s*$")
        term.type_line(live_service.url)
        term.wait_for(r"API key \(not shown\):\s*$")
        term.type_line(key)
        assert term.exit_status() == 0
        assert key not in term.screen(), "the key was echoed"
        assert "Signed in to " + live_service.url in term.screen()
    saved = tmp_path / "config" / "tunequeue" / "config.toml"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert run_cli("jobs", "list", "--json", env=env).json() == []

    with terminal([TUNEQUEUE, "--profile", "other", "login", "--url", live_service.url], env, REPO) as term:
        term.wait_for(r"API key \(not shown\):\s*$")
        term.type_line("tq-wrong")
        assert term.exit_status() == CONFIG
        assert f"error: {live_service.url} refused this key:" in term.screen()
    assert "other" not in saved.read_text()
