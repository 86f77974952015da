"""`tunequeue`'s user commands run as a user runs them (the console script in a subprocess) against the live stack
(API, worker, serve on the tiny model): upload with line-numbered errors and the fix, a job created from a YAML
spec and watched to success (exit 0), a failed and a cancelled job's watch (exit 5 and 6), `--json` output read
back, models listed, downloaded and deleted, a bad spec field answered with the API's error at its line, and a
missing or refused configuration as one line with exit 3; a watch whose connection is cut (a TCP relay closes it)
reconnects and prints every event once."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli.user.exits import CONFIG, FILE_INVALID, JOB_CANCELLED, JOB_FAILED
from tests.support.cli import TUNEQUEUE, cli_env, run_cli
from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.servers import REPO, LiveService
from tests.support.tcp_relay import relay
from tests.support.waiting import wait_until
from tunequeue_client import Client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def key() -> str:
    return make_tenant()[1]


@pytest.fixture
def env(live_service: LiveService, key: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, live_service.url, key)


@pytest.fixture(scope="module")
def good_file(live_service: LiveService, key: str) -> str:
    with Client(live_service.url, key) as client:
        file: str = client.upload_bytes(jsonl(chat_rows(16)), "train.jsonl")["id"]
    return file


def write_spec(path: Path, body: dict[str, object]) -> Path:
    """The spec as YAML or JSON, by the file's extension."""
    path.write_text(json.dumps(body) if path.suffix == ".json" else yaml.safe_dump(body, sort_keys=False))
    return path


def test_uploading_a_bad_file_prints_each_error_with_its_line_and_fix_and_exits_4(env: dict[str, str],
                                                                                    tmp_path: Path) -> None:
    rows = chat_rows(3)
    rows[1]["messages"][1]["role"] = "usr"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(rows[:2]) + b'{"messages": [}\n' + jsonl(rows[2:]))
    done = run_cli("files", "upload", str(bad), env=env)
    assert done.returncode == FILE_INVALID, done
    assert "error: 2 problem(s)" in done.stdout, done.stdout
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\s*(\d+)\s+\S+.*$", done.stdout, re.M)}
    assert set(lines) == {2, 3}, done.stdout
    assert "unrecognized_role" in lines[2] and "did you mean 'user'" in lines[2], lines[2]
    assert "invalid_json" in lines[3], lines[3]
    as_json = run_cli("files", "upload", str(bad), "--json", env=env)
    assert as_json.returncode == FILE_INVALID
    assert [e["line"] for e in json.loads(as_json.stdout)["errors"]] == [2, 3]


