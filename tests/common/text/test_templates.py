"""The choice of the training chat template and its refusals, on the tiny model's real tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from common.errors import InvalidRequest
from common.text.errors import NotPrefixPreserving, UnusableTemplate
from common.text.named_templates import CHATML_TEMPLATE, TEMPLATES
from common.text.templates import choose_template, has_generation_markers, resolve_chat_template

# Prefix-preserving, without markers: usable through the derived spans.
UNMARKED = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
# Ends every rendering without a generation prompt with a closing tag (as Phi-3's ends with eos): a conversation's
# start renders differently once more messages follow.
CLOSED = UNMARKED + "{% if not add_generation_prompt %}<end>{% endif %}"


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def with_template(tokenizer: Any, template: str | None) -> Any:
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def test_a_registered_name_gives_the_built_in_template(tokenizer: Any) -> None:
    assert resolve_chat_template(with_template(tokenizer, None), "chatml", "m") == CHATML_TEMPLATE
    assert has_generation_markers(CHATML_TEMPLATE) and not has_generation_markers(UNMARKED)


def test_every_built_in_template_marks_the_assistant_turns() -> None:
    assert [name for name, text in TEMPLATES.items() if not has_generation_markers(text)] == []


def test_the_tokenizers_own_marked_template_is_used_as_it_is(tokenizer: Any) -> None:
    marked = CHATML_TEMPLATE.replace("<|im_end|>'", "<|im_end|>' ", 1)  # differs from the built-in one
    assert resolve_chat_template(with_template(tokenizer, marked), None, "m") == marked


def test_an_own_template_without_markers_that_keeps_prefixes_is_used_as_it_is(tokenizer: Any) -> None:
    assert resolve_chat_template(with_template(tokenizer, UNMARKED), None, "m") == UNMARKED


def test_the_job_template_comes_before_the_registered_one_which_comes_before_the_tokenizers(tokenizer: Any) -> None:
    own = with_template(tokenizer, UNMARKED)
    assert choose_template(own, model_id="m", job_template="llama3", registry_template="gemma").name == "llama3"
    chosen = choose_template(own, model_id="m", registry_template="gemma")
    assert (chosen.name, chosen.text) == ("gemma", TEMPLATES["gemma"])
    mine = choose_template(own, model_id="m")
    assert (mine.name, mine.text) == (None, UNMARKED)


@pytest.mark.parametrize(
    ("own", "name", "says"),
    [
        (None, "vicuna", "registered with template 'vicuna'"),
        (None, None, "has no chat template"),
        (CLOSED, None, "does not preserve prefixes"),
    ],
)
def test_an_unusable_template_is_a_400_on_the_base_model(tokenizer: Any, own: str | None, name: str | None,
                                                         says: str) -> None:
    with pytest.raises(UnusableTemplate) as refused:
        choose_template(with_template(tokenizer, own), model_id="m", registry_template=name)
    assert isinstance(refused.value, InvalidRequest) and refused.value.status_code == 400
    assert (refused.value.code, refused.value.param) == ("unsupported_on_worker", "base_model")
    assert says in refused.value.message


def test_a_template_that_loses_prefixes_is_refused_naming_the_model_what_broke_and_the_fix(tokenizer: Any) -> None:
    with pytest.raises(NotPrefixPreserving) as refused:
        choose_template(with_template(tokenizer, CLOSED), model_id="my-model")
    message = refused.value.message
    assert message.startswith("The chat template of base model my-model does not preserve prefixes")
    assert "the first message renders as 'pital of France?</s><end>'" in message
    assert "Register the base model with the named template of its family" in message
    assert all(name in message for name in TEMPLATES)


def test_a_job_template_that_does_not_exist_is_invalid_template(tokenizer: Any) -> None:
    with pytest.raises(InvalidRequest) as bad:
        choose_template(tokenizer, model_id="m", job_template="vicuna")
    assert (bad.value.code, bad.value.param) == ("invalid_template", "template")
    assert all(name in bad.value.message for name in TEMPLATES)


def test_a_tokenizer_without_a_fast_version_is_refused() -> None:
    class Slow:
        is_fast = False
        chat_template = CHATML_TEMPLATE

    with pytest.raises(UnusableTemplate) as refused:
        choose_template(Slow(), model_id="m", registry_template="chatml")
    assert refused.value.param == "base_model" and "fast" in refused.value.message
