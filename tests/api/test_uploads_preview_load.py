"""GET /files/{id}/preview tokenises in the API process, so it must not take the event loop with it: while three
previews of maximal rows (20 rows at TUNEQUEUE_MAX_ROW_BYTES) run, /healthz still answers at once. A real uvicorn,
so that requests really run side by side."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.routes.files import preview_file
from common.services.files import PREVIEW_MAX_ROWS
from common.settings import get_settings
from tests.support.factories import jsonl
from tests.support.http import auth
from tests.support.servers import uvicorn_in_thread

PREVIEWS = 3
HEALTHZ_BOUND = 0.5  # seconds; /healthz answers in about a millisecond when idle


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    from api.main import create_app

    with uvicorn_in_thread(create_app()) as url:
        yield url


def _maximal_rows() -> bytes:
    """PREVIEW_MAX_ROWS chat rows just under the row limit, of words a tokenizer has to work through."""
    limit = get_settings().max_row_bytes
    words = " ".join(f"word{i % 997}" for i in range(limit // 8))
    rows = [{"messages": [{"role": "user", "content": "Summarise this."},
                          {"role": "assistant", "content": words[: limit - 200]}]} for _ in range(PREVIEW_MAX_ROWS)]
    content = jsonl(rows)
    assert max(map(len, content.splitlines())) <= limit
    return content


def test_healthz_answers_at_once_while_three_maximal_previews_run(live_url: str, tenant: tuple[str, str],
                                                                 tiny_model: Path) -> None:
    assert not _is_coroutine(preview_file)  # the route is sync: FastAPI runs it in the thread pool
    with httpx.Client(base_url=live_url, timeout=120) as client:
        upload = client.post("/files", headers=auth(tenant[1]), data={"purpose": "fine-tune"},
                             files={"file": ("max.jsonl", _maximal_rows(), "application/jsonl")})
        assert upload.status_code == 200 and upload.json()["status"] == "processed", upload.text
        file_id = upload.json()["id"]

        answers: list[httpx.Response] = []

        def preview() -> None:
            with httpx.Client(base_url=live_url, timeout=120) as own:
                answers.append(own.get(f"/files/{file_id}/preview", headers=auth(tenant[1]),
                                       params={"limit": PREVIEW_MAX_ROWS}))

        threads = [threading.Thread(target=preview) for _ in range(PREVIEWS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        waits: list[float] = []
        while any(t.is_alive() for t in threads):
            began = time.monotonic()
            assert client.get("/healthz").status_code == 200
            if any(t.is_alive() for t in threads):  # a measurement taken while the previews still ran
                waits.append(time.monotonic() - began)
            time.sleep(0.05)
        took = time.monotonic() - started

    assert [a.status_code for a in answers] == [200] * PREVIEWS, [a.text[:300] for a in answers]
    assert all(len(a.json()["data"]) == PREVIEW_MAX_ROWS for a in answers)
    assert len(waits) >= 3, f"the previews took {took:.2f}s: too short to measure /healthz beside them"
    assert max(waits) < HEALTHZ_BOUND, f"/healthz took up to {max(waits):.3f}s beside {PREVIEWS} previews " \
                                       f"({took:.2f}s in all)"


def _is_coroutine(func: object) -> bool:
    import inspect

    return inspect.iscoroutinefunction(func)