def test_files_list_get_preview_and_delete_read_back_as_json_and_show_trained_spans(
        env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "train.jsonl"
    good.write_bytes(jsonl(chat_rows(4)))
    uploaded = run_cli("files", "upload", str(good), "--wait", env=env)
    assert uploaded.returncode == 0 and "processed: format chat, trains stage sft" in uploaded.stdout, uploaded
    file_id = uploaded.stdout.split()[0]
    assert file_id in [f["id"] for f in run_cli("files", "list", "--json", env=env).json()]
    assert run_cli("files", "get", file_id, "--json", env=env).json()["row_count"] == 4
    preview = run_cli("files", "preview", file_id, "--limit", "1", env=env)
    assert preview.returncode == 0, preview
    # Not a terminal: the trained span (the assistant's answer) is marked between ⟦ and ⟧, the prompt is not.
    row = preview.stdout.split("── line 1 ")[1]
    trained = re.findall(r"⟦(.*?)⟧", row, re.S)
    assert trained == ["The answer is forty two.<|im_end|>"], preview.stdout
    assert "What is the answer? (0)" in row.split("⟦")[0]
    assert run_cli("files", "preview", file_id, "--json", env=env).json()["data"][0]["sequences"][0][
        "trained_tokens"] > 0
    assert run_cli("files", "delete", file_id, env=env).returncode == 0
    gone = run_cli("files", "get", file_id, env=env)
    assert gone.returncode == 1 and "file_not_found" in gone.stderr, gone


def test_a_yaml_spec_created_and_watched_to_success_exits_0_and_its_model_downloads(
        live_service: LiveService, env: dict[str, str], good_file: str, tmp_path: Path) -> None:
    spec_file = write_spec(tmp_path / "spec.yaml", spec(good_file))
    done = run_cli("jobs", "create", "-f", str(spec_file), "--watch", env=env)
    assert done.returncode == 0, (done, live_service.logs())
    job_id = re.search(r"created (ftjob-\S+)", done.stdout).group(1)  # type: ignore[union-attr]
    assert re.search(rf"{job_id} succeeded: model ft:tiny-llama:test:{job_id}", done.stdout), done.stdout
    assert "Step " in done.stdout, "the events were printed as lines (not a terminal)"

    job = run_cli("jobs", "get", job_id, "--json", env=env).json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"]
    assert job_id in [j["id"] for j in run_cli("jobs", "list", "--json", env=env).json()]
    events = run_cli("jobs", "events", job_id, "--json", env=env).json()
    assert events[-1]["type"] == "state" and events[-1]["data"]["status"] == "succeeded"
    followed = run_cli("jobs", "events", job_id, "--follow", "--json", env=env)
    assert [json.loads(line)["id"] for line in followed.stdout.splitlines()] == [e["id"] for e in events]
    metrics = run_cli("jobs", "metrics", job_id, "--json", env=env).json()["data"]
    plotted = run_cli("jobs", "metrics", job_id, "--plot", env=env)
    assert plotted.returncode == 0 and f"{job_id}: training loss" in plotted.stdout
    assert re.search("[\u2801-\u28ff]", plotted.stdout), "braille dots drawn"
    assert plotted.stdout.splitlines()[-1].split() == ["step", str(metrics[0]["step"]), str(metrics[-1]["step"])]

    model = job["fine_tuned_model"]
    assert model in [m["id"] for m in run_cli("models", "list", "--json", env=env).json()]
    table = run_cli("models", "list", env=env)
    assert re.search(rf"^{re.escape(model)}\s+tiny-llama\s+{job_id}", table.stdout, re.M), table.stdout
    saved = run_cli("models", "download", model, "--json", env=env, cwd=tmp_path).json()
    with tarfile.open(saved["path"] if Path(saved["path"]).is_absolute() else tmp_path / saved["path"]) as tar:
        assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= set(tar.getnames())
    assert run_cli("models", "delete", model, env=env).returncode == 0
    assert model not in [m["id"] for m in run_cli("models", "list", "--json", env=env).json()]


def test_a_bad_spec_field_gets_the_api_error_with_its_param_and_line(env: dict[str, str], good_file: str,
                                                                     tmp_path: Path) -> None:
    body = spec(good_file)
    body["hyperparameters"]["warp"] = 9
    spec_file = write_spec(tmp_path / "spec.yaml", body)
    line = 1 + spec_file.read_text().splitlines().index("  warp: 9")
    done = run_cli("jobs", "create", "-f", str(spec_file), env=env)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.startswith(f"error: {spec_file} line {line}: unknown field `hyperparameters.warp`"), done
    assert "[422 unknown_field] (param: hyperparameters.warp)" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def watcher(env: dict[str, str]) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watching_a_job_that_fails_exits_5_with_its_error(env: dict[str, str], good_file: str,
                                                          tmp_path: Path) -> None:
    # No row keeps a trained token within 16 tokens: the job fails while its files are checked.
    body = spec(good_file)
    body["hyperparameters"]["max_seq_length"] = 16
    created = run_cli("jobs", "create", "-f", str(write_spec(tmp_path / "spec.yaml", body)), "--json", env=env)
    job_id = created.json()["id"]
    done = run_cli("jobs", "watch", job_id, env=env)
    assert done.returncode == JOB_FAILED, done
    assert f"{job_id} failed: invalid_training_file:" in done.stdout, done.stdout
    again = run_cli("jobs", "create", "-f", str(tmp_path / "spec.yaml"), "--watch", "--json", env=env)
    assert again.returncode == JOB_FAILED and json.loads(again.stdout)["status"] == "failed"


def test_watching_a_job_that_is_cancelled_exits_6(env: dict[str, str], good_file: str, tmp_path: Path,
                                                  watcher: list[subprocess.Popen[str]]) -> None:
    body = spec(good_file)
    body["hyperparameters"]["n_epochs"] = 100
    job_id = run_cli("jobs", "create", "-f", str(write_spec(tmp_path / "spec.json", body)), "--json",
                     env=env).json()["id"]
    proc = subprocess.Popen([TUNEQUEUE, "jobs", "watch", job_id], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watcher.append(proc)
    cancelled = run_cli("jobs", "cancel", job_id, env=env)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"{job_id}: "), cancelled
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == JOB_CANCELLED, (out, err)
    assert out.rstrip().endswith(f"{job_id} cancelled"), out


def test_no_configuration_is_one_line_and_exit_3(tmp_path: Path, live_service: LiveService) -> None:
    for args, env, says in [
        (("jobs", "list"), cli_env(tmp_path), "error: no API key: set TUNEQUEUE_API_KEY (and TUNEQUEUE_URL), or "
                                              "run `tunequeue login`"),
        (("--profile", "prod", "jobs", "list"), cli_env(tmp_path), "error: no profile 'prod' in "
                                                                   f"{tmp_path}/config/tunequeue/config.toml"),
        (("models", "list"), cli_env(tmp_path, live_service.url, "tq-not-a-key"),
         f"error: {live_service.url} refused the API key from environment: "),
    ]:
        done = run_cli(*args, env=env)
        assert done.returncode == CONFIG, done
        assert done.stdout == "" and done.stderr.startswith(says) and done.stderr.count("\n") == 1, done


def test_the_operator_commands_still_answer_and_help_lists_both_halves(tmp_path: Path) -> None:
    top = run_cli("--help", env=cli_env(tmp_path, COLUMNS="120"))
    assert top.returncode == 0
    for command in ("login", "files", "jobs", "models", "chat", "admin", "db", "dev"):
        assert re.search(rf"^│ {command}\s", top.stdout, re.M), (command, top.stdout)
    admin = run_cli("admin", "--help", env=cli_env(tmp_path))
    assert admin.returncode == 0 and admin.stdout.startswith("usage: tunequeue admin [-h]"), admin
    bad = run_cli("admin", "set-quota", "no-such-tenant", "--max-queued", "1", env=cli_env(tmp_path))
    assert bad.returncode == 2 and bad.stderr == "error: no tenant named 'no-such-tenant'\n", bad


def test_the_client_streams_a_chat_answer_in_several_chunks(live_service: LiveService, key: str) -> None:
    with Client(live_service.url, key) as client:
        # The random-weight model's sampled tokens (greedy, it may end at once); the same seed, the same text.
        params = {"max_tokens": 12, "temperature": 1.0, "seed": 3}
        chunks = list(client.stream_chat_completion("tiny-llama", [{"role": "user", "content": "Hi"}], **params))
        whole = client.chat_completion("tiny-llama", [{"role": "user", "content": "Hi"}], **params)
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]
    assert sum(1 for p in pieces if p) >= 2, chunks
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]


