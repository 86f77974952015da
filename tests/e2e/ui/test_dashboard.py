"""The dashboard at /ui in headless Chromium against the live stack: sign-in, upload and the generated job form,
live charts, cancel, the playground, workers, tenant isolation, generated samples and a stream resumed after a drop.
Each page's screenshot is saved (docs/ui/*.png when TUNEQUEUE_UI_SCREENSHOTS=docs/ui)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from common.db import session_scope
from common.state import add_event
from tests.e2e.ui.conftest import PageErrors, Tenant, no_script_errors, sign_in, ui_url
from tests.support.factories import chat_rows, jsonl
from tests.support.servers import LiveService

pytestmark = pytest.mark.slow

# The API's refusals a test provokes on purpose show as failed loads in the console.
HTTP_401 = "401 (Unauthorized)"
HTTP_404 = "404 (Not Found)"


def chart_points(page: Page, name: str) -> int:
    return int(page.locator(f"canvas[data-chart={name}]").get_attribute("data-points") or 0)


def test_a_bad_key_shows_the_api_s_error_and_a_good_one_signs_in_for_the_tab(
        live_service: LiveService, tenant_a: Tenant, page: Page, page_errors: PageErrors, shots: Path) -> None:
    page.goto(live_service.url + "/ui")  # the bare path redirects to ui/, where the relative URLs resolve
    expect(page).to_have_url(ui_url(live_service.url))
    page.get_by_label("API key").fill("tq-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Incorrect API key provided")
    expect(page.get_by_role("alert")).to_contain_text("invalid_api_key")
    page.screenshot(path=str(shots / "sign-in.png"))

    page.get_by_label("API key").fill(tenant_a.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("h1", has_text="Jobs")).to_be_visible()
    expect(page.locator("#who")).to_contain_text(tenant_a.id)
    assert page.evaluate("Object.values(sessionStorage)") == [tenant_a.key]
    page.reload()  # the key is kept for the browser session
    expect(page.locator("h1", has_text="Jobs")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    no_script_errors(page_errors, allowed=(HTTP_401,))


def test_upload_shows_line_numbered_errors_or_trained_spans_and_the_schema_form_starts_a_job_whose_loss_chart_fills(
        live_service: LiveService, tenant_a: Tenant, page: Page, page_errors: PageErrors, shots: Path,
        tmp_path: Path) -> None:
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.get_by_role("link", name="New job").first.click()
    # The form is made from the spec's schema: nested objects, defaults and descriptions shown.
    expect(page.locator('[data-path="hyperparameters.learning_rate"]')).to_contain_text("default auto")
    expect(page.locator('[data-path="method.lora.r"]')).to_contain_text("LoRA rank")
    expect(page.locator('[data-path="stage"] select')).to_contain_text("default (sft)")

    bad = tmp_path / "bad.jsonl"
    rows = [json.dumps(r) for r in chat_rows(3)]
    rows[1] = '{"messages": [{"role": "user"}]}'
    bad.write_text("\n".join(rows) + "\n")
    page.locator("#upload-file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator(".upload-result[data-status=error]")).to_be_visible()
    expect(page.locator(".file-errors tr[data-line='2'] td.line").first).to_have_text("2")
    expect(page.locator(".file-errors tbody tr:not([data-line='2'])")).to_have_count(0)  # lines 1 and 3 are fine

    good = tmp_path / "train.jsonl"
    good.write_bytes(jsonl(chat_rows(16)))
    page.locator("#upload-file").set_input_files(str(good))
    page.get_by_role("button", name="Upload and check").click()
    expect(page.locator(".upload-result[data-status=processed]")).to_be_visible()
    trained = page.locator(".preview pre.tokens .trained").first
    expect(trained).to_contain_text("The answer is forty two.")
    expect(page.locator("#field-training_file")).to_have_value(re.compile(r"^file-"))

    page.locator("#field-base_model").fill("tiny-llama")
    page.locator("#field-suffix").fill("from-the-form")
    page.locator("#field-hyperparameters-n_epochs").fill("4")
    page.locator("#field-hyperparameters-batch_size").fill("4")
    page.locator("#field-hyperparameters-learning_rate").fill("0.01")
    page.locator("#field-hyperparameters-max_seq_length").fill("128")
    page.locator("details[data-path='method.lora'] > summary").click()  # optional: folded until opened
    page.locator("#field-method-lora-r").fill("8")
    page.locator("#field-method-lora-dropout").fill("0")
    page.evaluate("window.scrollTo(0, 0)")  # the upload's result and preview
    page.screenshot(path=str(shots / "new-job.png"))
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs")) as submitted:
        page.get_by_role("button", name="Start job").click()
    body = submitted.value.post_data_json
    assert isinstance(body, dict), body
    assert body["hyperparameters"] == {"n_epochs": 4, "batch_size": 4, "learning_rate": 0.01, "max_seq_length": 128}
    assert body["method"] == {"lora": {"r": 8, "dropout": 0}} and "seed" not in body  # only what was set is sent

    expect(page).to_have_url(re.compile(r"#/job/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]
    # The loss chart gets points while it trains (live progress and metrics events), and the job ends.
    expect(page.locator("canvas[data-chart=loss]")).not_to_have_attribute("data-points", "0", timeout=300_000)
    expect(page.locator(".job-header .status")).to_have_text("succeeded", timeout=300_000)
    assert chart_points(page, "loss") >= 4 and chart_points(page, "lr") >= 4
    expect(page.locator(".checkpoints a.chat-link").first).to_be_visible()
    assert page.locator(".event-log li[data-type=state]").count() >= 3
    assert tenant_a.http.get(f"/jobs/{job_id}").json()["suffix"] == "from-the-form"
    no_script_errors(page_errors)


def test_a_refused_spec_shows_the_api_s_error_beside_the_field_it_names(
        live_service: LiveService, tenant_a: Tenant, page: Page, page_errors: PageErrors) -> None:
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.goto(ui_url(live_service.url) + "#/new")
    page.locator("#field-base_model").fill("tiny-llama")
    page.locator("#field-training_file").fill("file-does-not-exist")
    page.get_by_role("button", name="Start job").click()
    error = page.locator(".field[data-path='training_file'] .field-error")
    expect(error).to_contain_text("file-does-not-exist")
    expect(page.locator("#job-form > .message")).to_contain_text("file_not_found · training_file")
    expect(page).to_have_url(re.compile(r"#/new$"))
    no_script_errors(page_errors, allowed=(HTTP_404,))


def test_the_workers_page_shows_what_a_device_runs_and_the_cancel_button_cancels_it(
        live_service: LiveService, tenant_a: Tenant, page: Page, page_errors: PageErrors) -> None:
    job = tenant_a.create_job(suffix="to-cancel", hyperparameters={"max_steps": 100_000, "batch_size": 4,
                                                                   "learning_rate": 1e-3, "max_seq_length": 64})
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.goto(ui_url(live_service.url) + f"#/job/{job['id']}")
    expect(page.locator(".job-header .status")).to_have_text("running", timeout=300_000)
    expect(page.locator("canvas[data-chart=loss]")).not_to_have_attribute("data-points", "0", timeout=120_000)
    page.get_by_role("link", name="Workers").click()
    busy = page.locator(".worker.busy")
    expect(busy.get_by_role("link", name=job["id"])).to_be_visible()
    busy.get_by_role("link", name=job["id"]).click()  # back to the job from the device that runs it
    expect(page.locator(".job-header .status")).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".job-header .status")).to_have_text("cancelled", timeout=120_000)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    assert tenant_a.http.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
    no_script_errors(page_errors)


def test_the_jobs_table_shows_a_new_job_without_a_reload_and_filters_by_status_and_user(
        live_service: LiveService, tenant_a: Tenant, trained_job: dict[str, Any], page: Page,
        page_errors: PageErrors, shots: Path) -> None:
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    done_row = page.locator(f"tr[data-job='{trained_job['id']}']")
    expect(done_row).to_contain_text("succeeded")
    expect(done_row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(done_row).to_contain_text("default")  # the user
    new = tenant_a.create_job(suffix="appears-live", hyperparameters={"max_steps": 2})  # made behind the page's back
    expect(page.locator(f"tr[data-job='{new['id']}']")).to_be_visible()
    page.screenshot(path=str(shots / "jobs.png"))

    page.get_by_label("status").select_option("succeeded")
    expect(page.locator(f"tr[data-job='{new['id']}']")).to_have_count(0)
    expect(done_row).to_be_visible()
    page.get_by_label("status").select_option("")
    page.get_by_label("user").fill("somebody-else")
    page.get_by_label("user").press("Enter")
    expect(page.locator("td.empty")).to_have_text("No jobs.")
    tenant_a.wait(new["id"], {"succeeded", "failed", "cancelled"})
    no_script_errors(page_errors)


def test_a_second_tenant_s_key_sees_none_of_the_first_tenant_s_jobs(
        live_service: LiveService, trained_job: dict[str, Any], page: Page, page_errors: PageErrors) -> None:
    other = Tenant(live_service)
    sign_in(page, ui_url(live_service.url), other.key)
    expect(page.locator("td.empty")).to_have_text("No jobs.")
    expect(page.locator(f"tr[data-job='{trained_job['id']}']")).to_have_count(0)
    page.goto(ui_url(live_service.url) + f"#/job/{trained_job['id']}")
    expect(page.get_by_role("alert").first).to_contain_text("job_not_found")
    page.goto(ui_url(live_service.url) + "#/models")
    expect(page.locator("tr[data-model='tiny-llama']")).to_be_visible()
    expect(page.locator(f"tr[data-model='{trained_job['fine_tuned_model']}']")).to_have_count(0)
    no_script_errors(page_errors, allowed=(HTTP_404,))


def test_the_playground_streams_a_base_model_and_an_adapter_side_by_side(
        live_service: LiveService, tenant_a: Tenant, trained_job: dict[str, Any], page: Page,
        page_errors: PageErrors, shots: Path) -> None:
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.get_by_role("link", name="Models").click()
    model = trained_job["fine_tuned_model"]
    row = page.locator(f"tr[data-model='{model}']")
    expect(row).to_contain_text(trained_job["id"])
    with page.expect_download() as download:
        row.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == model.replace(":", "_") + ".tar"
    page.screenshot(path=str(shots / "models.png"))

    row.get_by_role("link", name="Chat").click()
    expect(page.locator("#pg-adapter-0")).to_have_value(model)
    expect(page.locator("#pg-base")).to_have_value("tiny-llama")
    page.locator("#pg-prompt").fill("What is the answer?")
    page.locator("#pg-max-tokens").fill("12")
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/v1/chat/completions") else None)
    page.get_by_role("button", name="Send").click()
    for name in ("tiny-llama", model):
        column = page.locator(f".answer-column[data-model='{name}']")
        expect(column.locator(".answer-state")).to_have_attribute("data-done", "true", timeout=120_000)
        expect(column.locator(".answer-text")).not_to_be_empty()
    sent = sorted((r.post_data_json["model"], r.post_data_json["stream"]) for r in requests)
    assert sent == sorted([("tiny-llama", True), (model, True)])
    page.screenshot(path=str(shots / "playground.png"))

    # A checkpoint of the job answers too, from its "chat with this checkpoint" link.
    page.goto(ui_url(live_service.url) + f"#/job/{trained_job['id']}")
    page.locator(".checkpoints a.chat-link").first.click()
    expect(page.locator("#pg-adapter-0")).to_have_value(re.compile(r"^ftckpt-"))
    checkpoint = page.locator("#pg-adapter-0").input_value()
    page.locator("#pg-base").select_option("")
    page.locator("#pg-prompt").fill("What is the answer?")
    page.get_by_role("button", name="Send").click()
    column = page.locator(f".answer-column[data-model='{checkpoint}']")
    expect(column.locator(".answer-state")).to_have_attribute("data-done", "true", timeout=120_000)
    expect(page.locator(".answer-column")).to_have_count(1)
    no_script_errors(page_errors)


def test_deleting_a_model_on_the_models_page_removes_it_and_it_stops_answering(
        live_service: LiveService, tenant_a: Tenant, page: Page, page_errors: PageErrors) -> None:
    job = tenant_a.create_job(suffix="to-delete", hyperparameters={"max_steps": 2, "max_seq_length": 64})
    model = tenant_a.wait(job["id"], {"succeeded", "failed", "cancelled"})["fine_tuned_model"]
    assert model, job
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.get_by_role("link", name="Models").click()
    row = page.locator(f"tr[data-model='{model}']")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(page.locator("tr[data-model='tiny-llama']")).to_be_visible()
    assert tenant_a.http.get(f"/v1/models/{model}").status_code == 404
    no_script_errors(page_errors)


def test_the_workers_page_shows_each_device_its_memory_and_what_it_runs(
        live_service: LiveService, tenant_a: Tenant, page: Page, page_errors: PageErrors, shots: Path) -> None:
    workers = tenant_a.http.get("/workers").json()["data"]
    live = [w for w in workers if w.get("online")]
    assert live, workers
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.get_by_role("link", name="Workers").click()
    for worker in live:
        card = page.locator(f".worker[data-id='{worker['id']}']")
        expect(card).to_be_visible()
        expect(card.get_by_role("progressbar")).to_be_visible()
    page.screenshot(path=str(shots / "workers.png"))
    no_script_errors(page_errors)


def test_a_finished_job_shows_both_loss_curves_and_its_generated_samples_per_step_as_plain_text(
        live_service: LiveService, tenant_a: Tenant, trained_job: dict[str, Any], page: Page,
        page_errors: PageErrors, shots: Path) -> None:
    # What the worker recorded at each evaluation (hyperparameters.eval_samples: 2), and one more event of that type
    # written as the worker writes events, whose answer is markup: it must show as text.
    recorded = [e for e in tenant_a.http.get(f"/jobs/{trained_job['id']}/events", params={"limit": 100}).json()["data"]
                if e["type"] == "eval_samples"]
    assert recorded, "the job recorded no generated samples"
    hostile = '<img src=x onerror="document.body.dataset.pwned=1">'
    sample = {"prompt": "What is the answer?", "reference": "The answer is forty two.", "answer": f"forty {hostile}"}
    with session_scope() as session:
        add_event(session, trained_job["id"], "1 generated sample at step 1", type="eval_samples",
                  data={"step": 1, "samples": [sample]})
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.goto(ui_url(live_service.url) + f"#/job/{trained_job['id']}")
    expect(page.locator(".sample-step")).to_have_count(len(recorded) + 1)
    for event in recorded:
        group = page.locator(f".sample-step[data-step='{event['data']['step']}']")
        samples = event["data"]["samples"]
        expect(group.locator(".sample")).to_have_count(len(samples))
        for i, sample in enumerate(samples):
            expect(group.locator(".sample").nth(i).locator(".prompt pre")).to_have_text(sample["prompt"])
            expect(group.locator(".sample").nth(i).locator(".reference pre")).to_have_text(sample["reference"])
            expect(group.locator(".sample").nth(i).locator(".answer pre")).to_have_text(sample["answer"])
    newest = max(e["data"]["step"] for e in recorded)
    expect(page.locator(f".sample-step[data-step='{newest}']")).to_have_attribute("open", "")  # the latest, unfolded
    expect(page.locator(".sample-step[data-step='1'] .answer pre")).to_have_text(f"forty {hostile}")
    assert page.locator(".samples img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
    expect(page.locator(".job-header .status")).to_have_text("succeeded")
    # The job evaluated on its validation split: the loss chart has both curves.
    loss = page.locator("canvas[data-chart=loss]")
    expect(loss).to_have_attribute("data-series", re.compile(r"training loss=\d+;validation loss=[1-9]"))
    page.locator("h2", has_text="Charts").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "job.png"))
    page.evaluate("document.querySelector('.samples').previousElementSibling.scrollIntoView()")  # its heading
    page.screenshot(path=str(shots / "job-samples.png"))
    no_script_errors(page_errors)


def test_the_job_page_resumes_its_event_stream_after_a_drop_with_last_event_id_missing_and_repeating_nothing(
        live_service: LiveService, tenant_a: Tenant, trained_job: dict[str, Any], page: Page,
        page_errors: PageErrors) -> None:
    events: list[dict[str, Any]] = []
    after = None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page_of = tenant_a.http.get(f"/jobs/{trained_job['id']}/events", params=params).json()
        events += page_of["data"]
        if not page_of["has_more"]:
            break
        after = page_of["data"][-1]["id"]
    seqs = sorted(e["seq"] for e in events)
    assert len(seqs) > 4
    # The first stream carries only the first three events and then ends, as a dropped connection does.
    first_three = "retry: 200\n\n" + "".join(
        f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n" for e in sorted(events, key=lambda e: e["seq"])[:3])
    streams: list[dict[str, str]] = []

    def handle(route: Route) -> None:
        streams.append(route.request.headers)
        if len(streams) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=first_three)
        else:
            route.continue_()

    page.route(re.compile(r".*/events\?stream=true$"), handle)
    sign_in(page, ui_url(live_service.url), tenant_a.key)
    page.goto(ui_url(live_service.url) + f"#/job/{trained_job['id']}")
    expect(page.locator(".event-log li")).to_have_count(len(seqs), timeout=60_000)
    shown = sorted(int(s) for s in page.locator(".event-log li").evaluate_all("els => els.map(e => e.dataset.seq)"))
    assert shown == seqs
    assert "last-event-id" not in streams[0]
    assert streams[1]["last-event-id"] == str(seqs[2])
    no_script_errors(page_errors)


def test_the_chart_s_ticks_enclose_every_value_it_plots(live_service: LiveService, page: Page) -> None:
    page.goto(ui_url(live_service.url))
    for lo, hi in ((435.2, 472.9), (0.031, 7.2), (1e-5, 9.6e-5), (3.0, 3.0), (-2.5, 12.0)):
        ticks = page.evaluate("([lo, hi]) => import('./chart.js').then((m) => m.niceTicks(lo, hi, 4))", [lo, hi])
        assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) <= 8, (lo, hi, ticks)
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks), ticks


def test_assets_carry_a_self_only_content_security_policy_and_no_third_party_url(live_service: LiveService) -> None:
    index = httpx.get(ui_url(live_service.url), timeout=10)
    assert index.status_code == 200 and index.headers["Cache-Control"] == "no-cache"
    csp = index.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp and "http" not in csp
    assets = re.findall(r'(?:src|href)="([a-z]+\.(?:js|css))"', index.text)
    assert set(assets) == {"app.js", "style.css"}
    static = Path(__file__).resolve().parents[3] / "api" / "ui" / "static"
    for path in static.iterdir():
        if path.name != "index.html":  # served as ui/ itself
            resp = httpx.get(ui_url(live_service.url) + path.name, timeout=10)
            assert resp.status_code == 200 and resp.content == path.read_bytes(), path.name
            assert resp.headers["Content-Security-Policy"] == csp
        assert not re.search(rb"https?://", path.read_bytes()), f"{path.name} names a URL elsewhere"
        assert b"innerHTML" not in path.read_bytes(), f"{path.name} writes HTML"
    assert httpx.get(ui_url(live_service.url) + "..%2Fmain.py", timeout=10).status_code == 404
