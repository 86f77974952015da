"""What the fuzz of the upload validator (test_fuzz_validator.py) found, each pinned by the exact input it
produced: each used to raise out of `validate_file` instead of ending in a report."""

from __future__ import annotations

from pathlib import Path

from common.datasets.upload_check import validate_file


def upload(tmp_path: Path, name: str, content: bytes) -> list[tuple[str, int]]:
    path = tmp_path / name
    path.write_bytes(content)
    return [(e.code, e.line) for e in validate_file(path, name=name).errors]


def test_a_nameless_file_whose_first_line_holds_a_bare_carriage_return_is_read_as_json_lines(tmp_path: Path) -> None:
    # csv.Error "new-line character seen in unquoted field" escaped from the CSV header sniffing
    content = b"\x00\x8b\x08\x00_\x8b\rk\x02\xff\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    assert upload(tmp_path, "train.gz", content)[0] == ("invalid_utf8", 1)
