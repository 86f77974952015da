"""The issue's done-when for a script user: `tunequeue jobs create -f spec.yaml --watch` through the real nginx
running deploy/nginx.conf with its sub-path example enabled, TUNEQUEUE_URL pointing under the sub-path, in front
of the live stack's API: the upload, the job, its event stream followed to the end (exit 0), the model's
download, and a chat answer streamed, all through the prefix."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.support.cli import cli_env, run_cli
from tests.support.deploy import SUB_PATH, running_nginx
from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.servers import LiveService
from tunequeue_client import Client

pytestmark = pytest.mark.slow


def test_jobs_create_watch_works_through_nginx_under_a_sub_path(live_service: LiveService, tmp_path: Path) -> None:
    _, key = make_tenant()
    upstream = int(live_service.url.rsplit(":", 1)[1])
    (tmp_path / "nginx").mkdir()
    with running_nginx(tmp_path / "nginx", upstream, sub_path=True) as port:
        url = f"http://127.0.0.1:{port}{SUB_PATH}"
        env = cli_env(tmp_path, url, key)
        data = tmp_path / "train.jsonl"
        data.write_bytes(jsonl(chat_rows(16)))
        uploaded = run_cli("files", "upload", str(data), "--json", env=env).json()
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec(uploaded["id"])))

        done = run_cli("jobs", "create", "-f", str(spec_file), "--watch", env=env)
        assert done.returncode == 0, (done, live_service.logs())
        job_id = re.search(r"created (ftjob-\S+)", done.stdout).group(1)  # type: ignore[union-attr]
        model = f"ft:tiny-llama:test:{job_id}"
        assert f"{job_id} succeeded: model {model}" in done.stdout, done.stdout

        saved = run_cli("models", "download", model, "-o", str(tmp_path / "m.tar"), "--json", env=env).json()
        with tarfile.open(saved["path"]) as tar:
            assert "adapter_model.safetensors" in tar.getnames()
        with Client(url, key) as client:
            chunks = list(client.stream_chat_completion(model, chat_rows(1)[0]["messages"][:2], max_tokens=8,
                                                        temperature=0))
        assert chunks and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length"), chunks
    nginx_log = (tmp_path / "nginx" / "error.log").read_text()
    assert "upstream" not in nginx_log, nginx_log
