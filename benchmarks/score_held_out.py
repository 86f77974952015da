"""One scorer for every system's adapter: the held-out loss over the same labelled tokens.

Each system's own `Trainer.evaluate` scores its own labels, and they differ: LLaMA-Factory's ChatML slot
`{content}<|im_end|>\\n` also scores the newline after each `<|im_end|>` (an almost certain token, which lowers a
mean), TuneQueue and TRL stop at `<|im_end|>`. This script loads the base model once (float32 weights and compute,
one thread unless OMP_NUM_THREADS says) and, for each adapter folder given, the adapter with PEFT (`-` for the base
model alone: the score before training), and reports the
token-weighted mean cross-entropy over the assistant tokens of the held-out rows: assistant content plus its
`<|im_end|>`, rendered with the ChatML training template all three systems trained with
(common/text/named_templates.py), cut at the same cutoff.

    .venv/bin/python benchmarks/score_held_out.py MODEL EVAL_JSONL CUTOFF ADAPTER_DIR [ADAPTER_DIR ...]

prints one line `SCORE {"<adapter dir>": {"loss": …, "tokens": …}, …}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def labelled_rows(tokenizer: Any, eval_jsonl: Path, cutoff: int) -> list[tuple[list[int], list[int]]]:
    from common.text.chat import tokenize_chat
    from common.text.named_templates import CHATML_TEMPLATE

    rows = []
    for line in eval_jsonl.read_text(encoding="utf-8").splitlines():
        if line.strip():
            ids, labels = tokenize_chat(tokenizer, json.loads(line)["messages"], CHATML_TEMPLATE)
            rows.append((ids[:cutoff], labels[:cutoff]))
    return rows


def held_out_loss(model: Any, rows: list[tuple[list[int], list[int]]]) -> tuple[float, int]:
    """Sum of the next-token cross-entropy over every labelled position, divided by their count."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, labels in rows:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            targets = torch.tensor(labels[1:])
            total += F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    return total / count, count


def main() -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path, eval_jsonl, cutoff, adapters = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = labelled_rows(tokenizer, eval_jsonl, cutoff)
    scores: dict[str, dict[str, float]] = {}
    for adapter in adapters:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model = (base if adapter == "-" else PeftModel.from_pretrained(base, adapter)).eval()
        loss, tokens = held_out_loss(model, rows)
        scores[adapter] = {"loss": loss, "tokens": tokens}
    print("SCORE " + json.dumps(scores), flush=True)


if __name__ == "__main__":
    main()
