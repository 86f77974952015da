"""Every file in corpus/ with the exact errors (code, line, field) it must produce, or the format it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.datasets.upload_check import validate_file

CORPUS = Path(__file__).parent / "corpus"

GOOD = [
    # file, format, stages, rows
    ("chat_good.jsonl", "chat", ["sft"], 4),
    ("bom.jsonl", "chat", ["sft"], 2),
    ("crlf.jsonl", "chat", ["sft"], 3),
    ("chat_array.json", "chat", ["sft"], 2),
    ("sharegpt.jsonl", "sharegpt", ["sft"], 2),
    ("alpaca_history.jsonl", "alpaca", ["sft"], 2),
    ("preference_trl.jsonl", "preference", ["dpo", "orpo", "rm"], 2),
    ("preference_openai.jsonl", "preference", ["dpo", "orpo", "rm"], 1),
    ("kto.jsonl", "kto", ["kto"], 2),
    ("text.jsonl", "text", ["pt"], 2),
    # CSV / TSV / Parquet / plain text
    ("alpaca.csv", "alpaca", ["sft"], 2),  # a quoted multi-line output; a padding row of empty cells is blank
    ("alpaca.tsv", "alpaca", ["sft"], 2),  # CRLF
    ("text.csv", "text", ["pt"], 2),
    ("chat.parquet", "chat", ["sft"], 2),  # null struct fields (weight) count as absent
    ("alpaca.parquet", "alpaca", ["sft"], 2),
    ("preference.parquet", "preference", ["dpo", "orpo", "rm"], 1),
    ("paragraphs.txt", "text", ["pt"], 2),  # blank lines between paragraphs: one document each
    ("lines.txt", "text", ["pt"], 3),  # no blank line between two texts (trailing ones do not count): one per line
]

BAD = [
    # file, format, rows, [(code, line, field), ...] in file order
    ("blank_lines.jsonl", "chat", 2, [("unrecognized_role", 6, "messages[1].role")]),
    ("trailing_comma.jsonl", "chat", 3, [("invalid_json", 2, None)]),
    ("invalid_utf8.jsonl", "chat", 3, [("invalid_utf8", 3, None)]),
    (
        "wrong_types.jsonl",
        "chat",
        7,
        [
            ("wrong_type", 1, "messages"),
            ("wrong_type", 2, "messages[0].content"),
            ("wrong_type", 3, "messages[0].role"),
            ("invalid_weight", 4, "messages[1].weight"),
            ("wrong_type", 5, "messages[1].tool_calls[0].function.arguments"),
            ("wrong_type", 6, "messages[0].content[0].type"),
            ("not_an_object", 7, "messages[0]"),
        ],
    ),
    ("role_typo.jsonl", "chat", 2, [("unrecognized_role", 2, "messages[1].role")]),
    ("no_assistant.jsonl", "chat", 2, [("no_assistant_message", 2, "messages")]),
    (
        "empty_content.jsonl",
        "chat",
        4,
        [
            ("missing_content", 1, "messages[0].content"),
            ("missing_content", 2, "messages[1].content"),
            ("missing_content", 3, "messages[0].content"),
            ("missing_content", 4, "messages[1].content"),
        ],
    ),
    ("unknown_key.jsonl", "chat", 1, [("unknown_key", 1, "messages[0].metadata")]),
    ("mixed_formats.jsonl", "chat", 4, [("mixed_formats", 3, None), ("mixed_formats", 4, None)]),
    ("chat.jsonl.gz", "chat", 3, [("missing_content", 3, "messages[1].content")]),
    ("array_bad_row.json", "chat", 2, [("unrecognized_role", 2, "messages[0].role")]),
    ("empty.jsonl", None, 0, [("empty_file", 0, None)]),
    ("blank_only.jsonl", None, 0, [("empty_file", 0, None)]),
    (
        "not_objects.jsonl",
        "chat",
        4,
        [("not_an_object", 2, None), ("not_an_object", 3, None), ("not_an_object", 4, None)],
    ),
    ("unknown_format.jsonl", None, 2, [("unknown_format", 1, None)]),
    ("missing_messages.jsonl", "chat", 2, [("missing_messages", 1, "messages")]),
    ("python_dict.jsonl", "chat", 2, [("invalid_json", 2, None)]),
    ("nan.jsonl", "chat", 2, [("invalid_json", 2, None)]),
    ("utf16.jsonl", None, 0, [("invalid_utf8", 1, None)]),
    ("kto_bad_label.jsonl", "kto", 2, [("wrong_type", 2, "label")]),
    ("alpaca_bad_history.jsonl", "alpaca", 1, [("wrong_type", 1, "history[1]")]),
    ("preference_missing_rejected.jsonl", "preference", 2, [("missing_field", 2, "rejected")]),
    ("sharegpt_bad_role.jsonl", "sharegpt", 1, [("unrecognized_role", 1, "conversations[0].from")]),
    # CSV / TSV / Parquet / plain text: `line` is the physical line a CSV row starts on, a Parquet row's index + 1
    (
        "alpaca_bad.csv",
        "alpaca",
        4,
        [("invalid_csv", 3, None), ("missing_content", 4, "output"), ("invalid_csv", 5, None)],
    ),
    ("bad_header.csv", None, 0, [("invalid_csv", 1, None)]),
    ("kto.csv", "kto", 3, [("wrong_type", 4, "label")]),
    ("latin1.csv", "text", 2, [("invalid_utf8", 3, None)]),
    ("unknown_columns.csv", None, 1, [("unknown_format", 2, None)]),
    (
        "chat_bad.parquet",
        "chat",
        3,
        [("invalid_weight", 2, "messages[0].weight"), ("unrecognized_role", 3, "messages[1].role")],
    ),
    ("bad_utf8.txt", "text", 3, [("invalid_utf8", 3, None)]),
]


@pytest.mark.parametrize(("name", "fmt", "stages", "rows"), GOOD, ids=[g[0] for g in GOOD])
def test_good_files(name: str, fmt: str, stages: list[str], rows: int) -> None:
    report = validate_file(CORPUS / name)
    assert report.errors == []
    assert report.ok
    assert (report.format, report.stages, report.row_count) == (fmt, stages, rows)


@pytest.mark.parametrize(("name", "fmt", "rows", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_files(name: str, fmt: str | None, rows: int, expected: list[tuple[str, int, str | None]]) -> None:
    report = validate_file(CORPUS / name)
    assert [(e.code, e.line, e.field) for e in report.errors] == expected
    assert report.error_count == len(expected)
    assert not report.ok
    assert report.stages == []
    assert (report.format, report.row_count) == (fmt, rows)
    for error in report.errors:
        if error.line:  # a row error names its place in the file
            assert error.message.startswith((f"line {error.line}", f"row {error.line}")), error.message
        if error.field:
            assert error.field in error.message


def test_corpus_is_fully_covered() -> None:
    listed = {g[0] for g in GOOD} | {b[0] for b in BAD} | {"pretty_printed.jsonl"}
    present = {p.name for p in CORPUS.iterdir() if not p.name.startswith(".")}
    assert present == listed


def test_messages_tell_the_user_what_to_do() -> None:
    def message(name: str, index: int = 0) -> str:
        return validate_file(CORPUS / name).errors[index].message

    assert message("role_typo.jsonl") == (
        "line 2: messages[1].role is 'asistant'; expected one of system, user, assistant, tool "
        "(did you mean 'assistant'?)"
    )
    assert "did you mean 'assistant'?" in message("blank_lines.jsonl")  # 'Asistant': case and typo
    assert "did you mean 'user'?" in message("array_bad_row.json")
    assert message("array_bad_row.json").startswith("row 2 (line 14): ")
    assert "trailing comma" in message("trailing_comma.jsonl")
    assert "column 89" in message("trailing_comma.jsonl")
    assert "0xe9" in message("invalid_utf8.jsonl") and "UTF-8" in message("invalid_utf8.jsonl")
    assert "double quotes" in message("python_dict.jsonl")
    assert "NaN" in message("nan.jsonl")
    assert "did you mean 'messages'?" in message("missing_messages.jsonl")
    assert "'metadata'" in message("unknown_key.jsonl")
    mixed = message("mixed_formats.jsonl")
    assert "alpaca" in mixed and "detected from line 1" in mixed
    assert "true" in message("kto_bad_label.jsonl")
    assert "did you mean 'human'?" in message("sharegpt_bad_role.jsonl")
    assert "UTF-16" in message("utf16.jsonl")
    assert "'question', 'answer'" in message("unknown_format.jsonl")


def test_pretty_printed_json_lines_says_one_row_per_line() -> None:
    report = validate_file(CORPUS / "pretty_printed.jsonl")
    first = report.errors[0]
    assert (first.code, first.line) == ("invalid_json", 1)
    assert "single line" in first.message
    assert report.format is None and not report.ok


def test_unknown_key_that_is_a_typo_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "typo.jsonl"
    path.write_text('{"messages": [{"role": "user", "contents": "Hi"}, {"role": "assistant", "content": "ok"}]}\n')
    report = validate_file(path)
    assert [(e.code, e.field) for e in report.errors] == [("unknown_key", "messages[0].contents")]
    assert "did you mean 'content'?" in report.errors[0].message
