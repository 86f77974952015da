"""The held-out scores of a trained preference adapter, in an interpreter of their own:

    python -m tests.support.score_pairs <base model dir> <adapter dir> <per-token: 0|1>

prints `{"policy": [[chosen, rejected], …], "reference": […]}`: the log-probabilities of each held-out pair
(tests/support/quality.py `HELD_OUT_ROWS`) under the adapter and, with the adapter disabled, under the base model.

The preference tests score here rather than in the pytest process: under pytest-xdist one process runs many test
files, and a CI run saw the base model load there with its tied LM head missing (filled with garbage, every score
NaN), while the same adapter scored correctly in a fresh interpreter. The cause was an earlier file's two threads
building models at once (worker/model_build_lock.py says how, and tests/conftest.py now fails the file that does
it); a fresh interpreter still keeps the scores independent of whatever else the process ran, and loads the model
as the worker's training child and serve do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def score(base: Path, adapter: Path, *, per_token: bool) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(policy, reference) pair scores, computed by a child interpreter (this module's `main`)."""
    done = subprocess.run([sys.executable, "-m", "tests.support.score_pairs", str(base), str(adapter),
                           "1" if per_token else "0"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return [tuple(p) for p in out["policy"]], [tuple(p) for p in out["reference"]]  # type: ignore[misc]


def main(argv: list[str]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.support.quality import HELD_OUT_ROWS, pair_logprobs

    torch.set_num_threads(1)  # as the tests' own process: two test processes share two cores
    base_dir, adapter_dir, per_token = Path(argv[0]), Path(argv[1]), argv[2] == "1"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    policy_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    policy = pair_logprobs(policy_model, tokenizer, HELD_OUT_ROWS, per_token=per_token)
    with policy_model.disable_adapter():
        reference = pair_logprobs(policy_model, tokenizer, HELD_OUT_ROWS, per_token=per_token)
    print(json.dumps({"policy": policy, "reference": reference}))


if __name__ == "__main__":
    main(sys.argv[1:])
