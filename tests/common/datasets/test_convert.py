"""iter_chat_rows: sharegpt and alpaca (with system and history) become chat messages; bad rows skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.datasets import iter_chat_rows, iter_valid_rows, validate_file

CORPUS = Path(__file__).parent / "corpus"


def test_chat_rows_keep_tool_calls_and_weights_and_join_text_parts() -> None:
    rows = list(iter_chat_rows(CORPUS / "chat_good.jsonl", "chat"))
    assert len(rows) == 4
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    tool_row = rows[1]
    assert tool_row["messages"][0] == {"role": "user", "content": "Weather in Oslo?"}
    assert tool_row["messages"][1]["content"] == ""
    assert tool_row["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool_row["messages"][2] == {"role": "tool", "content": '{"temp_c": 3}', "tool_call_id": "call_1"}
    assert tool_row["tools"][0]["function"]["name"] == "get_weather"
    assert [m.get("weight") for m in rows[2]["messages"]] == [None, 0, None, 1]
    assert "id" not in rows[3]


def test_sharegpt_roles_are_mapped() -> None:
    rows = list(iter_chat_rows(CORPUS / "sharegpt.jsonl", "sharegpt"))
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    messages = rows[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    call = messages[1]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert messages[2]["content"] == '{"temp_c": 3}'
    assert rows[1]["tools"] == '[{"name": "get_weather"}]'


def test_alpaca_with_system_and_history_becomes_multi_turn() -> None:
    rows = list(iter_chat_rows(CORPUS / "alpaca_history.jsonl", "alpaca"))
    assert rows[0] == {
        "messages": [
            {"role": "user", "content": "Translate to French\ncat"},
            {"role": "assistant", "content": "chat"},
        ]
    }
    assert rows[1] == {
        "messages": [
            {"role": "system", "content": "You translate."},
            {"role": "user", "content": "Translate to French: dog"},
            {"role": "assistant", "content": "chien"},
            {"role": "user", "content": "And cat?"},
            {"role": "assistant", "content": "chat"},
            {"role": "user", "content": "And now plural?"},
            {"role": "assistant", "content": "chats"},
        ]
    }


def test_sharegpt_with_chat_role_names_and_unparseable_function_call(tmp_path: Path) -> None:
    path = tmp_path / "variant.jsonl"
    row = {
        "conversations": [
            {"role": "user", "content": "Call it"},
            {"from": "function_call", "value": "not json"},
            {"from": "observation", "value": "done"},
            {"role": "assistant", "content": "Done."},
        ]
    }
    path.write_text(json.dumps(row) + "\n")
    assert validate_file(path).ok
    (out,) = iter_chat_rows(path, "sharegpt")
    assert out["messages"] == [
        {"role": "user", "content": "Call it"},
        {"role": "assistant", "content": "not json"},
        {"role": "tool", "content": "done"},
        {"role": "assistant", "content": "Done."},
    ]


def test_invalid_and_foreign_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes((CORPUS / "mixed_formats.jsonl").read_bytes() + (CORPUS / "role_typo.jsonl").read_bytes())
    rows = list(iter_chat_rows(path, "chat"))
    assert len(rows) == 3  # two good chat rows from each file, minus the role typo; alpaca and text dropped
    assert all(m["role"] in ("user", "assistant") for r in rows for m in r["messages"])


def test_gzip_and_json_array_convert_too() -> None:
    assert len(list(iter_chat_rows(CORPUS / "chat.jsonl.gz", "chat"))) == 2
    assert len(list(iter_chat_rows(CORPUS / "chat_array.json", "chat"))) == 2


def test_non_chat_formats_do_not_convert_but_iterate_raw() -> None:
    with pytest.raises(ValueError, match="does not convert to chat"):
        list(iter_chat_rows(CORPUS / "kto.jsonl", "kto"))
    assert [r["label"] for r in iter_valid_rows(CORPUS / "kto.jsonl", "kto")] == [True, False]
    assert len(list(iter_valid_rows(CORPUS / "preference_missing_rejected.jsonl", "preference"))) == 1
    assert [r["text"] for r in iter_valid_rows(CORPUS / "text.jsonl", "text")] == [
        "Once upon a time...",
        "The end.",
    ]
