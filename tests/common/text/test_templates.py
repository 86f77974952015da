"""The choice of the training chat template and its refusals, on the tiny model's real tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from common.errors import InvalidRequest
from common.text.templates import CHATML_TEMPLATE, UnusableTemplate, has_generation_markers, resolve_chat_template

UNMARKED = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"


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


def test_the_tokenizers_own_marked_template_is_used_as_it_is(tokenizer: Any) -> None:
    marked = CHATML_TEMPLATE.replace("<|im_end|>'", "<|im_end|>' ", 1)  # differs from the built-in one
    assert resolve_chat_template(with_template(tokenizer, marked), None, "m") == marked


@pytest.mark.parametrize(
    ("own", "name", "says"),
    [
        (None, "vicuna", "registered with template 'vicuna'"),
        (None, None, "has no chat template"),
        (UNMARKED, None, "does not mark assistant turns"),
    ],
)
def test_an_unusable_template_is_a_400_on_the_base_model(tokenizer: Any, own: str | None, name: str | None,
                                                         says: str) -> None:
    with pytest.raises(UnusableTemplate) as refused:
        resolve_chat_template(with_template(tokenizer, own), name, "m")
    assert isinstance(refused.value, InvalidRequest) and refused.value.status_code == 400
    assert (refused.value.code, refused.value.param) == ("unsupported_on_worker", "base_model")
    assert says in refused.value.message
