"""The validating_files step: token statistics computed independently with the tokenizer must match exactly;
a file that cannot feed the job fails it (with the code and param) before it is queued."""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from transformers import AutoTokenizer

from common.artifacts import get_store
from common.db import session_scope
from common.ids import new_id
from common.models import Job, JobEvent
from common.redis_client import get_redis
from common.schemas.job_spec import JobSpec, stored_spec
from common.services import files as file_service
from common.services import jobs as job_service
from common.settings import BaseModelEntry, get_settings
from common.text.named_templates import CHATML_TEMPLATE
from tests.support.factories import jsonl, spec
from worker.check_job_files import check_job_files

END = "<|im_end|>"
MAX = 64


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


def upload(tenant_id: str, name: str, content: bytes) -> str:
    with session_scope() as session:
        row = file_service.create_file(session, get_store(), get_settings(), tenant_id=tenant_id,
                                       src=io.BytesIO(content), filename=name, purpose="fine-tune")
        assert row.status == "processed", row.errors
        return row.id


def make_job(tenant_id: str, file_id: str, **overrides: Any) -> str:
    """A job made by the real service (POST /jobs's path), still validating_files."""
    body = spec(file_id, **overrides)
    body["hyperparameters"] = {**body["hyperparameters"], "max_seq_length": MAX, **overrides.get("hyperparameters", {})}
    with session_scope() as session:
        job, _ = job_service.create_job(session, get_settings(), tenant_id=tenant_id, spec=JobSpec.model_validate(body))
        return job.id


def unchecked_job(tenant_id: str, file_id: str, stage: str) -> str:
    """A job stored as create_job stores one, but without its check that the file feeds the stage (which the
    validating step repeats: a job must never reach a GPU with a file of the wrong shape)."""
    job_spec = JobSpec.model_validate({**spec(file_id, stage=stage), "hyperparameters": {"max_seq_length": MAX}})
    stored = stored_spec(job_spec, 4)
    with session_scope() as session:
        job = Job(id=new_id("ftjob"), tenant_id=tenant_id, base_model=job_spec.base_model, training_file_id=file_id,
                  spec=stored, status="validating_files", attempt=0)
        session.add(job)
        return job.id


def job_state(job_id: str) -> tuple[Job, list[JobEvent]]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        session.expunge_all()
        return job, events


def error_of(job_id: str) -> dict[str, Any]:
    job = job_state(job_id)[0]
    assert job.status == "failed" and job.error is not None, (job.status, job.error)
    return job.error


def enqueued(job_id: str) -> bool:
    queue = get_settings().celery_queue
    messages: list[bytes] = get_redis().lrange(queue, 0, -1)  # type: ignore[assignment]
    return any(job_id in m.decode(errors="replace") for m in messages)


def n_tokens(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def rendered(tok: Any, messages: list[dict[str, Any]], **kwargs: Any) -> int:
    return len(tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs))


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


ROWS = [
    [{"role": "system", "content": "You are terse."}, user("What is two plus two?"), assistant("Four.")],
    [user("Capital of France?"), assistant("Paris."), user("And of Spain?"), assistant("Madrid.")],
    [user("word " * 80), assistant("Ok.")],  # the answer lies past max_seq_length: dropped
    [user("Say nothing."), assistant("Fine.", weight=0)],  # no trained turn: dropped
    [user("Count."), assistant(" ".join(str(i) for i in range(60)))],  # cut inside the answer: truncated, kept
]


