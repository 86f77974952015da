"""The job spec the API validates and the worker trains from: defaults, limits with messages that say what to
change, impossible combinations refused, and the one function that resolves "auto"."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.schemas.job_spec import (
    JobSpec,
    auto_interval,
    dpo_beta,
    resolved_hyperparameters,
)


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"base_model": "tiny-llama", "training_file": "file-1", **fields})


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    return str(caught.value)


def test_defaults_fill_in_only_what_applies_and_a_stored_spec_validates_again() -> None:
    lora = spec()
    assert lora.method.lora is not None and lora.method.lora.r == 16 and lora.method.quantization is None
    assert lora.dpo is None and lora.publish.merged is False
    qlora = spec(method={"type": "qlora"}, stage="dpo")
    assert qlora.method.quantization is not None and qlora.method.quantization.quant_type == "nf4"
    assert qlora.dpo is not None and dpo_beta(qlora.dpo) == 0.1
    freeze = spec(method={"type": "freeze"}, stage="kto")
    assert freeze.method.lora is None and freeze.method.freeze is not None and freeze.kto is not None
    for stored in (lora, qlora, freeze):
        assert JobSpec.model_validate(stored.model_dump(mode="json")) == stored


@pytest.mark.parametrize(("fields", "says"), [
    ({"method": {"type": "lora", "lora": {"r": 512}}}, "`lora.r` must be ≤ 256; got 512"),
    ({"method": {"type": "full", "lora": {"r": 8}}}, "`lora` options apply to method.type lora, qlora or dora"),
    ({"method": {"type": "lora", "quantization": {"bits": 4}}}, "apply to method.type 'qlora' only"),
    ({"method": {"type": "lora", "freeze": {}}}, "apply to method.type 'freeze' only"),
    ({"method": {"type": "qlora", "lora": {"init": "pissa"}}}, "'pissa' needs the full-precision base"),
    ({"dpo": {"beta": 0.2}}, "`dpo` options apply to stage 'dpo', not 'sft'"),
    ({"stage": "dpo", "kto": {}}, "`kto` options apply to stage 'kto'"),
    ({"stage": "dpo", "hyperparameters": {"packing": True}}, "packing applies to stages sft and pt"),
    ({"stage": "rm", "train_on_inputs": True}, "train_on_inputs applies to stage sft only"),
    ({"resume_from": "ftckpt-1", "from_model": "ft:tiny-llama:x:ftjob-1"}, "not both"),
    ({"resume_from": "ckpt-1"}, "must be a checkpoint id (ftckpt-…)"),
    ({"from_model": "tiny-llama"}, "must be a fine-tuned model id (ft:…)"),
    ({"method": {"type": "full"}, "from_model": "ft:a:b:c"}, "from_model continues an adapter"),
    ({"method": {"type": "full"}, "publish": {"merged": True}}, "already publishes full weights"),
    ({"hyperparameters": {"early_stopping_patience": 2}}, "needs validation data"),
    ({"hyperparameters": {"batch_size": 10, "gradient_accumulation_steps": 4}}, "must be a multiple of"),
    ({"hyperparameters": {"n_epochs": 0}}, "between 1 and 100"),
    ({"dpo": {"beta": 0}, "stage": "dpo"}, "must be > 0"),
    ({"hyperparameters": {"optimizer": "sgd"}}, "adamw"),
    ({"stage": "ppo"}, "sft"),
])
def test_impossible_specs_are_refused_saying_what_to_change(fields: dict[str, Any], says: str) -> None:
    assert says in refusal(**fields)


def test_unknown_fields_are_refused_at_every_level() -> None:
    assert "extra" in refusal(method={"type": "lora", "lora": {"rank": 8}})
    assert "extra" in refusal(dpo={"loss": "simpo"}, stage="dpo")
    assert "extra" in refusal(publish={"merge": True})


def test_resolved_hyperparameters_turn_auto_into_numbers() -> None:
    resolved = resolved_hyperparameters(spec(), 8)
    assert (resolved["n_epochs"], resolved["batch_size"], resolved["learning_rate"]) == (3, 2, 2e-4)
    assert (resolved["micro_batch_size"], resolved["gradient_accumulation_steps"]) == (2, 1)
    assert resolved["total_steps"] == 12 and resolved["save_steps"] == 3 and resolved["eval_steps"] == 4
    assert resolved["packing"] is False and resolved["lr_scheduler"] == "cosine"
    for device_choice in ("gradient_checkpointing", "precision", "attention"):
        assert resolved[device_choice] == "auto"  # the worker decides
    assert resolved_hyperparameters(spec(stage="pt"), 8)["packing"] is True
    assert resolved_hyperparameters(spec(stage="dpo"), 8)["learning_rate"] == 5e-6
    assert resolved_hyperparameters(spec(method={"type": "full"}), 8)["learning_rate"] == 2e-5
    big = resolved_hyperparameters(spec(hyperparameters={"batch_size": 32, "gradient_accumulation_steps": 4}),
                                   100_000)
    assert (big["n_epochs"], big["micro_batch_size"], big["save_steps"]) == (1, 8, 500)
    none = resolved_hyperparameters(spec(hyperparameters={"save_steps": 0, "eval_steps": None}), 8)
    assert none["save_steps"] is None and none["eval_steps"] is None


def test_auto_interval() -> None:
    assert [auto_interval(n) for n in (1, 4, 10, 400, 10_000)] == [1, 1, 3, 100, 500]
