"""The quality tests' tasks (tests/quality/, docs/quality.md): rows that a real instruct model cannot answer before
fine-tuning and can after, split into training rows and held-out rows that share no item, and the scores read
from a model.

The task: an order in words becomes one line in a fixed shape, e.g. "Can I get 3 lemons?" → `item: lemons; qty:
3`. The base model answers in prose (an apology, mostly); a LoRA job on the training rows must learn the
rule, not the rows: every held-out prompt names an item that no training row has. (The item follows a space, so
it is the same token as in the prompt: in JSON, `"lemons` splits into pieces that a 135M model misspells.)
The preference stages rank the same answer shapes: the order line (chosen) over a chatty reply (rejected)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from common.settings import REAL_MODEL_ID
from tests.support.training import events_of, start_child, write_job_dir

# The seeds a run measures: each seeds the training rows' draw and the job. TUNEQUEUE_QUALITY_SEEDS=0,1,2 gives
# the three runs per stage that docs/quality.md reports.
SEEDS = [int(s) for s in os.environ.get("TUNEQUEUE_QUALITY_SEEDS", "0").split(",")]
HELD_OUT_SEED = 101  # the held-out rows are the same for every seed

SYSTEM = "You are the order desk. Reply with the order line only."

TRAIN_ITEMS = [
    "apples", "bananas", "carrots", "candles", "pencils", "towels", "batteries", "lemons", "onions", "spoons",
    "plates", "buckets", "ribbons", "stamps", "blankets", "mugs", "peaches", "hammers", "nails", "bottles",
    "cookies", "tomatoes", "envelopes", "markers", "pillows", "socks", "gloves", "brushes", "jars", "cables",
]
HELD_OUT_ITEMS = [
    "oranges", "scissors", "notebooks", "potatoes", "cups", "lamps", "keys", "melons", "forks", "boxes",
    "shirts", "chairs", "pears", "napkins", "bowls", "hats", "bricks", "sponges", "folders", "grapes",
]
PHRASINGS = [
    "Order: {qty} {item}",
    "Can I get {qty} {item}?",
    "Please send {qty} {item}.",
    "I would like {qty} {item}, thanks.",
]


def order_line(item: str, qty: int) -> str:
    """The one right answer."""
    return f"item: {item}; qty: {qty}"


def chatty_reply(item: str, qty: int) -> str:
    """The answer the preference stages reject: right content, wrong shape."""
    return f"Sure! I have added {qty} {item} to your order."


def _orders(items: list[str], n: int, seed: int) -> list[tuple[str, str, int]]:
    """n (user prompt, item, qty) cycling through `items` and the phrasings, quantities 2–9 (seeded)."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        item, qty = items[i % len(items)], rng.randint(2, 9)
        orders.append((PHRASINGS[rng.randrange(len(PHRASINGS))].format(qty=qty, item=item), item, qty))
    return orders


def prompt(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def sft_rows(n: int, *, held_out: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows: the order and its order line; `held_out` draws the items no training row has."""
    items = HELD_OUT_ITEMS if held_out else TRAIN_ITEMS
    return [{"messages": [*prompt(user), {"role": "assistant", "content": order_line(item, qty)}]}
            for user, item, qty in _orders(items, n, seed)]


def preference_rows(n: int, *, held_out: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs: the order line chosen, the chatty one rejected."""
    items = HELD_OUT_ITEMS if held_out else TRAIN_ITEMS
    return [{"prompt": prompt(user), "chosen": [{"role": "assistant", "content": order_line(item, qty)}],
             "rejected": [{"role": "assistant", "content": chatty_reply(item, qty)}]}
            for user, item, qty in _orders(items, n, seed)]


# The held-out pairs every preference test scores (tests/quality/test_preferences.py, tests/support/score_pairs.py).
HELD_OUT_ROWS = preference_rows(16, held_out=True, seed=HELD_OUT_SEED)


def kto_rows(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Unpaired feedback from the training pairs: even rows the order line (desirable), odd rows the chatty one."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen"] if i % 2 == 0 else pair["rejected"],
             "label": i % 2 == 0}
            for i, pair in enumerate(preference_rows(n, seed=seed))]