def test_token_statistics_are_exact(tenant: tuple[str, str], tok: Any) -> None:
    file_id = upload(tenant[0], "chat.jsonl", jsonl([{"messages": m} for m in ROWS]))
    job_id = make_job(tenant[0], file_id, validation_split=0.2)

    assert check_job_files(job_id) == "queued"

    lengths = [rendered(tok, m) for m in ROWS]
    assert lengths[2] > MAX and lengths[4] > MAX and max(lengths[:2] + lengths[3:4]) <= MAX
    prompt_of_last = rendered(tok, ROWS[4][:-1], add_generation_prompt=True)
    trained = (n_tokens(tok, "Four.") + 1) + (n_tokens(tok, "Paris.") + 1 + n_tokens(tok, "Madrid.") + 1) + (
        MAX - prompt_of_last
    )
    expected = {
        "id": file_id,
        "rows": 5,
        "rows_kept": 3,
        "total_tokens": sum(lengths),
        "trained_tokens": trained,
        "mean_length": round(sum(lengths) / 5, 1),
        "p95_length": max(lengths),  # nearest rank: ceil(0.95 * 5) = the 5th of 5
        "max_length": max(lengths),
        "max_seq_length": MAX,
        "rows_over_max_seq_length": 2,
        "over_max_seq_length": "truncated",
        "rows_without_trained_tokens": 2,
        "without_trained_tokens": "dropped",
    }
    job, events = job_state(job_id)
    assert job.status == "queued" and enqueued(job_id)
    stats = job.spec["token_stats"]
    assert stats["training_file"] == expected
    assert {k: stats[k] for k in ("base_model", "template", "stage", "train_on_inputs", "packing")} == {
        "base_model": "tiny-llama", "template": "chatml", "stage": "sft", "train_on_inputs": False,
        "packing": False,
    }
    assert stats["validation_split"] == {"fraction": 0.2, "eval_rows": math.ceil(3 * 0.2), "train_rows": 2}
    assert "validation_file" not in stats
    with_stats = [e for e in events if e.data and "token_stats" in e.data]
    assert len(with_stats) == 1 and with_stats[0].type == "message" and with_stats[0].data == {"token_stats": stats}
    assert f"5 rows, {sum(lengths):,} tokens, {trained:,} trained" in with_stats[0].message
    warnings = [e.message for e in events if e.level == "warning"]
    assert any("2 of 5 rows of the training file are longer than max_seq_length (64 tokens)" in w for w in warnings)
    assert any("2 of 5 rows of the training file have no trained token" in w for w in warnings)
    assert [e.data for e in events if e.type == "state"][-1] == {"status": "queued"}


def test_train_on_inputs_trains_every_kept_token(tenant: tuple[str, str], tok: Any) -> None:
    rows = ROWS[:2]
    job_id = make_job(tenant[0], upload(tenant[0], "chat.jsonl", jsonl([{"messages": m} for m in rows])),
                     train_on_inputs=True)
    assert check_job_files(job_id) == "queued"
    stats = job_state(job_id)[0].spec["token_stats"]["training_file"]
    assert stats["trained_tokens"] == stats["total_tokens"] == sum(rendered(tok, m) for m in rows)


def test_a_file_without_a_trained_token_fails_before_queueing(tenant: tuple[str, str]) -> None:
    file_id = upload(tenant[0], "chat.jsonl", jsonl([{"messages": ROWS[2]}, {"messages": ROWS[3]}]))
    job_id = make_job(tenant[0], file_id)
    assert check_job_files(job_id) == "failed"
    job, events = job_state(job_id)
    error = error_of(job_id)
    assert job.status == "failed" and not enqueued(job_id)
    assert (error["code"], error["param"]) == ("invalid_training_file", "training_file")
    assert "no row of training_file" in error["message"] and "max_seq_length" in error["message"]
    assert job.spec.get("token_stats") is None
    assert events[-1].data == {"status": "failed", "error": error}


def test_a_file_that_does_not_feed_the_stage_fails(tenant: tuple[str, str]) -> None:
    file_id = upload(tenant[0], "chat.jsonl", jsonl([{"messages": ROWS[0]}]))
    job_id = unchecked_job(tenant[0], file_id, "dpo")
    assert check_job_files(job_id) == "failed"
    error = error_of(job_id)
    assert error == {
        "code": "invalid_training_file",
        "param": "training_file",
        "message": f"training_file {file_id} is in chat format, which feeds sft; stage dpo needs a preference file "
        "(see docs/datasets.md)",
    }


