"""A file preview's trained spans (cli/user/preview.py): in colour, exactly the trained segments carry the
highlight and the others are dimmed; without colour they are put between ⟦ and ⟧; control characters from the
dataset never reach the terminal."""

from __future__ import annotations

from typing import Any

from cli.user.preview import CONTEXT_STYLE, TRAINED_STYLE, spans

SEGMENTS: list[dict[str, Any]] = [
    {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "trained": False, "tokens": 13},
    {"text": "Hello.<|im_end|>", "trained": True, "tokens": 3},
    {"text": "\n", "trained": False, "tokens": 1}]


def test_in_colour_exactly_the_trained_segments_are_highlighted() -> None:
    text = spans(SEGMENTS, colour=True)
    assert text.plain == "".join(s["text"] for s in SEGMENTS)
    highlighted = [text.plain[s.start:s.end] for s in text.spans if s.style == TRAINED_STYLE]
    dimmed = [text.plain[s.start:s.end] for s in text.spans if s.style == CONTEXT_STYLE]
    assert highlighted == ["Hello.<|im_end|>"]
    assert dimmed == [SEGMENTS[0]["text"], "\n"]


def test_without_colour_the_trained_segments_are_bracketed() -> None:
    assert spans(SEGMENTS, colour=False).plain == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n⟦Hello.<|im_end|>⟧\n")


def test_control_characters_of_a_row_are_dropped() -> None:
    text = spans([{"text": "a\x1b[2Jb\tc\n", "trained": True}], colour=False)
    assert text.plain == "⟦a[2Jb\tc\n⟧"
