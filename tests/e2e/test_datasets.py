"""Each container and format feeds a real (tiny) training run of a stage it claims, over real HTTP against
uvicorn + the Celery worker: upload → validating_files (token statistics recorded) → queued → trained.
And a file with nothing to train on fails at validating_files, before any worker claims it."""

from __future__ import annotations

import gzip
import io
import json
import time
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.factories import make_tenant
from tests.support.servers import LiveService, wait_for

pytestmark = pytest.mark.slow

N = 8
REPLY = "All systems nominal."


def _questions() -> list[str]:
    return [f"Status check number {i}, how is everything?" for i in range(N)]


def alpaca_csv() -> bytes:
    lines = ["instruction,input,output"] + [f'"{q}",,{REPLY}' for q in _questions()]
    return ("\r\n".join(lines) + "\r\n").encode()


def chat_parquet() -> bytes:
    table = pa.table({"messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": REPLY}]
                                   for q in _questions()]})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def sharegpt_gz() -> bytes:
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": REPLY}], "system": "Be terse."}
            for q in _questions()]
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def pairs_tsv() -> bytes:
    lines = ["prompt\tchosen\trejected"] + [f"{q}\t{REPLY}\tEverything is on fire." for q in _questions()]
    return ("\n".join(lines) + "\n").encode()


def openai_dpo_json() -> bytes:
    rows = [{"input": {"messages": [{"role": "user", "content": q}]},
             "preferred_output": [{"role": "assistant", "content": REPLY}],
             "non_preferred_output": [{"role": "assistant", "content": "No idea."}]} for q in _questions()]
    return json.dumps(rows, indent=1).encode()


def kto_csv() -> bytes:
    lines = ["prompt,completion,label"]
    for i, q in enumerate(_questions()):
        lines.append(f'"{q}",{REPLY if i % 2 == 0 else "Everything is on fire."},{"true" if i % 2 == 0 else "false"}')
    return ("\n".join(lines) + "\n").encode()


def corpus_txt() -> bytes:
    return "\n\n".join(f"Report {i}.\n{REPLY}" for i in range(N)).encode()


CASES = [
    # filename, content, format, stage
    ("train.csv", alpaca_csv, "alpaca", "sft"),
    ("train.parquet", chat_parquet, "chat", "sft"),
    ("train.jsonl.gz", sharegpt_gz, "sharegpt", "sft"),
    ("pairs.tsv", pairs_tsv, "preference", "dpo"),
    ("pairs.json", openai_dpo_json, "preference", "orpo"),
    ("pairs-rm.tsv", pairs_tsv, "preference", "rm"),
    ("kto.csv", kto_csv, "kto", "kto"),
    ("corpus.txt", corpus_txt, "text", "pt"),
]


def committed(client: httpx.Client, file_id: str, timeout: float = 10) -> None:
    """Wait until the upload's row is visible. The API's session dependency commits after the response has been
    sent (FastAPI runs `yield` teardown after the response unless Depends(..., scope="function")), so a client
    that is quick enough can 404 on the file it was just given."""
    deadline = time.monotonic() + timeout
    while client.get(f"/files/{file_id}").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)


def job_body(file_id: str, stage: str, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "base_model": "tiny-llama", "training_file": file_id, "stage": stage,
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}},
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "max_seq_length": 128,
                            **hyperparameters},
        "suffix": f"ds-{stage}",
    }


@pytest.fixture(scope="module")
def client(live_service: LiveService) -> httpx.Client:
    _, key = make_tenant()
    return httpx.Client(base_url=live_service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.parametrize(("filename", "make", "fmt", "stage"), CASES, ids=[f"{c[3]}-{c[0]}" for c in CASES])
def test_each_format_trains_its_stage(live_service: LiveService, client: httpx.Client, filename: str, make: Any,
                                      fmt: str, stage: str) -> None:
    upload = client.post("/files", files={"file": (filename, io.BytesIO(make()))}, data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    file = upload.json()
    assert (file["status"], file["format"], file["row_count"]) == ("processed", fmt, N), file
    assert stage in file["stages"]
    committed(client, file["id"])
    preview = client.get(f"/files/{file['id']}/preview", params={"stage": stage, "limit": 2})
    assert preview.status_code == 200, preview.text
    assert any(s["trained"] for s in preview.json()["data"][0]["sequences"][0]["segments"])

    created = client.post("/jobs", json=job_body(file["id"], stage))
    assert created.status_code == 200, created.text
    done = wait_for(client, created.json()["id"], {"succeeded", "failed", "cancelled"}, live_service)
    assert done["status"] == "succeeded", f"{done}\n{live_service.logs()}"
    assert done["fine_tuned_model"].startswith(f"ft:tiny-llama:ds-{stage}:")

    events = client.get(f"/jobs/{done['id']}/events?limit=100").json()["data"]
    stats = next(e["data"]["token_stats"] for e in events if (e["data"] or {}).get("token_stats"))
    assert stats["stage"] == stage and stats["training_file"]["rows"] == N
    assert 0 < stats["training_file"]["trained_tokens"] <= stats["training_file"]["total_tokens"]
    statuses = [e["data"]["status"] for e in reversed(events) if e["type"] == "state"]
    assert statuses[:2] == ["queued", "running"], statuses


def test_nothing_to_train_fails_while_validating(live_service: LiveService, client: httpx.Client) -> None:
    long_prompt = "word " * 200
    rows = [{"messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": REPLY}]}] * 2
    file = client.post("/files", files={"file": ("long.jsonl", io.BytesIO(
        "".join(json.dumps(r) + "\n" for r in rows).encode()))}, data={"purpose": "fine-tune"}).json()
    assert file["status"] == "processed"
    committed(client, file["id"])
    job = client.post("/jobs", json=job_body(file["id"], "sft", max_seq_length=32)).json()
    done = wait_for(client, job["id"], {"failed", "succeeded", "running"}, live_service, timeout=120)
    assert done["status"] == "failed", done
    assert (done["error"]["code"], done["error"]["param"]) == ("invalid_training_file", "training_file")
    assert done["started_at"] is None and done["attempt"] == 0  # never claimed by a GPU worker
