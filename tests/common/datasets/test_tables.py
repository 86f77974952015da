"""CSV, TSV, Parquet and plain-text containers: how each is recognised, its rows, and its exact errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.datasets.convert import iter_valid_rows
from common.datasets.upload_check import validate_file
from common.settings import get_settings

CORPUS = Path(__file__).parent / "corpus"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def errors(path: Path, **kwargs: object) -> list[tuple[str, int, str]]:
    return [(e.code, e.line, e.message) for e in validate_file(path, **kwargs).errors]  # type: ignore[arg-type]


# --- CSV / TSV -------------------------------------------------------------------------------------------------


def test_csv_rows_keep_quoted_line_breaks_and_doubled_quotes() -> None:
    rows = list(iter_valid_rows(CORPUS / "alpaca.csv", "alpaca"))
    assert rows == [
        {"instruction": "Translate to French", "input": "cat", "output": "chat", "system": ""},
        {
            "instruction": 'Write a haiku about "rain"',
            "input": "",
            "output": "Soft rain on the roof,\nthe gutters hum a low tune,\nthe street shines again",
            "system": "You are a poet.",
        },
    ]


def test_csv_line_is_where_the_row_starts(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'instruction,output\n"a\nb\nc",x\nq,\n')
    assert errors(path) == [("missing_content", 5, "line 5: output is empty; give it text")]


def test_csv_wrong_field_count_says_how_to_quote() -> None:
    code, line, message = errors(CORPUS / "alpaca_bad.csv")[0]
    assert (code, line) == ("invalid_csv", 3)
    assert message == (
        "line 3: the row has 2 fields but the header (line 1) has 3 columns; wrap a field that contains a comma, "
        'a quote or a line break in double quotes (and double the quotes inside it: "")'
    )


def test_csv_quote_never_closed() -> None:
    code, line, message = errors(CORPUS / "alpaca_bad.csv")[2]
    assert (code, line) == ("invalid_csv", 5)
    assert message.startswith("line 5: the quoted field starting on line 5 is never closed (the file ends inside it)")


def test_tsv_stray_quote_after_a_quoted_field(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", 'instruction\toutput\n"Hello," she said\tok\nfine\tyes\n')
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("invalid_csv", 2)]
    assert report.errors[0].message.startswith("line 2: not valid TSV: a tab expected after '\"'; a quoted field")
    assert report.row_count == 2  # the bad row counts; reading goes on


def test_csv_header_problems_stop_reading(tmp_path: Path) -> None:
    assert errors(CORPUS / "bad_header.csv") == [
        (
            "invalid_csv",
            1,
            "line 1 (the header): column 2 of the CSV header has no name; the first line must name every column, "
            "e.g. instruction,input,output or text",
        )
    ]
    dup = write(tmp_path, "dup.csv", "text,text\na,b\n")
    assert errors(dup) == [
        ("invalid_csv", 1, "line 1 (the header): the CSV header names the column 'text' twice; rename one")
    ]


def test_csv_only_a_header_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "\ufeffinstruction,output\r\n\r\n")
    assert errors(path) == [("empty_file", 0, "the file has no rows; after the header line, add at least one row")]


def test_csv_invalid_utf8_names_the_line_and_goes_on() -> None:
    report = validate_file(CORPUS / "latin1.csv")
    assert [(e.code, e.line) for e in report.errors] == [("invalid_utf8", 3)]
    assert "0xe9" in report.errors[0].message


def test_csv_kto_labels_and_alpaca_history_are_converted(tmp_path: Path) -> None:
    assert [r["label"] for r in iter_valid_rows(CORPUS / "kto.csv", "kto")] == [True, False]
    assert "label is 'maybe'" in errors(CORPUS / "kto.csv")[0][2]
    path = write(tmp_path, "h.csv", 'instruction,output,history\nq,a,"[[""x"", ""y""]]"\nq2,a2,\nq3,a3,nope\n')
    report = validate_file(path)
    assert [(e.code, e.line, e.field) for e in report.errors] == [("wrong_type", 4, "history")]
    rows = list(iter_valid_rows(path, "alpaca"))
    assert rows == [{"instruction": "q", "output": "a", "history": [["x", "y"]]}, {"instruction": "q2", "output": "a2"}]


def test_csv_preference_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "prompt,chosen,rejected\nCapital of France?,Paris.,Lyon.\n")
    report = validate_file(path)
    assert (report.container, report.format, report.stages) == ("csv", "preference", ["dpo", "orpo", "rm"])


def test_csv_line_over_the_limit_stops_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "max_row_bytes", 1024)
    path = write(tmp_path, "long.csv", "text\nshort\n" + "x" * 1500 + "\nafter\n")
    assert errors(path) == [
        (
            "row_too_large",
            3,
            "line 3: the row starting on line 3 is longer than 1 KiB, the largest row this server accepts "
            "(TUNEQUEUE_MAX_ROW_BYTES); split the example into shorter ones or shorten it; if a quote (\") is "
            "never closed, close it. The rest of the file is not read",
        )
    ]


def test_gzip_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv.gz", gzip.compress(b"text\nhello\nworld\n"))
    report = validate_file(path)
    assert (report.container, report.format, report.row_count, report.ok) == ("csv", "text", 2, True)


# --- which container ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "container", "fmt"),
    [
        ("upload", "text\nhello\n", "csv", "text"),  # no extension: a header naming a dataset column
        ("upload", "instruction\toutput\nq\ta\n", "tsv", "alpaca"),
        ("upload", '{"text": "hi"}\n', "jsonl", "text"),
        ("data.txt", '{"text": "hi"}\n', "jsonl", "text"),  # a first line that is a JSON object wins over the name
        ("data.csv", '{"text": "hi"}\n', "jsonl", "text"),
        ("notes.txt", "[1] Introduction\nMore text.\n", "text", "text"),  # "[" in a .txt is text
        ("data.json", '[{"text": "hi"}]', "json", "text"),
        ("data.jsonl", "text\nhello\n", "jsonl", None),  # the name says JSON: its errors say why it is not
    ],
)
def test_container_detection(tmp_path: Path, name: str, content: str, container: str, fmt: str | None) -> None:
    report = validate_file(write(tmp_path, name, content))
    assert (report.container, report.format) == (container, fmt)


def test_nameless_prose_is_read_as_json_lines_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "upload", "hello, this is prose\nmore\n")
    first, second = validate_file(path).errors
    assert (first.code, first.line, second.line) == ("invalid_json", 1, 2)
    assert first.message.endswith(
        "If this is CSV, TSV or plain text, give it a .csv, .tsv or .txt name (or a header row naming its columns)"
    )
    assert "If this is CSV" not in second.message


def test_validation_can_be_told_the_uploaded_name(tmp_path: Path) -> None:
    path = write(tmp_path, "file-123", "Just some text.\n")
    assert validate_file(path, name="corpus.txt").container == "text"
    assert validate_file(path).container == "jsonl"


# --- Parquet ------------------------------------------------------------------------------------------------


def test_parquet_rows_drop_null_struct_fields() -> None:
    rows = list(iter_valid_rows(CORPUS / "chat.parquet", "chat"))
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "weight": 1},
        ],
        "source": "a",
    }


def test_parquet_errors_name_the_row() -> None:
    report = validate_file(CORPUS / "chat_bad.parquet")
    assert report.errors[1].message == (
        "row 3: messages[1].role is 'gpt'; expected one of system, user, assistant, tool (did you mean 'assistant'?)"
    )


def test_parquet_is_recognised_by_its_magic_not_its_name(tmp_path: Path) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes((CORPUS / "alpaca.parquet").read_bytes())
    report = validate_file(path)
    assert (report.container, report.format, report.row_count, report.ok) == ("parquet", "alpaca", 2, True)


def test_parquet_in_many_batches(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    texts = [f"document {i}" for i in range(1300)]
    texts[1200] = ""
    pq.write_table(pa.table({"text": texts}), path, row_group_size=500)
    report = validate_file(path)
    assert report.row_count == 1300
    assert [(e.code, e.line, e.message) for e in report.errors] == [
        ("missing_content", 1201, "row 1201: text is empty; give it text")
    ]


@pytest.mark.parametrize(
    ("name", "content", "code", "says"),
    [
        ("data.parquet", b"text\nhello\n", "unsupported_container", "named .parquet but is not Parquet"),
        ("data.parquet.gz", None, "unsupported_container", "gzip-compressed Parquet"),
        ("cut.parquet", b"truncated", "invalid_parquet", "the Parquet file cannot be read"),
    ],
)
def test_parquet_problems(tmp_path: Path, name: str, content: bytes | None, code: str, says: str) -> None:
    whole = (CORPUS / "chat.parquet").read_bytes()
    if content is None:
        content = gzip.compress(whole)
    elif content == b"truncated":
        content = whole[:200]
    report = validate_file(write(tmp_path, name, content))
    assert [(e.code, e.line) for e in report.errors] == [(code, 0)]
    assert says in report.errors[0].message


# --- plain text ---------------------------------------------------------------------------------------------


def test_text_paragraphs_keep_their_line_breaks() -> None:
    rows = list(iter_valid_rows(CORPUS / "paragraphs.txt", "text"))
    assert rows == [{"text": "Chapter one.\nIt was a dark night."}, {"text": "Chapter two.\nThe sun rose."}]


def test_text_without_blank_lines_is_one_document_per_line() -> None:
    rows = list(iter_valid_rows(CORPUS / "lines.txt", "text"))
    assert rows == [{"text": "First sentence."}, {"text": "Second sentence."}, {"text": "Third."}]


def test_text_invalid_utf8_fails_its_paragraph_on_the_bad_line() -> None:
    report = validate_file(CORPUS / "bad_utf8.txt")
    assert report.errors[0].message.startswith("line 3: byte 0xff at position 5 of the line is not valid UTF-8")
    assert [r["text"] for r in iter_valid_rows(CORPUS / "bad_utf8.txt", "text")] == ["Good paragraph.", "Last one."]


def test_text_paragraph_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "max_row_bytes", 1024)
    line = "forty characters of text in one line...\n" * 10  # 400 bytes: the 25th line passes 1 KiB
    path = write(tmp_path, "long.txt", "ok\n\n" + line * 4 + "\nend\n")
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("row_too_large", 28)]
    assert report.errors[0].message == (
        "line 28: the paragraph starting on line 3 is longer than 1 KiB, the largest row this server accepts "
        "(TUNEQUEUE_MAX_ROW_BYTES); split the example into shorter ones or shorten it (separate documents with a "
        "blank line)"
    )
    assert report.row_count == 3


def test_text_empty_and_gzip(tmp_path: Path) -> None:
    assert errors(write(tmp_path, "e.txt", "\n \n")) == [("empty_file", 0, "the file has no rows; add some text")]
    report = validate_file(write(tmp_path, "t.txt.gz", gzip.compress(b"a\r\nb\r\n")))
    assert (report.container, report.row_count, report.ok) == ("text", 2, True)


def test_text_format_override_to_chat_is_mixed_formats(tmp_path: Path) -> None:
    report = validate_file(write(tmp_path, "t.txt", "hello\n"), format="chat")
    assert [(e.code, e.line) for e in report.errors] == [("mixed_formats", 1)]


def test_report_names_its_container() -> None:
    assert validate_file(CORPUS / "alpaca.tsv").to_dict()["container"] == "tsv"
    assert json.dumps(validate_file(CORPUS / "chat.parquet").to_dict())
