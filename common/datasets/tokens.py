"""Rows as token ids with the trained positions marked, the way the trainer sees them: for the file preview
(`GET /files/{id}/preview`) and the token statistics of the `validating_files` step.

Rendering and masking are the trainer's own functions (`common.text.templates.choose_template`,
`common.text.chat.tokenize_chat`); transformers is imported only when a tokenizer loads, so an upload never
loads it. Per stage, on rows shaped by `iter_stage_rows`:
- sft: `tokenize_chat` of the messages; the trained tokens are its assistant mask without `weight: 0` turns
  (all tokens with `train_on_inputs`).
- dpo, orpo, rm: two sequences, prompt + chosen and prompt + rejected (`encode_completion`); the trained tokens
  are the completion's assistant tokens after the rendered prompt.
- kto: prompt + completion, as one side of a pair.
- pt: the tokenizer's encoding of the text (its own special tokens) plus the eos token; every token is trained.
A row's length is its longest sequence: that is what `max_seq_length` cuts.

Bounded work: before a row is rendered, its texts are cut to what the first `max_tokens` (+ `TOKEN_MARGIN`)
tokens can use (`Encoder.bounded`), where `max_tokens` is the job's max_seq_length or `MEASURED_TOKENS`, whichever
is larger (so that the length statistics stay exact up to there; a preview uses `MEASURED_TOKENS`). Texts are read
in order, and once they hold that many tokens of their own (counted on a prefix, at most about twice the budget),
the rest of that text and every later text is cut to `STUB_CHARS` characters. The first `max_tokens` tokens, and
so the trained tokens within max_seq_length, are those of the whole row; the length of a cut row is a little over
`max_tokens` instead of its full length. Memory and time per row are then O(max_tokens), whatever the row's size
(the row-size limit, `max_row_bytes`, bounds the rest: tool schemas and tool-call arguments are not cut).
"""

from __future__ import annotations

import functools
import math
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.errors import NotReady
from common.model_cache import get_model_cache
from common.registry import is_s3, local_path
from common.settings import BaseModelEntry
from common.text.chat import encode_completion, tokenize_chat
from common.text.masks import IGNORE_INDEX, count_trained, labels_from_mask
from common.text.templates import choose_template

MODEL_UNAVAILABLE = "base_model_unavailable"
PAIR_STAGES = ("dpo", "orpo", "rm")
LONG_ROWS = "truncated"  # what the trainer does to a row longer than max_seq_length: keeps its first tokens
NO_TRAINED_TOKEN = "dropped"  # ... and to a row left without a trained token
USE_LOCK = threading.Lock()  # a fast tokenizer is not safe to share between threads mid-call
TOKEN_MARGIN = 64  # tokens kept past max_tokens: a cut in the middle of a word changes only the last few
STUB_CHARS = 16  # what is left of a text that lies wholly past the budget (a template may refuse an empty one)
MEASURED_TOKENS = 8192  # tokens of a row always measured (a preview's budget; a job's is max_seq_length if larger)


@dataclass
class EncodedSequence:
    """One token sequence of a row ("text"; "chosen"/"rejected"; "completion") and its labels (IGNORE_INDEX:
    no loss)."""

    name: str
    input_ids: list[int]
    labels: list[int]

    def trained(self, limit: int | None = None) -> int:
        """Tokens that carry loss among the first `limit` (all when None)."""
        return count_trained(self.labels if limit is None else self.labels[:limit])


def load_tokenizer(model_id: str, entry: BaseModelEntry) -> Any:
    """The base model's tokenizer (cached per process), or NotReady base_model_unavailable. An s3:// base model's
    tokenizer files (not its weights) are fetched into this host's model cache (common/model_cache.py)."""
    if is_s3(entry):
        with get_model_cache().use(entry.path, part="tokenizer", name=model_id) as cached:
            return load_tokenizer(model_id, entry.model_copy(update={"path": str(cached.path), "revision": None}))
    folder = local_path(entry)
    if folder is not None and not folder.is_dir():
        raise NotReady(
            f"base model {model_id!r} points at {folder}, which does not exist on this machine; build it "
            "(`make up` builds the demo models: `tunequeue dev setup`) or fix TUNEQUEUE_BASE_MODELS",
            param="base_model", code=MODEL_UNAVAILABLE,
        )
    stamp = folder.stat().st_mtime_ns if folder is not None else 0
    try:
        return _load(str(folder or entry.path), entry.revision, entry.trust_remote_code, stamp)
    except Exception as exc:  # transformers raises many kinds for a missing or broken tokenizer
        raise NotReady(
            f"the tokenizer of base model {model_id!r} could not be loaded ({type(exc).__name__}: {exc})",
            param="base_model", code=MODEL_UNAVAILABLE,
        ) from exc


