"""Why the trained tokens of a base model's chats cannot be marked: a 400 on the model (`base_model`) or on the
job's `template`, with the fix in the message."""

from __future__ import annotations

from common.errors import InvalidRequest
from common.text.named_templates import TEMPLATES


class UnusableTemplate(InvalidRequest):
    """The trained tokens cannot be marked for this base model: it has no chat template, it is registered with
    one this server does not know, its tokenizer has no fast version, or its template does not preserve
    prefixes."""

    code = "unsupported_on_worker"


class NotPrefixPreserving(UnusableTemplate):
    """The chat template renders a conversation's start differently once more messages follow (or its tokenizer
    merges across a turn's boundary), so what each assistant turn adds cannot be derived by rendering turn by
    turn (`common.text.spans`)."""

    def __init__(self, model: str, what: str) -> None:
        super().__init__(
            f"The chat template of base model {model} does not preserve prefixes, so the worker cannot tell which "
            f"tokens each assistant turn adds: {what}. Register the base model with the named template of its "
            f"family ({', '.join(TEMPLATES)}; `template` in TUNEQUEUE_BASE_MODELS, see docs/datasets.md), or "
            "add {% generation %}…{% endgeneration %} markers around the assistant turns of its chat template.",
            param="base_model",
        )
        self.model = model
        self.what = what
