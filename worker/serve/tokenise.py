"""Prompts into token ids: refused by their length in characters before any tokeniser runs, and tokenised on a
small thread pool of their own, never on the event loop.

Why: a tokeniser costs time and memory per character (about 340 bytes of memory per byte of a long message), and
serve tokenised on its event loop, so one 8 MB message took 6 s, grew serve by 1 GB and held every other
request's tokens for 5.5 s. Now a prompt longer than the model's context could hold is refused from its
character count alone: a token of this tokenizer covers at most `chars_per_token` characters (its longest
vocabulary entry, capped at MAX_CHARS_PER_TOKEN), so a text of more than context × that many characters cannot
fit. The exact check on token counts still follows tokenising (worker/serve/app.py `_token_limit`).

`stats()` (in serve's /status) counts the tokenisations run and refused, and the ones running now."""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from common.errors import InvalidRequest
from common.schemas.inference import ChatCompletionRequest, CompletionRequest
from worker.serve.bases import LoadedBase
from worker.serve.text import encode_chat, encode_prompt

# The bound on characters per token: the longest vocabulary entry (as written in the vocabulary, which is never
# shorter than its text), but no more than this: some vocabularies hold 80-character runs of `=` or spaces, and a
# prompt made only of those is not worth holding a context's worth of 80-character tokens in memory for.
MAX_CHARS_PER_TOKEN = 32
# Tokenising is CPU work in the tokenizers library (which releases the GIL): two threads keep one long prompt from
# holding up the others without letting many of them take every core from the engine.
TOKENISE_THREADS = 2

# A text longer than the context × this many characters is probably too long: it is tokenised a piece of that size
# at a time, and refused as soon as its pieces hold more tokens than the context (plus PIECE_MARGIN_TOKENS per
# cut, for tokens a cut splits), so that a maximal prompt costs a context's worth of tokenising, not 32 times it.
PROBE_CHARS_PER_TOKEN = 4
PIECE_MARGIN_TOKENS = 16

Encoded = tuple[Literal["chat", "text"], list[list[int]], list[str]]


def chars_per_token(tokenizer: Any) -> int:
    longest = max((len(token) for token in tokenizer.get_vocab()), default=MAX_CHARS_PER_TOKEN)
    return max(1, min(longest, MAX_CHARS_PER_TOKEN))


class Tokeniser:
    def __init__(self, threads: int = TOKENISE_THREADS) -> None:
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._bounds: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        # Changed on the event loop only.
        self.calls = 0
        self.chars = 0
        self.refused = 0
        self.running = 0

    def char_limit(self, base: LoadedBase) -> int:
        """The most characters one prompt may have for `base`: its context × its characters per token."""
        bound = self._bounds.get(base.tokenizer)
        if bound is None:
            bound = self._bounds[base.tokenizer] = chars_per_token(base.tokenizer)
        return base.context_length * bound

    async def encode(self, base: LoadedBase, body: ChatCompletionRequest | CompletionRequest) -> Encoded:
        """(kind, token ids of each prompt, the prompts to echo). A 400 naming `messages`/`prompt` for a text too
        long for the context, before tokenising."""
        try:
            chars = body.check_prompt_chars(self.char_limit(base), base.context_length)
        except Exception:
            self.refused += 1
            raise
        self.calls += 1
        self.chars += chars
        self.running += 1
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="serve-tokenise")
            return await asyncio.get_running_loop().run_in_executor(self._pool, _encode, base, body)
        finally:
            self.running -= 1

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "chars": self.chars, "refused": self.refused, "running": self.running}

    def close(self) -> None:
        """Stops the threads; a later `encode` (the app started again, as tests do) starts new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _refuse_if_clearly_over(base: LoadedBase, text: str, where: str) -> None:
    """A 400 for `text` once its first pieces alone hold more tokens than the context; nothing for a text short
    enough to be tokenised whole, or whose pieces fit (the exact count then comes from tokenising it whole)."""
    piece = base.context_length * PROBE_CHARS_PER_TOKEN
    if len(text) <= piece:
        return
    counted = 0
    for cut, start in enumerate(range(0, len(text), piece)):
        counted += len(base.tokenizer(text[start:start + piece], add_special_tokens=False)["input_ids"])
        if counted > base.context_length + cut * PIECE_MARGIN_TOKENS:
            raise InvalidRequest(
                f"This model's maximum context length is {base.context_length} tokens. However, the {where} has "
                f"more than {counted - cut * PIECE_MARGIN_TOKENS} tokens. Please reduce the length of the {where}.",
                param=where, code="context_length_exceeded")


def _encode(base: LoadedBase, body: ChatCompletionRequest | CompletionRequest) -> Encoded:
    if isinstance(body, ChatCompletionRequest):
        _refuse_if_clearly_over(base, "".join(m["content"] for m in body.conversation()), "messages")
    else:
        for prompt in body.prompts:
            _refuse_if_clearly_over(base, prompt, "prompt")
    if isinstance(body, ChatCompletionRequest):
        return "chat", [encode_chat(base.tokenizer, base.template, body.conversation(), body.model)], []
    return "text", [encode_prompt(base.tokenizer, p) for p in body.prompts], body.prompts if body.echo else []
