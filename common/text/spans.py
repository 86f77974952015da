"""The trained tokens of a chat template without `{% generation %}` markers, derived by rendering the
conversation turn by turn.

For the assistant message at index k the template renders three texts: `before` (messages[:k]), `prompt`
(messages[:k] with add_generation_prompt: `before` plus the role header the model sees before it answers) and
`upto` (messages[:k+1]). In a prefix-preserving template each is the start of the next and of the whole
conversation's rendering, so the turn is the text between the end of `prompt` and the end of `upto`: its
content and whatever the template writes after it. The trained span is that text up to and including its last
special token (the end-of-turn token); a separator after it (ChatML's newline) is context, as in the marked
templates of `common.text.named_templates`. A turn that renders no special token is trained whole.

The whole conversation is tokenised once (that is `apply_chat_template`'s tokenisation, so the ids are its
ids) and the character spans become token spans through the offsets, which needs a fast tokenizer. The token
level must preserve prefixes too: a token that straddles the end of `prompt` or of `upto` (a merge across the
boundary) means the model would see other tokens at inference than in training, and is refused like a string
that is not a prefix.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.text.errors import NotPrefixPreserving


@dataclass(frozen=True)
class TurnSpan:
    """The trained tokens [start, stop) of the assistant message at `index` in the conversation."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class _TokenizerFacts:
    special_ids: frozenset[int]
    plain: Any  # a copy of the backend without its post-processor (whose offsets may be trimmed), or None


_FACTS: dict[int, tuple[Any, _TokenizerFacts]] = {}


def _facts(tokenizer: Any) -> _TokenizerFacts:
    """What the mapping needs from a tokenizer, computed once per tokenizer object."""
    hit = _FACTS.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    special = set(tokenizer.all_special_ids)
    special.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    serialized = tokenizer.backend_tokenizer.to_str()
    plain = None
    if '"trim_offsets":true' in json.dumps(json.loads(serialized).get("post_processor"), separators=(",", ":")):
        from tokenizers import Tokenizer

        plain = Tokenizer.from_str(serialized)
        plain.post_processor = None
    facts = _TokenizerFacts(frozenset(special), plain)
    if len(_FACTS) >= 8:
        _FACTS.clear()
    _FACTS[id(tokenizer)] = (tokenizer, facts)
    return facts


def derive_turn_spans(
    tokenizer: Any, messages: list[dict[str, Any]], template: str, model: str
) -> tuple[list[int], list[TurnSpan]]:
    """The token ids of the whole conversation (`apply_chat_template`'s) and the trained span of every
    assistant message. NotPrefixPreserving (naming `model` and what broke) when the template or the tokenizer
    does not preserve prefixes for this conversation."""
    renders: dict[tuple[int, bool], str] = {}

    def render(count: int, generation_prompt: bool) -> str:
        key = (count, generation_prompt)
        if key not in renders:
            renders[key] = tokenizer.apply_chat_template(messages[:count], chat_template=template, tokenize=False,
                                                         add_generation_prompt=generation_prompt)
        return renders[key]

    full = render(len(messages), False)
    encoded = tokenizer(full, add_special_tokens=False)  # what apply_chat_template(tokenize=True) does with it
    ids = list(encoded["input_ids"])
    offsets = _offsets(tokenizer, encoded, full, ids, model)
    starts = [start for start, _ in offsets]
    special = _facts(tokenizer).special_ids
    spans: list[TurnSpan] = []
    done = 0  # where the previous assistant turn ended, in characters
    for k, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        where = f"assistant message {k + 1}"
        if k == 0:
            raise NotPrefixPreserving(model, f"{where} opens the conversation, so there is no prompt before it to "
                                      "render; start the conversation with a user (or system) message")
        before, prompt = render(k, False), render(k, True)
        upto = full if k + 1 == len(messages) else render(k + 1, False)
        _check_prefix(model, before, prompt, f"the generation prompt before {where} does not only add to the "
                      f"conversation before it: {_first(k)} {_verb(k)} as", "but with the generation prompt as")
        _check_prefix(model, prompt, full, f"the prompt the model answers {where} from ({_first(k)} with the "
                      "generation prompt) is not how the whole conversation renders it:")
        _check_prefix(model, upto, full, f"{where} renders differently once later messages follow it (the "
                      "template changes earlier turns, e.g. strips their reasoning, or ends a conversation with "
                      f"text it drops when one continues): {_first(k + 1)} {_verb(k + 1)} as")
        begin, end = len(prompt), len(upto)
        if not done <= begin <= end:
            raise NotPrefixPreserving(model, f"{where} would span characters {begin}-{end} of the conversation, "
                                      f"overlapping what came before it (up to character {done})")
        for boundary, what in ((begin, "its header and its content"), (end, "it and what follows")):
            _check_boundary(model, full, ids, offsets, starts, boundary, f"{where}, between {what}", tokenizer)
        first, stop = bisect_left(starts, begin), bisect_left(starts, end)
        last_special = next((i for i in range(stop - 1, first - 1, -1) if ids[i] in special), None)
        spans.append(TurnSpan(k, first, stop if last_special is None else last_special + 1))
        done = end
    return ids, spans


def _offsets(tokenizer: Any, encoded: Any, full: str, ids: list[int], model: str) -> list[tuple[int, int]]:
    """Each token's character span in `full`, untrimmed (a post-processor that trims offsets would hide a
    token's leading space, which is what a merge across a boundary looks like)."""
    plain = _facts(tokenizer).plain
    if plain is None:
        return [tuple(pair) for pair in encoded.encodings[0].offsets]
    again = plain.encode(full, add_special_tokens=False)
    if list(again.ids) != ids:
        raise NotPrefixPreserving(model, "its tokenizer encodes the rendered conversation differently without its "
                                  "post-processor, so token offsets cannot be trusted")
    return [tuple(pair) for pair in again.offsets]


def _first(count: int) -> str:
    """The first `count` messages, as a message says it."""
    return "the first message" if count == 1 else f"the first {count} messages"


def _verb(count: int) -> str:
    return "renders" if count == 1 else "render"


def _check_prefix(model: str, part: str, whole: str, what: str,
                  other: str = "where the whole conversation renders") -> None:
    """Refuse (saying `what` broke, and where) when `part` is not the start of `whole`."""
    if whole.startswith(part):
        return
    at = next((i for i, (a, b) in enumerate(zip(part, whole, strict=False)) if a != b), min(len(part), len(whole)))
    raise NotPrefixPreserving(model, f"{what} {_excerpt(part, at)} {other} {_excerpt(whole, at)} (character {at})")


def _check_boundary(model: str, full: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                    starts: Sequence[int], boundary: int, where: str, tokenizer: Any) -> None:
    """Refuse when a token starts before `boundary` and ends after it (only the last tokens that start before it
    can: several share a start when a character is split into bytes)."""
    after = bisect_left(starts, boundary)
    for i in range(after - 1, max(after - 5, -1), -1):
        start, end = offsets[i]
        if start < boundary < end:
            piece = tokenizer.convert_ids_to_tokens(ids[i])
            raise NotPrefixPreserving(model, f"its tokenizer merges text across the boundary of {where}: token "
                                      f"{piece!r} covers {full[start:end]!r}, so the tokens of the prompt are not "
                                      "the start of the conversation's tokens")


def _excerpt(text: str, at: int) -> str:
    return repr(text[max(0, at - 20):at + 20])
