"""iter_chat_rows: sharegpt and alpaca (with system and history) become chat messages; bad rows skipped.
iter_stage_rows: every stage's shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common.datasets.convert import check_stage, iter_chat_rows, iter_stage_records, iter_stage_rows, iter_valid_rows
from common.datasets.upload_check import validate_file

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


# --- iter_stage_rows: the shapes the trainer reads ------------------------------------------------------------


def _write(tmp_path: Path, name: str, *rows: object) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_stage_is_iter_chat_rows_for_every_chat_format() -> None:
    for name, fmt in [("chat_good.jsonl", "chat"), ("sharegpt.jsonl", "sharegpt"), ("alpaca.csv", "alpaca")]:
        assert list(iter_stage_rows(CORPUS / name, fmt, "sft")) == list(iter_chat_rows(CORPUS / name, fmt))
    rows = list(iter_stage_rows(CORPUS / "alpaca.parquet", "alpaca", "sft"))
    assert rows[1] == {"messages": [{"role": "user", "content": "Add\n2+2"}, {"role": "assistant", "content": "4"}]}


def test_preference_strings_become_one_message_each() -> None:
    for stage in ("dpo", "orpo", "rm"):
        first = next(iter_stage_rows(CORPUS / "preference_trl.jsonl", "preference", stage))
        assert first == {
            "prompt": [{"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}],
        }


def test_openai_dpo_maps_input_preferred_and_non_preferred(tmp_path: Path) -> None:
    (row,) = iter_stage_rows(CORPUS / "preference_openai.jsonl", "preference", "dpo")
    assert row == {
        "prompt": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}],
        "chosen": [{"role": "assistant", "content": "Today in San Francisco, it is 15 °C."}],
        "rejected": [{"role": "assistant", "content": "It is not particularly cold."}],
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    path = _write(
        tmp_path,
        "dpo.jsonl",
        {
            "input": {
                "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                "tools": tools,
            },
            "preferred_output": [{"role": "assistant", "content": [{"type": "text", "text": "good"}], "weight": 1}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        },
    )
    (row,) = iter_stage_rows(path, "preference", "orpo")
    assert row["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]  # parts joined, weight dropped
    assert row["tools"] == tools


def test_implicit_prompt_is_the_shared_leading_messages(tmp_path: Path) -> None:
    user = {"role": "user", "content": "Q"}
    path = _write(
        tmp_path,
        "implicit.jsonl",
        {
            "chosen": [user, {"role": "assistant", "content": "A"}],
            "rejected": [user, {"role": "assistant", "content": "B"}],
        },
        {"chosen": "A", "rejected": "B"},
        {"chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "A"}]},
    )
    rows = list(iter_stage_rows(path, "preference", "dpo"))
    assert rows[0] == {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "A"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    assert rows[1] == {
        "prompt": [],
        "chosen": [{"role": "assistant", "content": "A"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    assert rows[2]["prompt"] == [] and len(rows[2]["chosen"]) == 1  # each side keeps its last message


def test_kto_rows(tmp_path: Path) -> None:
    rows = list(iter_stage_rows(CORPUS / "kto.jsonl", "kto", "kto"))
    assert rows[1] == {
        "prompt": [{"role": "user", "content": "Is the sky blue?"}],
        "completion": [{"role": "assistant", "content": "Never."}],
        "label": False,
    }
    path = _write(
        tmp_path,
        "kto.jsonl",
        {
            "prompt": [{"role": "user", "content": "Q"}],
            "completion": [{"role": "assistant", "content": "A"}],
            "label": True,
        },
    )
    assert list(iter_stage_rows(path, "kto", "kto")) == [
        {
            "prompt": [{"role": "user", "content": "Q"}],
            "completion": [{"role": "assistant", "content": "A"}],
            "label": True,
        }
    ]
    assert [r["label"] for r in iter_stage_rows(CORPUS / "kto.csv", "kto", "kto")] == [True, False]


def test_pt_rows_from_every_text_container() -> None:
    assert list(iter_stage_rows(CORPUS / "text.jsonl", "text", "pt")) == [
        {"text": "Once upon a time..."},
        {"text": "The end."},
    ]
    assert [r["text"] for r in iter_stage_rows(CORPUS / "paragraphs.txt", "text", "pt")][0] == (
        "Chapter one.\nIt was a dark night."
    )
    assert len(list(iter_stage_rows(CORPUS / "text.csv", "text", "pt"))) == 2


def test_stage_records_carry_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    row = json.dumps({"text": "x"})
    path.write_text(f"\n{row}\n\n{row}\n{{broken\n{row}\n")
    assert [line for line, _ in iter_stage_records(path, "text", "pt")] == [2, 4, 6]
    assert [line for line, _ in iter_stage_records(CORPUS / "alpaca.csv", "alpaca", "sft")] == [2, 3]


@pytest.mark.parametrize(
    ("fmt", "stage", "says"),
    [
        ("chat", "dpo", "a chat file feeds sft, not dpo; stage dpo needs a file in preference format"),
        ("preference", "sft", "stage sft needs a file in chat or sharegpt or alpaca format"),
        ("chat", "pt", "stage pt needs a file in text format"),
        ("text", "kto", "a text file feeds pt, not kto"),
        ("chat", "grpo", "unknown stage 'grpo'; expected one of sft, dpo, orpo, rm, kto, pt"),
        ("csv", "sft", "unknown dataset format 'csv'"),
    ],
)
def test_a_format_that_does_not_feed_the_stage_is_a_value_error(fmt: str, stage: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        list(iter_stage_rows(CORPUS / "chat_good.jsonl", fmt, stage))
    with pytest.raises(ValueError, match=re.escape(says)):
        check_stage(fmt, stage)