@functools.lru_cache(maxsize=4)
def _load(path: str, revision: str | None, trust_remote_code: bool, stamp: int) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


@dataclass
class Encoder:
    """How one job (or one preview) turns rows of its stage into `EncodedSequence`s."""

    tokenizer: Any
    stage: str
    template: str | None  # the Jinja text; None for pt
    template_name: str | None  # a built-in name; None: the tokenizer's own template (or pt)
    train_on_inputs: bool = False
    model_id: str | None = None  # names the base model when a row is refused
    max_tokens: int = MEASURED_TOKENS  # tokens of a sequence that are measured; texts are cut past them

    @classmethod
    def for_model(
        cls,
        tokenizer: Any,
        *,
        model_id: str,
        stage: str,
        template: str | None = None,
        registry_template: str | None = None,
        train_on_inputs: bool = False,
        max_seq_length: int | None = None,
    ) -> Encoder:
        """Pick the chat template as the job spec describes it (`choose_template`: `template`, a built-in name,
        when given, else the one the base model is registered with, else the tokenizer's own). InvalidRequest
        invalid_template for an unknown `template`, UnusableTemplate when none fits. `max_seq_length`: the
        job's; texts are cut past what max(max_seq_length, MEASURED_TOKENS) tokens can use."""
        budget = max(max_seq_length or 0, MEASURED_TOKENS)
        if stage == "pt":
            return cls(tokenizer, stage, None, None, train_on_inputs, model_id, budget)
        chosen = choose_template(tokenizer, model_id=model_id, job_template=template,
                                 registry_template=registry_template)
        return cls(tokenizer, stage, chosen.text, chosen.name, train_on_inputs, model_id, budget)

    def encode(self, row: dict[str, Any]) -> list[EncodedSequence]:
        """The sequences of one `iter_stage_rows` row, its texts cut past `max_tokens` (`bounded`). Raises what
        the template raises for a row it refuses."""
        if self.stage == "pt":
            ids = list(self.tokenizer(self.bounded([row["text"]])[0])["input_ids"])
            eos = self.tokenizer.eos_token_id
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            return [EncodedSequence("text", ids, list(ids))]
        if self.stage == "sft":
            ids, labels = self._chat(self._bounded_messages(row["messages"]))
            return [EncodedSequence("text", ids, labels)]
        if self.stage == "kto":
            return [self._completion("completion", row["prompt"], row["completion"])]
        if self.stage in PAIR_STAGES:
            return [
                self._completion("chosen", row["prompt"], row["chosen"]),
                self._completion("rejected", row["prompt"], row["rejected"]),
            ]
        raise ValueError(f"unknown stage {self.stage!r}")

    def _chat(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
        assert self.template is not None
        return tokenize_chat(self.tokenizer, messages, self.template, train_on_inputs=self.train_on_inputs,
                             model=self.model_id)

    def _completion(
        self, name: str, prompt: list[dict[str, Any]], answer: list[dict[str, Any]]
    ) -> EncodedSequence:
        assert self.template is not None
        both = self._bounded_messages([*prompt, *answer])
        prompt, answer = both[: len(prompt)], both[len(prompt) :]
        ids, mask = encode_completion(self.tokenizer, prompt, answer, self.template, model=self.model_id)
        return EncodedSequence(name, ids, labels_from_mask(ids, mask))

    def _bounded_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        texts = [content if isinstance(content := m.get("content"), str) else "" for m in messages]
        cut = self.bounded(texts)
        if all(a is b for a, b in zip(texts, cut, strict=True)):
            return messages
        return [m if isinstance(m.get("content"), str) and new is old else {**m, "content": new}
                for m, old, new in zip(messages, texts, cut, strict=True)]

    def bounded(self, texts: list[str]) -> list[str]:
        """`texts` (a row's, in the order they are rendered) cut to what the first `max_tokens` + TOKEN_MARGIN
        tokens can use. A text is returned as the same object when it is not cut."""
        budget = self.max_tokens + TOKEN_MARGIN
        chars = 0  # characters so far: up to `budget` of them are kept uncounted (a few tokens each at most)
        spent = 0  # tokens counted: a lower bound of the tokens of the texts so far (uncounted texts add 0)
        out: list[str] = []
        for text in texts:
            if spent >= budget:
                out.append(text[:STUB_CHARS] if len(text) > STUB_CHARS else text)
                continue
            chars += len(text)
            if chars <= budget:
                out.append(text)
                continue
            kept, n = self._prefix(text, budget - spent)
            spent += n
            out.append(kept)
        return out

    def _prefix(self, text: str, need: int) -> tuple[str, int]:
        """The shortest prefix of `text` found (doubling its length) that holds at least `need` tokens of its
        own, or the whole text; and its token count. The last piece tokenised holds fewer than about 2 × `need`
        tokens, since the one before held fewer than `need`."""
        length = max(need, 1)
        while True:
            piece = text[:length]
            n = len(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
            if n >= need or length >= len(text):
                return (text if length >= len(text) else piece), n
            length *= 2

    def segments(self, sequence: EncodedSequence) -> list[dict[str, Any]]:
        """The sequence as runs of trained / untrained tokens: [{"text", "trained", "tokens"}]."""
        out: list[dict[str, Any]] = []
        ids, labels = sequence.input_ids, sequence.labels
        i = 0
        while i < len(ids):
            trained = labels[i] != IGNORE_INDEX
            j = i
            while j < len(ids) and (labels[j] != IGNORE_INDEX) == trained:
                j += 1
            text = self.tokenizer.decode(ids[i:j], skip_special_tokens=False)
            out.append({"text": text, "trained": trained, "tokens": j - i})
            i = j
        return out


@dataclass
class TokenStats:
    """Running totals over the rows of one file for one job; `to_dict` is what the job records."""

    max_seq_length: int
    lengths: array[int] = field(default_factory=lambda: array("L"))
    total_tokens: int = 0
    trained_tokens: int = 0
    rows_over_max: int = 0
    rows_without_trained: int = 0
    labels: dict[str, int] = field(default_factory=dict)

    def add(self, sequences: Iterable[EncodedSequence], label: bool | None = None) -> None:
        seqs = list(sequences)
        length = max(len(s.input_ids) for s in seqs)
        self.lengths.append(length)
        self.total_tokens += sum(len(s.input_ids) for s in seqs)
        if length > self.max_seq_length:
            self.rows_over_max += 1
        trained = [s.trained(self.max_seq_length) for s in seqs]
        if min(trained) == 0:
            self.rows_without_trained += 1
        else:
            self.trained_tokens += sum(trained)
        if label is not None:
            key = "desirable" if label else "undesirable"
            self.labels[key] = self.labels.get(key, 0) + 1

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def rows_kept(self) -> int:
        return self.rows - self.rows_without_trained

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.lengths)
        n = len(ordered)
        out: dict[str, Any] = {
            "rows": n,
            "rows_kept": self.rows_kept,
            "total_tokens": self.total_tokens,
            "trained_tokens": self.trained_tokens,
            "mean_length": round(sum(ordered) / n, 1) if n else 0.0,
            "p95_length": ordered[math.ceil(0.95 * n) - 1] if n else 0,
            "max_length": ordered[-1] if n else 0,
            "max_seq_length": self.max_seq_length,
            "rows_over_max_seq_length": self.rows_over_max,
            "over_max_seq_length": LONG_ROWS,
            "rows_without_trained_tokens": self.rows_without_trained,
            "without_trained_tokens": NO_TRAINED_TOKEN,
        }
        if self.labels:
            out["labels"] = {
                "desirable": self.labels.get("desirable", 0),
                "undesirable": self.labels.get("undesirable", 0),
            }
        return out


def template_label(encoder: Encoder) -> str | None:
    """How a response names the template used: the built-in name, "tokenizer" for the model's own, None for pt."""
    if encoder.template is None:
        return None
    return encoder.template_name or "tokenizer"
