"""Every model family trains with its own template: with the family's published template (no markers, spans
derived turn by turn) and with the built-in named one (`{% generation %}` markers), the trained token ids are
exactly `apply_chat_template`'s and the trained tokens of each assistant turn decode to its content and
end-of-turn token — the same tokens either way. Tokenizers are built offline (tests/common/text/families.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.datasets.tokens import Encoder
from common.text.chat import encode_completion, tokenize_chat
from common.text.errors import NotPrefixPreserving
from common.text.named_templates import TEMPLATES
from common.text.templates import choose_template
from tests.common.text.families import CONVERSATIONS, FAMILIES, TWO_TURNS, Family, build_tokenizer, trained_turns
from worker.train.data import prepare_chat_data

BY_NAME = {family.name: family for family in FAMILIES}


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    return {family.name: build_tokenizer(family) for family in FAMILIES}


def check(family: Family, tokenizer: Any, messages: list[dict[str, Any]], template: str) -> tuple[list[int],
                                                                                                   list[int]]:
    ids, labels = tokenize_chat(tokenizer, messages, template, model=family.name)
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert trained_turns(tokenizer, ids, labels) == family.trained(messages)
    return ids, labels


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_the_named_template_trains_the_published_templates_tokens_and_marks_content_and_end_of_turn(
    tokenizers: dict[str, Any], family: Family, conversation: str
) -> None:
    tokenizer = tokenizers[family.name]
    chosen = choose_template(tokenizer, model_id=family.name, registry_template=family.name)
    assert chosen.text == TEMPLATES[family.name]
    check(family, tokenizer, CONVERSATIONS[conversation], chosen.text)


@pytest.mark.parametrize(("family", "conversation"),
                         [(family, name) for family in FAMILIES for name in family.derivable],
                         ids=lambda value: value.name if isinstance(value, Family) else value)
def test_the_published_template_without_markers_trains_what_the_named_one_trains(
    tokenizers: dict[str, Any], family: Family, conversation: str
) -> None:
    tokenizer = tokenizers[family.name]
    chosen = choose_template(tokenizer, model_id=family.name)
    assert (chosen.name, chosen.text) == (None, family.template())
    messages = CONVERSATIONS[conversation]
    derived = check(family, tokenizer, messages, chosen.text)
    assert derived == tokenize_chat(tokenizer, messages, TEMPLATES[family.name])


def test_phi3s_published_template_is_refused_and_the_named_one_is_the_fix(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["phi3"]
    with pytest.raises(NotPrefixPreserving) as refused:
        choose_template(tokenizer, model_id="phi-3.5-mini")
    assert (refused.value.code, refused.value.param) == ("unsupported_on_worker", "base_model")
    message = refused.value.message
    assert message.startswith("The chat template of base model phi-3.5-mini does not preserve prefixes")
    assert "<|endoftext|>" in message and "phi3" in message  # what broke (the eos that ends it), and the fix
    assert choose_template(tokenizer, model_id="phi-3.5-mini", registry_template="phi3").name == "phi3"


def test_mistrals_template_loses_prefixes_when_a_system_message_moves_to_the_last_user_turn(
    tokenizers: dict[str, Any]
) -> None:
    tokenizer, family = tokenizers["mistral"], BY_NAME["mistral"]
    messages = CONVERSATIONS["system_two_turns"]
    with pytest.raises(NotPrefixPreserving) as refused:
        tokenize_chat(tokenizer, messages, family.template(), model="mistral-7b")
    assert "base model mistral-7b" in refused.value.message
    assert "'<s>[INST] You answer in one sh'" in refused.value.message  # the system message, in the wrong turn
    check(family, tokenizer, messages, TEMPLATES["mistral"])


def test_a_template_that_strips_earlier_turns_is_refused_for_the_rows_it_changes(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["chatml"]
    # reasoning is kept in the last assistant turn only, as reasoning models' templates do
    strip = ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' }}"
             "{{ m['content'] if loop.last else m['content'].split('</think>')[-1] }}{{ '<|im_end|>\\n' }}"
             "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
    plain = tokenize_chat(tokenizer, TWO_TURNS, strip)  # nothing to strip: prefixes kept
    assert trained_turns(tokenizer, *plain) == [m["content"] + "<|im_end|>" for m in TWO_TURNS[1::2]]
    thinking = [TWO_TURNS[0], {"role": "assistant", "content": "<think>Easy.</think>Paris."}, *TWO_TURNS[2:]]
    with pytest.raises(NotPrefixPreserving) as refused:
        tokenize_chat(tokenizer, thinking, strip, model="reasoner")
    assert "assistant message 2 renders differently once later messages follow it" in refused.value.message


def test_a_tokenizer_that_merges_across_a_turns_boundary_is_refused() -> None:
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())  # no pre-tokenizer: merges may cross anything
    backend.train_from_iterator(["Q:hi\nA:yes\n"] * 50, trainers.BpeTrainer(vocab_size=60, show_progress=False))
    template = ("{%- for m in messages -%}{{ ('Q:' if m['role'] == 'user' else 'A:') + m['content'] + '\\n' }}"
                "{%- endfor -%}{%- if add_generation_prompt -%}A:{%- endif -%}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "Q:hi\nA:yes\n"
    with pytest.raises(NotPrefixPreserving) as refused:
        tokenize_chat(tokenizer, messages, template, model="merger")
    assert "its tokenizer merges text across the boundary of assistant message 2" in refused.value.message


def test_an_assistant_message_first_is_refused_with_the_derived_spans(tokenizers: dict[str, Any]) -> None:
    with pytest.raises(NotPrefixPreserving) as refused:
        tokenize_chat(tokenizers["zephyr"], TWO_TURNS[1:], BY_NAME["zephyr"].template(), model="z")
    assert "assistant message 1 opens the conversation" in refused.value.message


def test_weight_zero_turns_are_context_with_the_derived_spans(tokenizers: dict[str, Any]) -> None:
    family = BY_NAME["llama3"]
    tokenizer = tokenizers[family.name]
    messages = [TWO_TURNS[0], {**TWO_TURNS[1], "weight": 0}, *TWO_TURNS[2:]]
    ids, labels = tokenize_chat(tokenizer, messages, family.template())
    assert trained_turns(tokenizer, ids, labels) == ["Madrid.<|eot_id|>"]
    assert (ids, labels) == tokenize_chat(tokenizer, messages, TEMPLATES["llama3"])


def test_a_pairs_completion_is_trained_alone_with_the_derived_spans(tokenizers: dict[str, Any]) -> None:
    family = BY_NAME["gemma"]
    tokenizer = tokenizers[family.name]
    prompt, completion = TWO_TURNS[:3], TWO_TURNS[3:]
    ids, mask = encode_completion(tokenizer, prompt, completion, family.template())
    assert ids == tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)
    assert tokenizer.decode([t for t, keep in zip(ids, mask, strict=True) if keep]) == "Madrid.<end_of_turn>"
    assert (ids, mask) == encode_completion(tokenizer, prompt, completion, TEMPLATES["gemma"])


def test_the_file_check_and_the_trainer_get_the_same_rows_from_an_unmarked_template(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = tokenizers["qwen2.5"]
    rows = [CONVERSATIONS[name] for name in ("two_turns", "system_one_turn", "unicode")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in rows))
    encoder = Encoder.for_model(tokenizer, model_id="qwen", stage="sft")
    checked = [encoder.encode({"messages": messages})[0] for messages in rows]
    chosen = choose_template(tokenizer, model_id="qwen")
    trained = prepare_chat_data(path, tokenizer, chosen.text, max_seq_length=4096)
    assert trained.input_ids == [seq.input_ids for seq in checked]
    assert trained.labels == [seq.labels for seq in checked]


def test_a_merge_that_trimmed_offsets_would_hide_is_refused() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["Q: hi A: yes"] * 50, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    backend.post_processor = processors.ByteLevel(trim_offsets=True)  # " yes" reports offsets without its space
    # the generation prompt ends with a space that the answer's first token takes
    template = ("{%- for m in messages -%}{{ ('Q: ' if m['role'] == 'user' else 'A: ') + m['content'] + ' ' }}"
                "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'A: ' }}{%- endif -%}")
    tokenizer: Any = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    assert "Ġyes" in tokenizer.convert_ids_to_tokens(tokenizer.apply_chat_template(messages, return_dict=False))
    with pytest.raises(NotPrefixPreserving) as refused:
        tokenize_chat(tokenizer, messages, template, model="spacey")
    assert "token 'Ġyes' covers ' yes'" in refused.value.message
