"""Text in and out of the engine: chat prompts, streamed detokenisation, stop sequences."""

from __future__ import annotations

from typing import Any

from common.errors import InvalidRequest
from common.text.templates import TEMPLATES, own_template


def chat_template(tokenizer: Any, template_name: str | None) -> str | None:
    """The template the base model is registered with, else the tokenizer's own: the order training uses
    (common/text/templates.py choose_template), so an adapter is served with the template it was trained on."""
    if template_name in TEMPLATES:
        return TEMPLATES[template_name]
    return own_template(tokenizer)


def encode_chat(tokenizer: Any, template: str | None, messages: list[dict[str, str]], model: str) -> list[int]:
    if template is None:
        raise InvalidRequest(f"{model} has no chat template; use /v1/completions with a plain prompt, or register "
                             "the base model with a `template`", param="model", code="no_chat_template")
    text = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                         tokenize=False)
    # The template writes the special tokens itself; adding them again would double a BOS.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        raise InvalidRequest("the prompt is empty after tokenisation", param="prompt", code="invalid_value")
    return ids


class Detokenizer:
    """Text for each new token as soon as it forms whole characters (multi-byte UTF-8 split over tokens)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None)
        self._stream: Any = None
        if backend is not None:
            try:
                from tokenizers.decoders import DecodeStream

                self._backend = backend
                self._stream = DecodeStream(skip_special_tokens=True)
            except ImportError:  # tokenizers < 0.21
                self._stream = None
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def step(self, token: int) -> str:
        if self._stream is not None:
            return self._stream.step(self._backend, token) or ""
        # Slow tokenizers: decode a short window and keep what is new (the usual prefix/read offsets).
        self._ids.append(token)
        prefix_text = self.tokenizer.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        text = self.tokenizer.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text):]
        return ""


class StopMatcher:
    """Holds back text that might be the start of a stop sequence; reports a stop once one is complete."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop sequence was hit). The stop sequence itself is never emitted."""
        if not self.stops:
            return delta, False
        buf = self.held + delta
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[:min(hits)], True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """At the end (length or EOS) the held text was not a stop after all."""
        held, self.held = self.held, ""
        return held
