"""Chat templates the worker trains with, by the name a base model is registered with (`template`).

A training template must wrap each assistant turn, end-of-turn token included, in `{% generation %}` …
`{% endgeneration %}`: transformers turns those spans into the assistant mask, and only masked tokens are
trained. The markers render as nothing, so the same template serves inference unchanged.
"""

from __future__ import annotations

import re

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


def has_generation_markers(template: str) -> bool:
    """True when the template marks assistant turns with `{% generation %}`."""
    return _GENERATION_RE.search(template) is not None