def exact_match(answers: list[str], rows: list[dict[str, Any]]) -> float:
    """The fraction of answers equal (surrounding whitespace aside) to the rows' assistant answers."""
    expected = [row["messages"][-1]["content"] for row in rows]
    assert len(answers) == len(expected)
    return sum(a.strip() == e for a, e in zip(answers, expected, strict=True)) / len(expected)


def _answer_text(messages: list[dict[str, str]]) -> str:
    return "".join(m["content"] for m in messages)


def answer_logprob(model: Any, tokenizer: Any, prompt_messages: list[dict[str, str]], answer: str, *,
                   per_token: bool = False) -> float:
    """log π(answer | prompt): the summed log-probabilities of the answer's tokens and the end-of-turn token
    after the prompt rendered with the tokenizer's chat template (what the stages train and score); their mean
    with `per_token` (ORPO's odds)."""
    import torch

    prompt_text = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt_text + answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(prompt_ids)] == prompt_ids, "the answer changed the prompt's tokens"
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    answer_logps = logps[len(prompt_ids) - 1:]
    return float(answer_logps.mean() if per_token else answer_logps.sum())


def _accuracy(margins: list[float]) -> float:
    """How often the chosen answer wins; a tie counts half (chance, for a policy that equals its reference)."""
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)


def pair_logprobs(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *,
                  per_token: bool = False) -> list[tuple[float, float]]:
    """(log π(chosen), log π(rejected)) per preference row."""
    def logprob(row: dict[str, Any], side: str) -> float:
        return answer_logprob(model, tokenizer, row["prompt"], _answer_text(row[side]), per_token=per_token)

    return [(logprob(row, "chosen"), logprob(row, "rejected")) for row in rows]


def logprob_accuracy(scores: list[tuple[float, float]]) -> float:
    """How often log π(chosen) > log π(rejected): the policy itself prefers the chosen answer."""
    return _accuracy([chosen - rejected for chosen, rejected in scores])


def implicit_reward_accuracy(policy: list[tuple[float, float]], reference: list[tuple[float, float]]) -> float:
    """How often the implicit reward r = log π − log π_ref (DPO, KTO) of the chosen answer is above the rejected's."""
    return _accuracy([(pc - rc) - (pr - rr) for (pc, pr), (rc, rr) in zip(policy, reference, strict=True)])


def reward_margins(scorer: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[float]:
    """A reward model's score of the chosen conversation minus the rejected one's, per row (one conversation at
    a time, so the score is read at the last token without padding)."""
    import torch

    def score(row: dict[str, Any], answer: str) -> float:
        messages = [*row["prompt"], {"role": "assistant", "content": answer}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            return float(scorer(**inputs).logits[0, 0])

    return [score(row, _answer_text(row["chosen"])) - score(row, _answer_text(row["rejected"])) for row in rows]


def reward_accuracy(margins: list[float]) -> float:
    """How often a reward model scores the chosen conversation above the rejected one."""
    return _accuracy(margins)


def train_stage(job_dir: Path, base: Path, rows: list[dict[str, Any]], stage: str, seed: int,
                **hyperparameters: Any) -> Path:
    """A LoRA job of `stage` on the real model, run as the worker runs it (`python -m worker.train`); the
    published adapter's folder. The model is registered as it comes (its own chat template)."""
    write_job_dir(job_dir, base, rows, stage=stage, seed=seed, lora={"r": 8, "alpha": 32, "dropout": 0.0},
                  job_extra={"base_model": {"id": REAL_MODEL_ID, "path": str(base), "revision": None,
                                            "trust_remote_code": False, "template": None}},
                  **hyperparameters)
    started = time.monotonic()
    child = start_child(job_dir)
    stdout, _ = child.communicate(timeout=900)
    events = events_of(stdout)
    assert child.returncode == 0, [e for e in events if e["type"] in ("error", "log")]
    losses = [round(e["loss"], 3) for e in events if e["type"] == "progress" and e.get("loss") is not None]
    print(f"\n{stage} seed {seed}: trained in {time.monotonic() - started:.1f}s, losses {losses}")
    result = next(e for e in events if e["type"] == "result")
    return Path(result["adapter_dir"])
