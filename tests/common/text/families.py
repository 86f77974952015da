"""Model families for the template tests: each family's special tokens and a tokenizer built offline around
them (a small BPE trained in-process), with a copy of the family's published chat template
(tests/fixtures/templates/<name>.jinja) as its own template."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.text.masks import IGNORE_INDEX

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "templates"

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
TWO_TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "two_turns": TWO_TURNS,
    "system_two_turns": [SYSTEM, *TWO_TURNS],
    "system_one_turn": [SYSTEM, *TWO_TURNS[:2]],
    "unicode": [{"role": "user", "content": "Ünïcödé ✓ 日本語?"}, {"role": "assistant", "content": "👍 sí, 日本語."}],
}


@dataclass(frozen=True)
class Family:
    name: str  # the fixture's stem and the built-in template's name
    specials: tuple[str, ...]
    eos: str
    eot: str  # what the template writes after an answer's content, trained with it
    bos: str | None = None
    lead: str = ""  # what the template writes before an answer's content, after the generation prompt
    rstrip: tuple[str, ...] = ()  # special tokens that swallow the whitespace after them (Phi-3's)
    metaspace: bool = False  # a SentencePiece-style tokenizer ("▁" for spaces) instead of byte-level BPE
    trim_offsets: bool = False  # a byte-level post-processor that trims offsets, as GPT-2-style ones do
    derivable: tuple[str, ...] = field(default=tuple(CONVERSATIONS))  # conversations its own template preserves

    def template(self) -> str:
        return (FIXTURES / f"{self.name}.jinja").read_text()

    def trained(self, messages: list[dict[str, Any]]) -> list[str]:
        """What each assistant turn should train, as text."""
        return [self.lead + m["content"] + self.eot for m in messages if m["role"] == "assistant"]


FAMILIES = [
    Family("chatml", ("<|im_start|>", "<|im_end|>"), eos="<|im_end|>", eot="<|im_end|>", trim_offsets=True),
    Family("qwen2.5", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), eos="<|im_end|>", eot="<|im_end|>"),
    Family("llama3", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), bos="<|begin_of_text|>", eos="<|eot_id|>", eot="<|eot_id|>"),
    # the system message moves to the last user message, so only one-turn conversations keep their prefixes
    Family("mistral", ("<s>", "</s>", "[INST]", "[/INST]"), bos="<s>", eos="</s>", eot="</s>", lead=" ",
           derivable=("two_turns", "system_one_turn", "unicode")),
    Family("gemma", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>", eos="<eos>",
           eot="<end_of_turn>", metaspace=True),
    # a conversation rendered without a generation prompt ends with eos: no prefix is kept
    Family("phi3", ("<s>", "<|endoftext|>"), bos="<s>", eos="<|endoftext|>", eot="<|end|>",
           rstrip=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), derivable=()),
    Family("zephyr", ("<s>", "</s>"), bos="<s>", eos="</s>", eot="</s>"),
]


def corpus() -> list[str]:
    texts = [m["content"] for messages in CONVERSATIONS.values() for m in messages]
    return [*texts, "system user assistant model", "<|user|> <|assistant|> <|system|>"] * 20


def build_tokenizer(family: Family, template: str | None = None) -> Any:
    """A fast tokenizer with the family's special tokens and `template` (default: the published copy)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    if family.metaspace:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(prepend_scheme="never"),
        ])
        backend.decoder = decoders.Metaspace(prepend_scheme="never")
        alphabet: list[str] = []
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(corpus(), trainer)
    if family.trim_offsets:
        backend.post_processor = processors.ByteLevel(trim_offsets=True)
    backend.add_special_tokens([AddedToken(t, special=True) for t in family.specials]
                               + [AddedToken(t, special=True, rstrip=True) for t in family.rstrip])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=family.bos, eos_token=family.eos,
                                   chat_template=template if template is not None else family.template(),
                                   name_or_path=f"{family.name}-test")


def trained_turns(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of trained tokens."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
