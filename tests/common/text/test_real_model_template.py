"""SmolLM2-135M-Instruct registered as it comes (tests/support/real_model.py): its own chat template has no
`{% generation %}` markers and injects a default system prompt, and it trains exactly the tokens of the built-in
`smollm2` template (ChatML with that default system turn)."""

from __future__ import annotations

from typing import Any

import pytest

from common.datasets.tokens import Encoder, template_label
from common.settings import REAL_MODEL_ID
from common.text.chat import encode_completion, tokenize_chat
from common.text.named_templates import SMOLLM2_SYSTEM, TEMPLATES
from common.text.templates import has_generation_markers
from tests.common.text.families import CONVERSATIONS, TWO_TURNS, trained_turns
from tests.support.real_model import real_model_dir


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_model_dir()))


def test_smollm2_registered_as_it_comes_uses_its_own_template(tokenizer: Any) -> None:
    assert not has_generation_markers(tokenizer.chat_template) and SMOLLM2_SYSTEM in tokenizer.chat_template
    encoder = Encoder.for_model(tokenizer, model_id=REAL_MODEL_ID, stage="sft")
    assert (encoder.template, template_label(encoder)) == (tokenizer.chat_template, "tokenizer")


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_smollm2s_own_template_trains_the_tokens_of_chatml_with_its_default_system(tokenizer: Any,
                                                                                   conversation: str) -> None:
    messages = CONVERSATIONS[conversation]
    own = tokenize_chat(tokenizer, messages, tokenizer.chat_template, model=REAL_MODEL_ID)
    assert own == tokenize_chat(tokenizer, messages, TEMPLATES["smollm2"])
    ids, labels = own
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert trained_turns(tokenizer, ids, labels) == [m["content"] + "<|im_end|>" for m in messages
                                                     if m["role"] == "assistant"]
    if messages[0]["role"] != "system":
        assert tokenizer.decode(ids).startswith(f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n")


def test_smollm2s_own_template_trains_a_pairs_completion_alone(tokenizer: Any) -> None:
    prompt, completion = TWO_TURNS[:3], TWO_TURNS[3:]
    ids, mask = encode_completion(tokenizer, prompt, completion, tokenizer.chat_template)
    assert tokenizer.decode([t for t, keep in zip(ids, mask, strict=True) if keep]) == "Madrid.<|im_end|>"
    assert (ids, mask) == encode_completion(tokenizer, prompt, completion, TEMPLATES["smollm2"])
