"""What a compressed upload may expand to (common/datasets/records.py `expansion_budget`): a gzip or a Parquet file
that expands past it is a `file_too_large` error, found without expanding the rest of it; files that compress as
datasets do are read as before."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.datasets import reader, records
from common.datasets.upload_check import validate_file

MIB = 1024 * 1024
ROW = {"messages": [{"role": "user", "content": "What is the answer?"},
                    {"role": "assistant", "content": "The answer is forty two."}]}


def _gzip_of(path: Path, pieces: Iterator[bytes]) -> Path:
    with gzip.open(path, "wb", compresslevel=9) as out:
        for piece in pieces:
            out.write(piece)
    return path


def _array_bomb(total: int) -> Iterator[bytes]:
    """A JSON array of identical chat rows, about `total` bytes."""
    row = json.dumps(ROW).encode()
    block = b",".join([row] * (MIB // (len(row) + 1)))
    yield b"[" + row
    written = len(row)
    while written < total:
        yield b"," + block
        written += len(block) + 1
    yield b"]"


@pytest.fixture
def small_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ratio bound from 1 MiB on instead of 16, so that a bomb of rows is found after fewer rows are checked."""
    monkeypatch.setattr(records, "RATIO_FREE_BYTES", MIB)


def _codes(path: Path, name: str | None = None) -> list[str]:
    return [e.code for e in validate_file(path, name=name).errors]


def test_gzip_bomb_of_a_json_array_is_file_too_large_without_expanding_it(tmp_path: Path) -> None:
    path = _gzip_of(tmp_path / "bomb.json.gz", _array_bomb(64 * MIB))  # under MAX_JSON_ARRAY_BYTES, ~1000:1
    assert path.stat().st_size * records.MAX_COMPRESSION_RATIO < 64 * MIB
    tracemalloc.start()
    try:
        report = validate_file(path, name="bomb.json.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(e.code, e.line) for e in report.errors] == [("file_too_large", 0)]
    message = report.errors[0].message
    assert "gzip" in message and "upload it uncompressed, or split it" in message
    assert peak < 3 * records.RATIO_FREE_BYTES, f"validating the bomb allocated {peak} bytes"


def test_gzip_bomb_of_json_lines_is_refused_after_the_rows_it_read(tmp_path: Path, small_floor: None) -> None:
    row = (json.dumps(ROW) + "\n").encode()
    path = _gzip_of(tmp_path / "bomb.jsonl.gz", (row * (MIB // len(row)) for _ in range(16)))
    report = validate_file(path)
    assert [e.code for e in report.errors] == ["file_too_large"]
    assert 0 < report.row_count * len(row) <= records.expansion_budget(path.stat().st_size) + len(row)
    assert "the rest were not read" in report.errors[0].message


def test_gzip_of_blank_lines_is_refused_before_a_first_line_is_found(tmp_path: Path) -> None:
    path = _gzip_of(tmp_path / "blank.jsonl.gz", (b"\n" * MIB for _ in range(64)))
    assert _codes(path) == ["file_too_large"]


def test_gzip_of_csv_and_text_are_bounded_too(tmp_path: Path, small_floor: None) -> None:
    line = b"hello world and a few more words of text to make the row longer\n"
    csv = _gzip_of(tmp_path / "bomb.csv.gz", iter([b"text\n", *(line * (MIB // len(line)) for _ in range(16))]))
    assert _codes(csv, "bomb.csv.gz")[-1] == "file_too_large"
    text = _gzip_of(tmp_path / "bomb.txt.gz", (line * (MIB // len(line)) for _ in range(16)))
    assert _codes(text, "bomb.txt.gz") == ["file_too_large"]


def test_ordinary_gzip_file_is_read_whole(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i * 7919 % 1000}."}]} for i in range(20_000)]
    path = _gzip_of(tmp_path / "train.jsonl.gz", iter(["".join(json.dumps(r) + "\n" for r in rows).encode()]))
    report = validate_file(path)
    assert (report.ok, report.format, report.row_count) == (True, "chat", 20_000)


def test_json_array_limit_counts_decompressed_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "MAX_JSON_ARRAY_BYTES", MIB)
    path = _gzip_of(tmp_path / "rows.json.gz", _array_bomb(2 * MIB))
    assert path.stat().st_size < MIB
    report = validate_file(path)
    assert [e.code for e in report.errors] == ["file_too_large"]
    assert "a JSON array is read whole and may be at most 1 MiB" in report.errors[0].message


def test_parquet_whose_pages_expand_past_the_bound_is_refused_before_a_row_is_read(tmp_path: Path) -> None:
    # 200 rows of 100 KB each (under the row limit), zstd-compressed to a few KB: the footer says 20 MB.
    table = pa.table({"text": ["a" * 100_000] * 200})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    assert path.stat().st_size * records.MAX_COMPRESSION_RATIO < 20 * MIB
    report = validate_file(path)
    assert [(e.code, e.line) for e in report.errors] == [("file_too_large", 0)]
    assert "the Parquet file expands to more than" in report.errors[0].message


def test_parquet_dictionary_that_expands_while_read_is_refused(tmp_path: Path) -> None:
    # One distinct 200 KB value in 400 rows: the footer counts it once, Arrow hands out 400 copies (80 MB).
    table = pa.table({"text": ["b" * 200_000] * 400})
    path = tmp_path / "dictionary.parquet"
    pq.write_table(table, path, compression="zstd", use_dictionary=True)
    declared = pq.ParquetFile(path).metadata.row_group(0).total_byte_size
    assert declared < records.expansion_budget(path.stat().st_size)  # the footer alone lets it through
    report = validate_file(path)
    assert [e.code for e in report.errors] == ["file_too_large"]
    assert 0 < report.errors[0].line <= 400 and "the rest were not read" in report.errors[0].message


def test_ordinary_parquet_file_is_read_whole(tmp_path: Path) -> None:
    texts = [f"document {i}: " + " ".join(str(i * j) for j in range(50)) for i in range(3000)]
    path = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": texts}), path)
    report = validate_file(path)
    assert (report.ok, report.format, report.row_count) == (True, "text", 3000)
