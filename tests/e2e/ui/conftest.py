"""The dashboard in a real browser: Debian's Chromium driven by Playwright for Python (never a downloaded browser),
against the live stack of tests/e2e/conftest.py (`live_service`).

A missing Chromium fails these tests, saying how to install it (`make browser-tools`): a skip would hide it.
Screenshots go to $TUNEQUEUE_UI_SCREENSHOTS when set (docs/ui/ holds the committed ones: run with
TUNEQUEUE_UI_SCREENSHOTS=docs/ui to refresh them), else to the test's tmp_path, so that CI rewrites no tracked file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.factories import chat_rows, jsonl, make_tenant, spec
from tests.support.servers import REPO, LiveService, wait_for

VIEWPORT = {"width": 1280, "height": 800}
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def chromium_path() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    pytest.fail("Chromium is not installed: `make browser-tools` (apt-get install chromium; .ci/run does it). "
                "The dashboard's tests drive Debian's Chromium through Playwright; Playwright's own browser download "
                "is not used.")


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One Chromium for the dashboard's tests, stopped once they are done: Playwright's sync API runs an event loop
    in this thread while it lives, and every later test that calls asyncio.run() (the serve engine's, the API's
    concurrency tests) would fail with 'cannot be called from a running event loop'."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:  # pragma: no cover - a dev dependency
        pytest.fail("playwright is not installed: `make install` (it is in the dev extra)")
    expect.set_options(timeout=30_000)  # two shared cores: what shows at once on a laptop may take seconds here
    executable = chromium_path()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class PageErrors:
    """Uncaught exceptions and console errors of a page (a Content-Security-Policy refusal is one)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser: Any, page_errors: PageErrors) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) at 1280×800. Fails the test on an uncaught script error or a
    console error other than the API's own refusals that the test provoked (those are filtered by `expected`)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page_errors.watch(page)
    yield page
    context.close()


def no_script_errors(page_errors: PageErrors, *, allowed: tuple[str, ...] = ()) -> None:
    """No uncaught exception and no console error, but those naming an HTTP status the test caused (`allowed`)."""
    unexpected = [e for e in page_errors.errors if not any(a in e for a in allowed)]
    assert not unexpected, "the page logged errors:\n" + "\n".join(unexpected)


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $TUNEQUEUE_UI_SCREENSHOTS (relative to the repository) or a temp folder."""
    wanted = os.environ.get("TUNEQUEUE_UI_SCREENSHOTS")
    folder = (REPO / wanted) if wanted else tmp_path_factory.mktemp("ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def ui_url(service_url: str, prefix: str = "") -> str:
    return f"{service_url}{prefix}/ui/"


def sign_in(page: Any, url: str, key: str) -> None:
    """Open the dashboard at `url` and sign in with `key`; returns once the jobs page shows."""
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("h1", has_text="Jobs")).to_be_visible()


class Tenant:
    """A tenant with a member key, and an httpx client of the live API with it."""

    def __init__(self, service: LiveService) -> None:
        self.id, self.key = make_tenant()
        self.service = service
        self.http = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def upload(self, rows: int = 16) -> dict[str, Any]:
        resp = self.http.post("/files", data={"purpose": "fine-tune"},
                              files={"file": ("train.jsonl", jsonl(chat_rows(rows)), "application/jsonl")})
        assert resp.status_code == 200 and resp.json()["status"] == "processed", resp.text
        result: dict[str, Any] = resp.json()
        return result

    def create_job(self, **overrides: Any) -> dict[str, Any]:
        resp = self.http.post("/jobs", json=spec(self.upload()["id"], **overrides))
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        return job

    def wait(self, job_id: str, statuses: set[str], timeout: float = 300) -> dict[str, Any]:
        return wait_for(self.http, job_id, statuses, self.service, timeout=timeout)


@pytest.fixture(scope="module")
def tenant_a(live_service: LiveService) -> Iterator[Tenant]:
    tenant = Tenant(live_service)
    yield tenant
    tenant.http.close()


@pytest.fixture(scope="module")
def trained_job(tenant_a: Tenant) -> dict[str, Any]:
    """A job of tenant A trained to the end (through the API, not the page), with evaluations and generated samples,
    and its model published."""
    # Evaluations on a validation split: a validation loss curve, and two generated samples at each of them.
    job = tenant_a.create_job(suffix="ui-trained", validation_split=0.25, hyperparameters={
        "n_epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 128, "eval_samples": 2})
    done = tenant_a.wait(job["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done
    return done
