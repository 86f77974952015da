"""The adapter bank against PEFT itself: every kind of adapter, alone and mixed in one batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.adapters import copy_adapter, random_adapter
from worker.serve.lora import LoraAdapter, LoraBank, UnsupportedAdapter, parse_adapter

pytestmark = pytest.mark.filterwarnings(
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model; not ours
    "ignore:.*is_gradient_checkpointing.*:FutureWarning")

KINDS = {
    "lora": {},
    "dora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "use_dora": True},
    "rslora": {"r": 16, "lora_alpha": 4, "target_modules": ["o_proj", "up_proj"], "use_rslora": True,
               "alpha_pattern": {"up_proj": 32}},
    "rank_pattern": {"r": 4, "target_modules": ["q_proj", "gate_proj"], "rank_pattern": {"gate_proj": 2}},
}


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-kinds")
    return {kind: random_adapter(tiny_model, root / kind, seed=i, **cfg) for i, (kind, cfg) in enumerate(KINDS.items())}


def _load(path: Path, model: torch.nn.Module, name: str) -> LoraAdapter:
    config = json.loads((path / "adapter_config.json").read_text())
    return parse_adapter(name, config, load_file(path / "adapter_model.safetensors"), model, dtype=torch.float32,
                         device="cpu")


def _slot(slot: int | None) -> int:
    assert slot is not None, "the bank had a free slot"
    return slot


def test_bank_matches_peft_alone_and_mixed(tiny_model: Path, adapter_dirs: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 1000, (1, 11), generator=torch.Generator().manual_seed(0))
    reference = {}
    with torch.no_grad():
        for kind, path in adapter_dirs.items():
            peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), path).eval()
            reference[kind] = peft_model(input_ids=ids).logits[0]
        model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        reference["base"] = model(input_ids=ids).logits[0]
        bank = LoraBank(model, capacity=4, dtype=torch.float32, device="cpu")
        slots = {"base": 0} | {kind: _slot(bank.load(_load(path, model, kind))) for kind, path in adapter_dirs.items()}
        for kind in slots:  # one adapter for the whole batch
            assert (reference[kind] - reference["base"]).abs().max() > 0.1 or kind == "base"
            bank.set_batch([slots[kind]])
            torch.testing.assert_close(model(input_ids=ids).logits[0], reference[kind], atol=1e-4, rtol=1e-4)
        order = ["dora", "lora", "base", "rslora", "rank_pattern", "dora"]  # every row its own adapter
        bank.set_batch([slots[k] for k in order])
        mixed = model(input_ids=ids.repeat(len(order), 1)).logits
        for row, kind in enumerate(order):
            torch.testing.assert_close(mixed[row], reference[kind], atol=1e-4, rtol=1e-4)


def test_lru_eviction_spares_adapters_in_use(tiny_model: Path, adapter_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    bank = LoraBank(model, capacity=2, dtype=torch.float32, device="cpu")
    a = _slot(bank.load(_load(adapter_dirs["lora"], model, "a")))
    b = _slot(bank.load(_load(adapter_dirs["dora"], model, "b")))
    assert {a, b} == {1, 2}
    bank.slot_of("a")  # a is now the most recently used
    c = bank.load(_load(adapter_dirs["rslora"], model, "c"))
    assert c == b and "b" not in bank and "a" in bank
    # Both slots pinned by running sequences: nothing can be evicted, the caller waits.
    assert bank.load(_load(adapter_dirs["lora"], model, "d"), pinned={a, c}) is None
    assert bank.evict("a") == a and "a" not in bank


def test_refuses_adapters_it_cannot_run(tiny_model: Path, adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    saves = copy_adapter(adapter_dirs["lora"], tmp_path / "saves", modules_to_save=["lm_head"])
    with pytest.raises(UnsupportedAdapter, match="modules_to_save"):
        _load(saves, model, "x")
    other_base = AutoModelForCausalLM.from_pretrained(tiny_model)
    other_base.model.layers = other_base.model.layers[:1]  # a base model without layer 1
    with pytest.raises(UnsupportedAdapter, match="another base model"):
        _load(adapter_dirs["lora"], other_base, "x")
