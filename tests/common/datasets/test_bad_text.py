"""NUL characters and lone surrogates in dataset content (issue 13): the row is refused at upload with its line
and the field (`invalid_text`), instead of crashing later (Postgres refuses NUL in text and jsonb; tokenizers and
UTF-8 refuse lone surrogates); and no error message or field carries such a character into the database."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.artifacts import get_store
from common.datasets.convert import iter_valid_rows
from common.datasets.upload_check import validate_file
from common.db import session_scope
from common.services import files as file_service
from common.settings import get_settings

OK = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'


def chat(user: str = "Hi", answer: str = "Hello") -> str:
    """A JSON line whose strings are written as given: escapes such as \\u0000 stay escapes in the file."""
    return f'{{"messages": [{{"role": "user", "content": "{user}"}}, {{"role": "assistant", "content": "{answer}"}}]}}'


def report_of(tmp_path: Path, name: str, content: str | bytes) -> list[tuple[str, int, str | None, str]]:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    return [(e.code, e.line, e.field, e.message) for e in validate_file(path).errors]


def no_bad_characters(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_a_nul_in_a_chat_message_is_refused_on_its_line(tmp_path: Path) -> None:
    errors = report_of(tmp_path, "nul.jsonl", "\n".join([OK, chat(answer="Hel\\u0000lo"), OK]) + "\n")
    assert [(code, line, field) for code, line, field, _ in errors] == [
        ("invalid_text", 2, "messages[1].content")]
    assert errors[0][3].startswith("line 2: messages[1].content contains a NUL character (\\u0000); remove it")


def test_a_lone_surrogate_is_refused_and_a_pair_is_a_character(tmp_path: Path) -> None:
    text = "\n".join([chat(user="\\ud800 alone"), chat(user="a pair \\ud83d\\ude00"), chat(answer="end \\udfff")])
    errors = report_of(tmp_path, "surrogate.jsonl", text + "\n")
    assert [(code, line, field) for code, line, field, _ in errors] == [
        ("invalid_text", 1, "messages[0].content"), ("invalid_text", 3, "messages[1].content")]
    assert "lone surrogate (\\ud800)" in errors[0][3] and "lone surrogate (\\udfff)" in errors[1][3]


def test_a_nul_in_a_key_is_refused_and_not_quoted(tmp_path: Path) -> None:
    line = ('{"messages": [{"role": "user", "content": "Hi", "na\\u0000me": "x"}, '
            '{"role": "assistant", "content": "Yo"}]}')
    errors = report_of(tmp_path, "key.jsonl", line + "\n")
    assert [(code, line, field) for code, line, field, _ in errors] == [("invalid_text", 1, "messages[0]")]
    assert errors[0][3].startswith("line 1: a key of messages[0] contains a NUL character")


def test_a_raw_nul_byte_in_a_json_line_is_invalid_json(tmp_path: Path) -> None:
    errors = report_of(tmp_path, "raw.jsonl", (chat() + "\n").encode().replace(b"Hello", b"Hel\x00lo"))
    assert [(code, line) for code, line, _, _ in errors] == [("invalid_json", 1)]
    assert all(no_bad_characters(message) for *_, message in errors)


@pytest.mark.parametrize(("name", "content", "line"), [
    ("nul.csv", b"instruction,output\nq,a\nq,an\x00swer\n", 3),
    ("nul.txt", b"one document\ntwo\x00 documents\n", 2),
    ("nul.jsonl.gz", gzip.compress((OK + "\n" + chat(user="\\u0000") + "\n").encode()), 2),
    ("nul.json", ("[" + OK + ", " + chat(answer="x\\u0000") + "]").encode(), 2),
])
def test_every_container_refuses_a_nul_in_the_content(tmp_path: Path, name: str, content: bytes, line: int) -> None:
    errors = report_of(tmp_path, name, content)
    assert [(code, at) for code, at, _, _ in errors] == [("invalid_text", line)]


def test_a_parquet_string_with_a_nul_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nul.parquet"
    pq.write_table(pa.table({"text": ["fine", "bad\x00text"]}), path)
    assert [(e.code, e.line, e.field) for e in validate_file(path).errors] == [("invalid_text", 2, "text")]


def test_error_messages_quoting_row_text_escape_bad_characters(tmp_path: Path) -> None:
    # an unknown role is quoted (repr) and an unknown key named in the message: neither may carry a NUL or a
    # surrogate to Postgres, even where the row check itself is about something else
    path = tmp_path / "header.csv"
    path.write_bytes(b"text,te\x00xt,te\x00xt\nx,y,z\n")
    errors = validate_file(path).errors
    assert errors and all(no_bad_characters(e.message) and no_bad_characters(e.field or "") for e in errors)


def test_rows_with_bad_text_are_never_handed_to_the_trainer(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([OK, chat(answer="x\\u0000"), chat(user="\\udc00")]) + "\n")
    assert len(list(iter_valid_rows(path, "chat"))) == 1


def test_an_upload_with_a_nul_is_stored_as_an_error_not_a_crash(tenant: tuple[str, str]) -> None:
    content = (OK + "\n" + chat(answer="\\u0000") + "\n" + chat(user="\\ud800") + "\n").encode()
    with session_scope() as session:
        row = file_service.create_file(session, get_store(), get_settings(), tenant_id=tenant[0],
                                       src=io.BytesIO(content), filename="bad.jsonl", purpose="fine-tune")
        file_id = row.id
    with session_scope() as session:
        from common.models import File

        stored = session.get_one(File, file_id)
        assert stored.status == "error"
        assert [(e["code"], e["line"]) for e in stored.errors or []] == [("invalid_text", 2), ("invalid_text", 3)]
        assert no_bad_characters(json.dumps(stored.errors, ensure_ascii=False))