def test_preference_pairs_count_both_sides(tenant: tuple[str, str], tok: Any) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
        {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("Go away.")]},
    ]
    job_id = make_job(tenant[0], upload(tenant[0], "pairs.jsonl", jsonl(rows)), stage="dpo")
    assert check_job_files(job_id) == "queued"
    sides = [
        ([user("Capital of France?")], "Paris."), ([user("Capital of France?")], "Lyon, I think."),
        ([user("Hi")], "Hello!"), ([user("Hi")], "Go away."),
    ]
    lengths = [rendered(tok, [*prompt, assistant(answer)]) for prompt, answer in sides]
    stats = job_state(job_id)[0].spec["token_stats"]["training_file"]
    assert stats["rows"] == 2 and stats["total_tokens"] == sum(lengths)
    assert stats["trained_tokens"] == sum(n_tokens(tok, answer) + 1 for _, answer in sides)
    assert stats["max_length"] == max(lengths)  # a row is as long as its longer side
    assert stats["mean_length"] == round((max(lengths[:2]) + max(lengths[2:])) / 2, 1)


def test_kto_counts_labels(tenant: tuple[str, str]) -> None:
    content = b"prompt,completion,label\nIs the sky blue?,Yes.,true\nIs it green?,Yes.,false\nWet rain?,Yes.,1\n"
    job_id = make_job(tenant[0], upload(tenant[0], "kto.csv", content), stage="kto")
    assert check_job_files(job_id) == "queued"
    stats = job_state(job_id)[0].spec["token_stats"]["training_file"]
    assert stats["labels"] == {"desirable": 2, "undesirable": 1} and stats["rows_kept"] == 3


def test_pretraining_text_file(tenant: tuple[str, str], tok: Any) -> None:
    docs = ["The first document\nhas two lines.", "The second one."]
    job_id = make_job(tenant[0], upload(tenant[0], "corpus.txt", "\n\n".join(docs).encode()), stage="pt")
    assert check_job_files(job_id) == "queued"
    stats = job_state(job_id)[0].spec["token_stats"]
    expected = sum(len(tok(d)["input_ids"]) + 1 for d in docs)  # + eos
    assert stats["training_file"]["total_tokens"] == stats["training_file"]["trained_tokens"] == expected
    assert stats["template"] is None


def test_validation_file_is_checked_too(tenant: tuple[str, str], tok: Any) -> None:
    train = upload(tenant[0], "train.jsonl", jsonl([{"messages": ROWS[0]}]))
    good = upload(tenant[0], "valid.csv", b"instruction,output\nSay hi,Hi!\n")
    job_id = make_job(tenant[0], train, validation_file=good)
    assert check_job_files(job_id) == "queued"
    stats = job_state(job_id)[0].spec["token_stats"]["validation_file"]
    assert (stats["id"], stats["rows"]) == (good, 1)
    assert stats["total_tokens"] == rendered(tok, [user("Say hi"), assistant("Hi!")])

    hopeless = upload(tenant[0], "valid.jsonl", jsonl([{"messages": ROWS[3]}]))
    job_id = make_job(tenant[0], train, validation_file=hopeless)
    assert check_job_files(job_id) == "failed"
    error = error_of(job_id)
    assert (error["code"], error["param"]) == ("invalid_validation_file", "validation_file")


def test_validation_split_that_leaves_nothing_to_train_fails(tenant: tuple[str, str]) -> None:
    job_id = make_job(tenant[0], upload(tenant[0], "one.jsonl", jsonl([{"messages": ROWS[0]}])), validation_split=0.1)
    assert check_job_files(job_id) == "failed"
    error = error_of(job_id)
    assert (error["code"], error["param"]) == ("invalid_training_file", "validation_split")


