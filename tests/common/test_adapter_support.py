"""One list of adapter rules for serve's engine and for vLLM: vLLM refuses whatever serve refuses, plus DoRA and
ranks above its --max-lora-rank."""

from __future__ import annotations

from typing import Any

import pytest

from common.adapter_support import serving_problems, vllm_compatibility

PLAIN = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}

REFUSED_BY_BOTH: list[dict[str, Any]] = [
    {"peft_type": "IA3"},
    {"modules_to_save": ["lm_head"]},
    {"bias": "lora_only"},
    {"lora_bias": True},
    {"arrow_config": {"top_k": 2}},
    {"trainable_token_indices": [5]},
]


def test_a_plain_lora_adapter_is_served_by_both() -> None:
    assert serving_problems(PLAIN) == []
    note = vllm_compatibility(PLAIN, max_lora_rank=16)
    assert note.compatible and note.problems == [] and note.lora_rank == 8


@pytest.mark.parametrize("change", REFUSED_BY_BOTH, ids=[next(iter(c)) for c in REFUSED_BY_BOTH])
def test_what_serve_refuses_vllm_refuses_too(change: dict[str, Any]) -> None:
    config = {**PLAIN, **change}
    mine = serving_problems(config)
    note = vllm_compatibility(config, max_lora_rank=16)
    assert mine and not note.compatible
    assert set(mine) <= set(note.problems), "vLLM's note lists every reason serve gives"


def test_dora_and_large_ranks_are_refused_by_vllm_only() -> None:
    dora = {**PLAIN, "use_dora": True}
    assert serving_problems(dora) == []
    assert [p for p in vllm_compatibility(dora, max_lora_rank=16).problems if "DoRA" in p]
    wide = {**PLAIN, "r": 8, "rank_pattern": {"q_proj": 64}}
    assert serving_problems(wide) == []
    note = vllm_compatibility(wide, max_lora_rank=32)
    assert note.lora_rank == 64 and not note.compatible and "--max-lora-rank 64" in note.problems[0]
    assert vllm_compatibility(wide, max_lora_rank=64).compatible, "the configured --max-lora-rank is the limit"
