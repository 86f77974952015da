"""The dashboard through the real nginx (deploy/nginx.conf with its sub-path example enabled) in front of the API
started with its production command (`--proxy-headers`, so X-Forwarded-Prefix is honoured), over the live stack's
worker and inference server: sign in, upload, start a job from the form, watch its loss chart and chat with the
result, every request the page makes staying under the sub-path."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.ui.conftest import PageErrors, Tenant, no_script_errors, sign_in
from tests.support.api_process import production_api
from tests.support.deploy import SUB_PATH, running_nginx
from tests.support.factories import chat_rows, jsonl
from tests.support.servers import LiveService

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proxy(live_service: LiveService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx with the sub-path example, in front of a production API on the live stack's queues and serve."""
    env = {"TUNEQUEUE_API_WORKERS": "1", "TUNEQUEUE_CELERY_QUEUE": live_service.queue,
           "TUNEQUEUE_VALIDATE_QUEUE": f"{live_service.queue}.validate", "TUNEQUEUE_SERVE_URL": live_service.serve_url,
           "TUNEQUEUE_SERVE_TOKEN": live_service.serve_token}
    with production_api(tmp_path_factory.mktemp("proxied-api"), env) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with running_nginx(tmp_path_factory.mktemp("nginx-ui"), port, sub_path=True) as proxy_port:
            yield f"http://127.0.0.1:{proxy_port}"


def test_the_whole_flow_works_through_nginx_under_a_sub_path(
        proxy: str, tenant_a: Tenant, page: Page, page_errors: PageErrors, tmp_path: Path) -> None:
    paths: list[str] = []
    page.on("request", lambda r: paths.append(urlsplit(r.url).path) if r.url.startswith(proxy) else None)
    page.goto(f"{proxy}{SUB_PATH}/ui")
    expect(page).to_have_url(f"{proxy}{SUB_PATH}/ui/")
    sign_in(page, f"{proxy}{SUB_PATH}/ui/", tenant_a.key)

    page.get_by_role("link", name="New job").first.click()
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(chat_rows(16)))
    page.locator("#upload-file").set_input_files(str(data))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator(".preview pre.tokens .trained").first).to_be_visible()
    for field, value in (("base_model", "tiny-llama"), ("suffix", "sub-path"), ("hyperparameters-n_epochs", "3"),
                         ("hyperparameters-batch_size", "4"), ("hyperparameters-learning_rate", "0.01"),
                         ("hyperparameters-max_seq_length", "128")):
        page.locator(f"#field-{field}").fill(value)
    page.get_by_role("button", name="Start job").click()
    expect(page).to_have_url(re.compile(rf"{re.escape(SUB_PATH)}/ui/#/job/ftjob-"))
    expect(page.locator("canvas[data-chart=loss]")).not_to_have_attribute("data-points", "0", timeout=300_000)
    expect(page.locator(".stream-state")).to_have_text(re.compile("live|ended"))
    expect(page.locator(".job-header .status")).to_have_text("succeeded", timeout=300_000)

    page.get_by_role("link", name="Chat with this model").click()
    page.locator("#pg-prompt").fill("What is the answer?")
    page.locator("#pg-max-tokens").fill("8")
    page.get_by_role("button", name="Send").click()
    columns = page.locator(".answer-column")
    expect(columns).to_have_count(2)
    for i in range(2):
        expect(columns.nth(i).locator(".answer-state")).to_have_attribute("data-done", "true", timeout=120_000)
        expect(columns.nth(i).locator(".answer-text")).not_to_be_empty()

    outside: list[Any] = [p for p in paths if not p.startswith(f"{SUB_PATH}/")]
    assert not outside, f"requests left the sub-path: {outside}"
    for wanted in ("/ui/app.js", "/files", "/openapi.json", "/jobs", "/v1/chat/completions"):
        assert f"{SUB_PATH}{wanted}" in paths, (wanted, sorted(set(paths)))
    assert any(p.startswith(f"{SUB_PATH}/jobs/") and p.endswith("/events") for p in paths)
    no_script_errors(page_errors)