def test_watch_follows_the_stream_through_a_cut_connection_printing_every_event_once(
        live_service: LiveService, env: dict[str, str], key: str, good_file: str, tmp_path: Path,
        watcher: list[subprocess.Popen[str]]) -> None:
    body = spec(good_file)
    body["hyperparameters"]["n_epochs"] = 100
    job_id = run_cli("jobs", "create", "-f", str(write_spec(tmp_path / "spec.yaml", body)), "--json",
                     env=env).json()["id"]
    lines: list[str] = []
    with relay(int(live_service.url.rsplit(":", 1)[1])) as network:
        proc = subprocess.Popen([TUNEQUEUE, "jobs", "watch", job_id], env={
            **env, "TUNEQUEUE_URL": f"http://127.0.0.1:{network.port}"}, cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        watcher.append(proc)
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        wait_until(lambda: any("Step " in line for line in lines), 300, "a metrics event printed")
        assert network.cut() >= 1, "the watch's stream was open"
        wait_until(lambda: any("connection lost" in line and "reconnecting, try 1" in line for line in lines), 60,
                   "the reconnect announced")
        after = len(lines)
        wait_until(lambda: any("Step " in line for line in lines[after:]), 300, "an event after the reconnect")
        assert run_cli("jobs", "cancel", job_id, env=env).returncode == 0
        proc.wait(timeout=300)
        reader.join(10)
    assert proc.returncode == JOB_CANCELLED, lines
    printed = [m.group(1) for line in lines if (m := re.match(r"^\d\d:\d\d:\d\d \w+\s+(.*)$", line.rstrip("\n")))]
    with Client(live_service.url, key) as client:
        stored = [event["message"] for event in client.events(job_id)]
    assert printed == stored, "an event was missed or printed twice across the cut"
