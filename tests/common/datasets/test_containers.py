"""Containers and limits, on files generated into tmp_path: huge lines, gzip, JSON arrays, caps, overrides."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from common.datasets import reader
from common.datasets.upload_check import validate_file
from common.settings import get_settings

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
BAD_ROLE = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def codes(path: Path, **kwargs: object) -> list[tuple[str, int]]:
    return [(e.code, e.line) for e in validate_file(path, **kwargs).errors]  # type: ignore[arg-type]


def test_ten_megabyte_single_line_is_a_valid_row_when_the_limit_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "max_row_bytes", 16 * 1024 * 1024)
    path = tmp_path / "big_line.jsonl"
    big = {
        "messages": [
            {"role": "user", "content": "Summarise"},
            {"role": "assistant", "content": "x" * 10_000_000},
        ]
    }
    path.write_text(jsonl(CHAT, big, BAD_ROLE))
    assert path.stat().st_size > 10_000_000
    report = validate_file(path)
    assert report.row_count == 3
    assert [(e.code, e.line) for e in report.errors] == [("unrecognized_role", 3)]


def test_line_over_the_limit_is_skipped_and_counting_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "max_row_bytes", 1024)
    path = tmp_path / "long.jsonl"
    long_row = {"messages": [{"role": "user", "content": "y" * 5000}, {"role": "assistant", "content": "ok"}]}
    path.write_text(jsonl(CHAT, long_row, BAD_ROLE))
    assert codes(path) == [("row_too_large", 2), ("unrecognized_role", 3)]


def test_gzip_is_detected_by_magic_bytes_not_name(tmp_path: Path) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(gzip.compress(("\n" + jsonl(CHAT, BAD_ROLE)).encode()))
    report = validate_file(path)
    assert (report.format, report.row_count) == ("chat", 2)
    assert [(e.code, e.line) for e in report.errors] == [("unrecognized_role", 3)]
    assert "did you mean 'assistant'?" in report.errors[0].message


def test_truncated_gzip_is_reported_not_raised(tmp_path: Path) -> None:
    data = gzip.compress(jsonl(*[CHAT] * 2000).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    report = validate_file(path)
    assert report.errors[-1].code == "invalid_gzip"
    assert not report.ok


def test_zip_archive_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.jsonl", jsonl(CHAT))
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("unsupported_container", 0)]
    assert "JSON Lines" in report.errors[0].message


def test_json_array_with_bom_and_leading_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(b"\xef\xbb\xbf\n\n  " + json.dumps([CHAT, CHAT, BAD_ROLE]).encode())
    report = validate_file(path)
    assert (report.format, report.row_count) == ("chat", 3)
    assert [(e.code, e.line) for e in report.errors] == [("unrecognized_role", 3)]
    assert report.errors[0].message.startswith("row 3 (line 3): ")


def test_empty_json_array_is_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[ ]\n")
    assert codes(path) == [("empty_file", 0)]


def test_json_array_trailing_comma(tmp_path: Path) -> None:
    path = tmp_path / "comma.json"
    path.write_text("[\n" + json.dumps(CHAT) + ",\n" + json.dumps(CHAT) + ",\n]\n")
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("invalid_json", 2)]
    assert report.row_count == 2
    assert "trailing comma" in report.errors[0].message


def test_json_array_broken_row_stops_reading(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[\n" + json.dumps(CHAT) + ",\n" + '{"messages": [}' + ",\n" + json.dumps(CHAT) + "\n]")
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("invalid_json", 2)]
    assert "line 3, column" in report.errors[0].message


def test_json_array_with_data_after_it(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text(json.dumps([CHAT]) + "\n" + json.dumps([CHAT]) + "\n")
    assert codes(path) == [("invalid_json", 2)]


def test_json_array_invalid_utf8_names_the_physical_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n{"text": "ok"},\n{"text": "caf\xe9"}\n]')
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("invalid_utf8", 3)]
    assert "line 3" in report.errors[0].message


def test_json_array_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "MAX_JSON_ARRAY_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([CHAT] * 10))
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("file_too_large", 0)]
    assert "JSON Lines" in report.errors[0].message


def test_errors_are_capped_but_all_counted(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text(jsonl(*[BAD_ROLE] * 30))
    report = validate_file(path, max_errors=5)
    assert [e.line for e in report.errors] == [1, 2, 3, 4, 5]
    assert report.error_count == 30
    assert report.row_count == 30


def test_rows_before_detection_are_checked_against_the_detected_format(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_text("not json\n" + jsonl({"id": 1}, CHAT))
    report = validate_file(path)
    assert report.format == "chat"
    assert [(e.code, e.line) for e in report.errors] == [("invalid_json", 1), ("missing_messages", 2)]


def test_format_override(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(jsonl(CHAT, {"id": 2}))
    report = validate_file(path, format="alpaca")
    assert report.format == "alpaca"
    assert [(e.code, e.line) for e in report.errors][:1] == [("mixed_formats", 1)]
    assert "given as format=" in report.errors[0].message
    assert {e.field for e in report.errors[1:]} == {"instruction", "output"}


def test_unknown_format_name_is_a_programming_error(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(jsonl(CHAT))
    with pytest.raises(ValueError, match="chat, sharegpt"):
        validate_file(path, format="openai")


def test_report_to_dict(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(jsonl(CHAT, BAD_ROLE))
    data = validate_file(path).to_dict()
    assert data["ok"] is False and data["error_count"] == 1 and data["format"] == "chat"
    assert data["errors"][0]["field"] == "messages[1].role"
    json.dumps(data)  # storable as JSONB


def test_gzipped_json_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json.gz"
    path.write_bytes(gzip.compress(json.dumps([CHAT, BAD_ROLE], indent=1).encode()))
    report = validate_file(path)
    assert (report.format, report.row_count) == ("chat", 2)
    assert [(e.code, e.line) for e in report.errors] == [("unrecognized_role", 2)]


def test_undetectable_file_gets_one_unknown_format_error(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(jsonl(*[{"q": "Hi", "a": "Hello"}] * 150) + "oops\n" + jsonl(CHAT))
    report = validate_file(path)
    assert report.format is None
    assert [(e.code, e.line) for e in report.errors] == [("unknown_format", 1), ("invalid_json", 151)]
    assert report.row_count == 152
