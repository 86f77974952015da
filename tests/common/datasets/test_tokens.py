"""Template and mask round-trips on the tiny model's real tokenizer: the tokens are exactly
`tokenizer.apply_chat_template`'s, and decoding only the trained tokens gives exactly the assistant text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from common.datasets.tokens import EncodedSequence, Encoder, TokenStats, load_tokenizer
from common.errors import InvalidRequest, NotReady
from common.settings import BaseModelEntry
from common.text.errors import UnusableTemplate
from common.text.masks import IGNORE_INDEX

END = "<|im_end|>"
SYSTEM: dict[str, Any] = {"role": "system", "content": "You are terse."}

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "single": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    "system": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ],
    "unicode": [{"role": "user", "content": "Ünïcödé ✓ 日本語"}, {"role": "assistant", "content": "👍 sí"}],
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return load_tokenizer("tiny-llama", BaseModelEntry(path=str(tiny_model), template="chatml"))


def sft(tokenizer: Any, **kwargs: Any) -> Encoder:
    return Encoder.for_model(tokenizer, model_id="tiny-llama", stage="sft", registry_template="chatml", **kwargs)


def trained_text(tokenizer: Any, seq: EncodedSequence) -> str:
    return tokenizer.decode([t for t, label in zip(seq.input_ids, seq.labels, strict=True) if label != IGNORE_INDEX])


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_tokens_are_apply_chat_templates_and_labels_are_the_assistant_text(tokenizer: Any, name: str) -> None:
    messages = CONVERSATIONS[name]
    (seq,) = sft(tokenizer).encode({"messages": messages})
    assert seq.input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert trained_text(tokenizer, seq) == "".join(m["content"] + END for m in messages if m["role"] == "assistant")
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(seq.input_ids, seq.labels, strict=True))


@pytest.mark.parametrize(("weights", "trained"), [((0, 1), "Madrid."), ((1, 0), "Paris."), ((0, 0), "")])
def test_weight_zero_turns_are_not_trained(tokenizer: Any, weights: tuple[int, int], trained: str) -> None:
    messages: list[dict[str, Any]] = list(CONVERSATIONS["multi_turn"])
    messages[2] = {**messages[2], "weight": weights[0]}
    messages[4] = {**messages[4], "weight": weights[1]}
    (seq,) = sft(tokenizer).encode({"messages": messages})
    assert seq.input_ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert trained_text(tokenizer, seq) == (trained + END if trained else "")


def test_segments_rebuild_the_rendered_text(tokenizer: Any) -> None:
    encoder = sft(tokenizer)
    messages = CONVERSATIONS["multi_turn"]
    (seq,) = encoder.encode({"messages": messages})
    segments = encoder.segments(seq)
    assert "".join(s["text"] for s in segments) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert [s["text"] for s in segments if s["trained"]] == ["Paris." + END, "Madrid." + END]
    assert sum(s["tokens"] for s in segments) == len(seq.input_ids)
    assert [s["trained"] for s in segments] == [False, True, False, True, False]


def test_train_on_inputs_trains_every_token(tokenizer: Any) -> None:
    (seq,) = sft(tokenizer, train_on_inputs=True).encode({"messages": CONVERSATIONS["system"]})
    assert seq.labels == seq.input_ids


def test_pairs_train_only_the_completion_after_the_prompt(tokenizer: Any) -> None:
    prompt = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    prompt.append({"role": "user", "content": "Spain?"})
    row = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "Madrid."}],
        "rejected": [{"role": "assistant", "content": "Barcelona."}],
    }
    encoder = Encoder.for_model(tokenizer, model_id="tiny-llama", stage="dpo", registry_template="chatml")
    chosen, rejected = encoder.encode(row)
    assert (chosen.name, rejected.name) == ("chosen", "rejected")
    assert chosen.input_ids == tokenizer.apply_chat_template(prompt + row["chosen"], tokenize=True, return_dict=False)
    assert trained_text(tokenizer, chosen) == "Madrid." + END  # not the earlier assistant turn of the prompt
    assert trained_text(tokenizer, rejected) == "Barcelona." + END
    kto = Encoder.for_model(tokenizer, model_id="tiny-llama", stage="kto", registry_template="chatml")
    (completion,) = kto.encode({"prompt": prompt, "completion": row["chosen"], "label": True})
    assert completion.name == "completion" and trained_text(tokenizer, completion) == "Madrid." + END


def test_pretraining_text_gets_eos_and_every_token_trained(tokenizer: Any) -> None:
    encoder = Encoder.for_model(tokenizer, model_id="tiny-llama", stage="pt", template="no-such-template")
    (seq,) = encoder.encode({"text": "Once upon a time"})
    assert seq.input_ids == tokenizer("Once upon a time")["input_ids"] + [tokenizer.eos_token_id]
    assert seq.labels == seq.input_ids
    assert encoder.template is None  # pt renders no chat template, so `template` is not looked at


def test_template_choice(tokenizer: Any) -> None:
    assert sft(tokenizer).template_name == "chatml"  # the registered template comes before the tokenizer's own
    assert Encoder.for_model(tokenizer, model_id="tiny-llama", stage="sft").template_name is None  # its own
    assert sft(tokenizer, template="llama3").template_name == "llama3"  # the job's comes first
    with pytest.raises(InvalidRequest) as bad:
        sft(tokenizer, template="vicuna")
    assert (bad.value.code, bad.value.param) == ("invalid_template", "template")
    assert "chatml" in bad.value.message
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    assert sft(bare).template_name == "chatml"  # no own template: the registry's
    with pytest.raises(UnusableTemplate) as none:
        Encoder.for_model(bare, model_id="bare", stage="sft")
    assert none.value.param == "base_model" and "has no chat template" in none.value.message


def test_a_missing_model_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NotReady) as exc:
        load_tokenizer("gone", BaseModelEntry(path=str(tmp_path / "gone")))
    assert (exc.value.code, exc.value.param) == ("base_model_unavailable", "base_model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotReady) as broken:
        load_tokenizer("empty", BaseModelEntry(path=str(tmp_path / "empty")))
    assert "could not be loaded" in broken.value.message


def seq(length: int, trained_from: int | None, name: str = "text") -> EncodedSequence:
    ids = list(range(length))
    start = length if trained_from is None else trained_from
    return EncodedSequence(name, ids, [IGNORE_INDEX] * start + ids[start:])


def test_token_stats_arithmetic() -> None:
    stats = TokenStats(max_seq_length=10)
    stats.add([seq(4, 2)])  # 2 trained
    stats.add([seq(12, 8)])  # longer than 10: truncated, 2 trained within the first 10
    stats.add([seq(15, 11)])  # its trained tokens all lie past 10: dropped
    stats.add([seq(6, None)])  # nothing trained at all: dropped
    stats.add([seq(5, 3, "chosen"), seq(7, 3, "rejected")], label=None)  # a pair: length 7, 2 + 4 trained
    assert stats.to_dict() == {
        "rows": 5,
        "rows_kept": 3,
        "total_tokens": 4 + 12 + 15 + 6 + 12,
        "trained_tokens": 2 + 2 + 2 + 4,
        "mean_length": round((4 + 12 + 15 + 6 + 7) / 5, 1),
        "p95_length": 15,
        "max_length": 15,
        "max_seq_length": 10,
        "rows_over_max_seq_length": 2,
        "over_max_seq_length": "truncated",
        "rows_without_trained_tokens": 2,
        "without_trained_tokens": "dropped",
    }


def test_token_stats_p95_is_nearest_rank_and_kto_labels_are_counted() -> None:
    stats = TokenStats(max_seq_length=1000)
    for n in range(1, 41):
        stats.add([seq(n, 0)], label=n % 4 == 0)
    out = stats.to_dict()
    assert (out["p95_length"], out["max_length"], out["mean_length"]) == (38, 40, 20.5)
    assert out["labels"] == {"desirable": 10, "undesirable": 30}
    assert TokenStats(max_seq_length=8).to_dict()["p95_length"] == 0
