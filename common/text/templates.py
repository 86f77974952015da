"""Chat templates that mark the trained tokens, by the name a base model is registered with (`template`), and
the choice of the template a job renders its chats with.

A training template wraps each assistant turn, end-of-turn token included, in `{% generation %}` …
`{% endgeneration %}`: transformers turns those spans into the assistant mask, and only masked tokens are
trained. The markers render as nothing, so the same template serves inference unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from common.errors import InvalidRequest

# ChatML (<|im_start|>role\n…<|im_end|>\n). The assistant's content and its <|im_end|> are trained; the
# header before them and the newline after them are context. A message without content (an assistant turn
# that only calls tools) renders as an empty turn.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- (message['content'] or '') + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML_TEMPLATE}

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


class UnusableTemplate(InvalidRequest):
    """The trained tokens cannot be marked for this base model: its chat template has no generation markers, it
    has none, it is registered with one this server does not know, or its tokenizer has no fast version."""

    code = "unsupported_on_worker"


def has_generation_markers(template: str) -> bool:
    """True when the template marks assistant turns with `{% generation %}`."""
    return _GENERATION_RE.search(template) is not None


def own_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template (its default one when it has several), or None."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    return own or None


def resolve_chat_template(tokenizer: Any, template_name: str | None, model_id: str) -> str:
    """The training template: the built-in one by name, else the tokenizer's own with generation markers
    (or TRL's marked version of it for the templates TRL knows). UnusableTemplate (param "base_model") when
    none fits."""
    if template_name is not None:
        if template_name not in TEMPLATES:
            raise UnusableTemplate(
                f"Base model {model_id} is registered with template {template_name!r}, which this worker does not "
                f"know. Known templates: {', '.join(sorted(TEMPLATES))}; or register it without a template to use "
                "the tokenizer's own.",
                param="base_model",
            )
        return TEMPLATES[template_name]
    own = own_template(tokenizer)
    if own is None:
        raise UnusableTemplate(
            f"Base model {model_id} has no chat template, so chat rows cannot be rendered. Register it with a "
            f"template, e.g. 'chatml'.",
            param="base_model",
        )
    if has_generation_markers(own):
        return own
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
    except Exception:  # any failure here means "TRL has no marked version of this template"
        patched = None
    if patched:
        return str(patched)
    raise UnusableTemplate(
        f"The chat template of base model {model_id} does not mark assistant turns with "
        "{% generation %}…{% endgeneration %}, so the worker cannot tell which tokens to train on. Register the "
        "model with template 'chatml' if it uses ChatML, or add the markers to its chat template.",
        param="base_model",
    )