def test_a_job_stored_with_an_unknown_template_fails_with_its_param(tenant: tuple[str, str]) -> None:
    """POST /jobs refuses an unknown template now; a job stored before it did still fails here, not on a GPU."""
    job_id = make_job(tenant[0], upload(tenant[0], "c.jsonl", jsonl([{"messages": ROWS[0]}])))
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.spec = {**job.spec, "template": "vicuna"}
    assert check_job_files(job_id) == "failed"
    error = error_of(job_id)
    assert (error["code"], error["param"]) == ("invalid_template", "template")
    assert "chatml" in error["message"]


@pytest.fixture
def strict_model(tiny_model: Path, tmp_path: Path) -> Iterator[str]:
    """The tiny model with a chat template that refuses tool turns, registered as 'strict-llama'."""
    folder = tmp_path / "strict-llama"
    shutil.copytree(tiny_model, folder)
    refuse = ("{%- for message in messages -%}{%- if message['role'] == 'tool' -%}"
              "{{- raise_exception('this model has no tool role') -}}{%- endif -%}{%- endfor -%}")
    (folder / "chat_template.jinja").write_text(refuse + CHATML_TEMPLATE)
    settings = get_settings()
    settings.base_models["strict-llama"] = BaseModelEntry(path=str(folder))
    try:
        yield "strict-llama"
    finally:
        del settings.base_models["strict-llama"]


def test_a_row_the_template_refuses_fails_with_its_line(tenant: tuple[str, str], strict_model: str) -> None:
    tool_row = [user("Weather?"), {"role": "tool", "content": "3 C", "tool_call_id": "c1"}, assistant("3 C.")]
    content = jsonl([{"messages": ROWS[0]}]) + b"\n" + jsonl([{"messages": tool_row}])
    job_id = make_job(tenant[0], upload(tenant[0], "c.jsonl", content), base_model=strict_model)
    assert check_job_files(job_id) == "failed"
    error = error_of(job_id)
    assert (error["code"], error["param"]) == ("invalid_training_file", "training_file")
    assert error["message"].startswith("line 3 of training_file")
    assert "this model has no tool role" in error["message"]


def test_a_base_model_that_cannot_be_used_fails(tenant: tuple[str, str], strict_model: str) -> None:
    file_id = upload(tenant[0], "c.jsonl", jsonl([{"messages": ROWS[0]}]))
    settings = get_settings()
    gone, missing = make_job(tenant[0], file_id, base_model=strict_model), make_job(tenant[0], file_id,
                                                                                   base_model=strict_model)
    del settings.base_models[strict_model]
    assert check_job_files(gone) == "failed"
    error = error_of(gone)
    assert (error["code"], error["param"]) == ("base_model_unavailable", "base_model")
    assert "no longer registered" in error["message"]
    settings.base_models[strict_model] = BaseModelEntry(path="/nonexistent/strict-llama")
    assert check_job_files(missing) == "failed"
    error = error_of(missing)
    assert (error["code"], error["param"]) == ("base_model_unavailable", "base_model")
    assert "/nonexistent/strict-llama" in error["message"]


def test_a_job_no_longer_validating_is_left_alone(tenant: tuple[str, str]) -> None:
    file_id = upload(tenant[0], "c.jsonl", jsonl([{"messages": ROWS[0]}]))
    job_id = make_job(tenant[0], file_id)
    with session_scope() as session:
        job_service.cancel_job(session, tenant[0], job_id)
    assert check_job_files(job_id) == "cancelled"
    job, _ = job_state(job_id)
    assert job.status == "cancelled" and "token_stats" not in job.spec and not enqueued(job_id)

    job_id = make_job(tenant[0], file_id)
    assert check_job_files(job_id) == "queued"
    count = len(job_state(job_id)[1])
    assert check_job_files(job_id) == "queued" and len(job_state(job_id)[1]) == count
    assert check_job_files("ftjob-missing") == "missing"
    json.dumps(job_state(job_id)[0].spec)  # stored as JSONB
