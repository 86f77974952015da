"""One huge row must not cost the service hundreds of bytes of memory per byte (issue 13): rows over
TUNEQUEUE_MAX_ROW_BYTES are refused with their line in every container, a row just under it validates, and a
long row's texts are cut to what max_seq_length can use before they are tokenised (counted in tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.datasets.convert import iter_stage_rows
from common.datasets.tokens import MEASURED_TOKENS, TOKEN_MARGIN, Encoder, TokenStats, load_tokenizer
from common.datasets.upload_check import validate_file
from common.settings import BaseModelEntry, get_settings
from common.text.chat import tokenize_chat
from common.text.named_templates import CHATML_TEMPLATE

MIB = 1024 * 1024
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def chat_line(total_bytes: int) -> str:
    """A chat row whose JSON line (without its newline) is exactly `total_bytes` long."""
    empty = json.dumps({"messages": [{"role": "user", "content": "Summarise"}, {"role": "assistant", "content": ""}]})
    return empty[:-4] + "x" * (total_bytes - len(empty)) + empty[-4:]


def errors(path: Path) -> list[tuple[str, int]]:
    return [(e.code, e.line) for e in validate_file(path).errors]


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(get_settings(), "max_row_bytes", 2048)
    return 2048


def test_the_default_row_limit_is_one_mebibyte() -> None:
    assert get_settings().max_row_bytes == MIB


def test_a_row_over_the_limit_is_refused_with_its_line_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join([json.dumps(CHAT), chat_line(MIB + 1), json.dumps(CHAT)]) + "\n")
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("row_too_large", 2)]
    message = report.errors[0].message
    assert message.startswith("line 2: the line is longer than 1 MiB")
    assert "TUNEQUEUE_MAX_ROW_BYTES" in message and "split the example" in message
    assert report.row_count == 3 and not report.ok


def test_a_row_just_under_the_limit_validates(tmp_path: Path) -> None:
    path = tmp_path / "max.jsonl"
    line = chat_line(MIB)
    assert len(line.encode()) == MIB
    path.write_text(json.dumps(CHAT) + "\n" + line + "\r\n")
    report = validate_file(path)
    assert report.ok, report.errors
    assert report.row_count == 2


def test_the_limit_counts_bytes_not_characters(tmp_path: Path, small_limit: int) -> None:
    path = tmp_path / "wide.jsonl"
    row = {"messages": [{"role": "user", "content": "é" * 1000}, {"role": "assistant", "content": "ok"}]}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")  # 1,000 characters, 2,000+ bytes
    assert errors(path) == [("row_too_large", 1)]


def test_a_json_array_element_over_the_limit_is_refused_and_the_rest_is_read(tmp_path: Path, small_limit: int) -> None:
    big = {"messages": [{"role": "user", "content": "y" * 3000}, {"role": "assistant", "content": "ok"}]}
    bad = {"messages": [{"role": "bot", "content": "Hi"}]}
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([CHAT, big, bad], indent=1))
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("row_too_large", 2), ("unrecognized_role", 3)]
    assert report.errors[0].message.startswith("row 2 (line ")
    assert "TUNEQUEUE_MAX_ROW_BYTES" in report.errors[0].message


def test_a_csv_record_over_the_limit_across_lines_is_refused(tmp_path: Path, small_limit: int) -> None:
    cell = "\n".join(["a line of a long quoted cell"] * 100)  # no line is long, the record is
    path = tmp_path / "rows.csv"
    path.write_text(f'instruction,output\nq,a\nq,"{cell}"\nq,a\n')
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("row_too_large", 3)]
    assert "TUNEQUEUE_MAX_ROW_BYTES" in report.errors[0].message


def test_a_text_document_over_the_limit_is_refused(tmp_path: Path, small_limit: int) -> None:
    path = tmp_path / "doc.txt"
    path.write_text("short\n" + "z" * 3000 + "\nshort again\n")
    assert errors(path) == [("row_too_large", 2)]


def test_a_parquet_row_over_the_limit_is_refused(tmp_path: Path, small_limit: int) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["fine", "w" * 3000, "fine too"]}), path)
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("row_too_large", 2)]
    assert report.errors[0].message.startswith("row 2: the row (as JSON) is longer than 2 KiB")


# --- tokenisation is bounded by max_seq_length, not by the row --------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return load_tokenizer("tiny-llama", BaseModelEntry(path=str(tiny_model), template="chatml"))


def encoder(tokenizer: Any, stage: str = "sft", budget: int | None = 64) -> Encoder:
    """An encoder measuring `budget` tokens (None: what a job with max_seq_length 64 gets)."""
    enc = Encoder.for_model(tokenizer, model_id="tiny-llama", stage=stage, registry_template="chatml",
                            max_seq_length=64)
    if budget is not None:
        enc.max_tokens = budget
    return enc


def words(n_chars: int) -> str:
    return ("the worker trains a small model on every step today " * (n_chars // 50 + 1))[:n_chars]


def trained(labels: list[int]) -> int:
    return sum(1 for x in labels if x != -100)


def test_a_maximal_row_is_tokenised_only_as_far_as_the_measured_tokens(tokenizer: Any) -> None:
    enc = encoder(tokenizer, budget=None)
    assert enc.max_tokens == MEASURED_TOKENS == 8192
    content = words(MIB)
    (seq,) = enc.encode({"messages": [{"role": "user", "content": "Summarise."},
                                      {"role": "assistant", "content": content}]})
    assert len(content) / len(seq.input_ids) > 50  # about 200,000 tokens for the whole row
    assert MEASURED_TOKENS < len(seq.input_ids) <= 2 * (MEASURED_TOKENS + TOKEN_MARGIN) + 40


def test_what_max_seq_length_keeps_is_the_same_as_for_the_whole_row(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Summarise this."}, {"role": "assistant", "content": words(200_000)}]
    (seq,) = encoder(tokenizer).encode({"messages": messages})
    full_ids, full_labels = tokenize_chat(tokenizer, messages, CHATML_TEMPLATE)
    assert len(full_ids) > 30_000
    assert 64 < len(seq.input_ids) <= 2 * (64 + TOKEN_MARGIN) + 40
    assert seq.input_ids[:64] == full_ids[:64] and seq.labels[:64] == full_labels[:64]
    stats = TokenStats(64)
    stats.add([seq])
    assert stats.rows_over_max == 1 and stats.trained_tokens == trained(full_labels[:64])


def test_texts_after_the_budget_are_cut_to_a_stub(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": words(5_000)}, {"role": "assistant", "content": words(500_000)},
                {"role": "user", "content": words(500_000)}, {"role": "assistant", "content": words(500_000)}]
    (seq,) = encoder(tokenizer).encode({"messages": messages})
    assert len(seq.input_ids) <= 2 * (64 + TOKEN_MARGIN) + 40
    cut = encoder(tokenizer).bounded([m["content"] for m in messages])
    assert [len(t) for t in cut[1:]] == [16, 16, 16]


def test_characters_passed_to_the_tokenizer_are_bounded(tokenizer: Any) -> None:
    seen: list[int] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(tokenizer, name)

        def __call__(self, text: str, **kwargs: Any) -> Any:
            seen.append(len(text))
            return tokenizer(text, **kwargs)

    enc = encoder(tokenizer, stage="pt")
    enc.tokenizer = Counting()
    (seq,) = enc.encode({"text": words(1_000_000)})
    assert 64 < len(seq.input_ids) <= 2 * (64 + TOKEN_MARGIN) + 40
    assert max(seen) <= 8 * (64 + TOKEN_MARGIN)  # characters, against the row's 1,000,000


def test_pairs_are_bounded_on_both_sides(tokenizer: Any) -> None:
    row = {"prompt": [{"role": "user", "content": "Which?"}],
           "chosen": [{"role": "assistant", "content": words(300_000)}],
           "rejected": [{"role": "assistant", "content": "Short."}]}
    chosen, rejected = encoder(tokenizer, stage="dpo").encode(row)
    assert 64 < len(chosen.input_ids) <= 2 * (64 + TOKEN_MARGIN) + 40
    assert chosen.trained(64) > 0 and rejected.trained() == len(tokenizer("Short.<|im_end|>")["input_ids"])


def test_rows_within_the_measured_tokens_are_untouched(tokenizer: Any) -> None:
    messages = [{"role": "user", "content": words(3000)}, {"role": "assistant", "content": words(3000)}]
    (seq,) = encoder(tokenizer, budget=None).encode({"messages": messages})
    assert (seq.input_ids, seq.labels) == tuple(tokenize_chat(tokenizer, messages, CHATML_TEMPLATE))


def test_a_job_longer_than_the_measured_tokens_measures_its_max_seq_length(tokenizer: Any) -> None:
    enc = Encoder.for_model(tokenizer, model_id="tiny-llama", stage="sft", registry_template="chatml",
                            max_seq_length=20_000)
    assert enc.max_tokens == 20_000


def test_stage_rows_of_a_maximal_row_are_read(tmp_path: Path) -> None:
    path = tmp_path / "max.jsonl"
    path.write_text(chat_line(MIB) + "\n")
    (row,) = iter_stage_rows(path, "chat", "sft")
    assert len(row["messages"][1]["content"]) > MIB - 100
