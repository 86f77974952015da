"""The choice of the chat template a job renders its chats with, shared by the check of a job's files
(common/datasets/tokens.py) and the training child (worker/train/run.py).

The job's `template` (a built-in name) comes first, then the one the base model is registered with, then the
tokenizer's own. A template that marks assistant turns with `{% generation %}` … `{% endgeneration %}` (every
built-in one, `common.text.named_templates`) is used through transformers' assistant mask; any other template is
used as it is when it preserves prefixes, its trained spans derived turn by turn (`common.text.spans`). The
tokenizer's own template is tried on a two-turn conversation here, so that a template that cannot work is refused
before any row is read; rows that break it later (a system message the template moves, a turn it strips) are
refused one by one with the same error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidRequest
from common.text.errors import NotPrefixPreserving, UnusableTemplate
from common.text.named_templates import TEMPLATES
from common.text.spans import derive_turn_spans

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

# What a template must handle for the turn-by-turn derivation to be worth trying at all.
PROBE: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]


def has_generation_markers(template: str) -> bool:
    """True when the template marks assistant turns with `{% generation %}`."""
    return _GENERATION_RE.search(template) is not None


def own_template(tokenizer: Any) -> str | None:
    """The tokenizer's own chat template (its default one when it has several), or None."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    return own or None


@dataclass(frozen=True)
class ChosenTemplate:
    text: str  # the Jinja template
    name: str | None  # the built-in name; None: the tokenizer's own


def check_template_name(name: str | None) -> None:
    """A job's `template` must be a built-in name (or None): InvalidRequest invalid_template otherwise. POST /jobs
    checks it (common/services/jobs.py) so that a job never fails on it after queueing."""
    if name is not None and name not in TEMPLATES:
        raise InvalidRequest(
            f"template {name!r} is not a built-in chat template; use one of {', '.join(TEMPLATES)}, "
            "or leave it out to use the base model's own",
            param="template", code="invalid_template",
        )


def choose_template(
    tokenizer: Any, *, model_id: str, job_template: str | None = None, registry_template: str | None = None
) -> ChosenTemplate:
    """The template of a job: `job_template` (a built-in name) when given, else `registry_template`, else the
    tokenizer's own. InvalidRequest invalid_template (param "template") for an unknown `job_template`;
    UnusableTemplate when none fits — param "template" when the job named it, else "base_model"."""
    check_template_name(job_template)
    if not getattr(tokenizer, "is_fast", False):
        raise UnusableTemplate(
            f"the tokenizer of base model {model_id!r} has no fast (tokenizers) version, which marking the "
            "trained tokens needs; register a model that ships tokenizer.json",
            param="base_model",
        )
    name = job_template or registry_template
    try:
        return ChosenTemplate(resolve_chat_template(tokenizer, name, model_id), name)
    except UnusableTemplate as exc:
        if job_template is not None:
            exc.param = "template"
        raise


def resolve_chat_template(tokenizer: Any, template_name: str | None, model_id: str) -> str:
    """The built-in template by name, else the tokenizer's own: as it is when it has generation markers or
    preserves prefixes on `PROBE`, else TRL's marked version of it for the templates TRL knows. UnusableTemplate
    (param "base_model") when none fits."""
    if template_name is not None:
        if template_name not in TEMPLATES:
            raise UnusableTemplate(
                f"Base model {model_id} is registered with template {template_name!r}, which this worker does not "
                f"know. Known templates: {', '.join(TEMPLATES)}; or register it without a template to use "
                "the tokenizer's own.",
                param="base_model",
            )
        return TEMPLATES[template_name]
    own = own_template(tokenizer)
    if own is None:
        raise UnusableTemplate(
            f"Base model {model_id} has no chat template, so chat rows cannot be rendered. Register it with the "
            f"named template of its family ({', '.join(TEMPLATES)}).",
            param="base_model",
        )
    if has_generation_markers(own):
        return own
    try:
        derive_turn_spans(tokenizer, PROBE, own, model_id)
    except NotPrefixPreserving as broken:
        patched = _trl_training_template(tokenizer)
        if patched is None:
            raise broken from None
        return patched
    except Exception:  # the template refuses the probe itself (e.g. it wants a system message): rows will tell
        pass
    return own


def _trl_training_template(tokenizer: Any) -> str | None:
    try:
        from trl.chat_template_utils import get_training_chat_template

        patched = get_training_chat_template(tokenizer)
    except Exception:  # any failure here means "TRL has no marked version of this template"
        return None
    return str(patched) if patched else None
