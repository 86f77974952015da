"""The job spec the API validates and the worker trains from: defaults, limits with messages that say what to
change, impossible combinations refused, and the one function that resolves "auto"."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from common.schemas.job_spec import (
    JobSpec,
    ResolvedJobSpec,
    dpo_beta,
    resolve_spec,
    step_intervals,
    stored_spec,
    training_spec,
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


def test_resolve_spec_decides_the_data_dependent_auto_values() -> None:
    hp = resolve_spec(spec(), 8).hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate, hp.packing) == (3, 2, 2e-4, False)
    assert (hp.micro_batch_size, hp.gradient_accumulation_steps) == (2, 1)
    assert hp.lr_scheduler == "cosine" and hp.warmup_ratio == 0.0
    for worker_choice in ("gradient_checkpointing", "precision", "attention", "eval_steps", "save_steps"):
        assert getattr(hp, worker_choice) == "auto"  # the training child decides
    assert resolve_spec(spec(stage="pt"), 8).hyperparameters.packing is True
    assert resolve_spec(spec(stage="dpo"), 8).hyperparameters.learning_rate == 5e-6
    assert resolve_spec(spec(method={"type": "full"}), 8).hyperparameters.learning_rate == 2e-5
    big = resolve_spec(spec(hyperparameters={"batch_size": 32, "gradient_accumulation_steps": 4}), 100_000)
    assert (big.hyperparameters.n_epochs, big.hyperparameters.micro_batch_size) == (1, 8)
    odd = resolve_spec(spec(hyperparameters={"gradient_accumulation_steps": 3}), 40).hyperparameters
    assert (odd.batch_size, odd.gradient_accumulation_steps) == (6, 3)  # auto 8, down to a multiple of 3


def test_an_unresolved_spec_is_not_a_training_spec() -> None:
    with pytest.raises(ValidationError) as caught:
        ResolvedJobSpec.model_validate(spec().model_dump(mode="json"))
    assert "hyperparameters.n_epochs" in str(caught.value) and "hyperparameters.packing" in str(caught.value)


def test_the_stored_spec_keeps_what_was_submitted_and_the_child_gets_the_resolved_values() -> None:
    submitted = spec(hyperparameters={"save_steps": 10})
    stored = stored_spec(submitted, 8)
    assert stored["hyperparameters"]["batch_size"] == "auto"  # worker/runner.py: may an OOM retry shrink it?
    assert JobSpec.model_validate({k: v for k, v in stored.items() if k != "resolved_hyperparameters"}) == submitted
    child = training_spec({**stored, "token_stats": {"rows": 8}})
    assert child.hyperparameters == resolve_spec(submitted, 8).hyperparameters
    assert child.hyperparameters.save_steps == 10
    retry = training_spec(stored, {"batch_size": 2, "gradient_accumulation_steps": 2})
    assert (retry.hyperparameters.micro_batch_size, retry.hyperparameters.gradient_accumulation_steps) == (1, 2)


def test_step_intervals() -> None:
    auto = spec().hyperparameters
    assert [step_intervals(auto, n, 5)[0] for n in (1, 4, 10, 400, 10_000)] == [1, 1, 3, 100, 500]
    assert step_intervals(auto, 12, 4) == (3, 4)  # eval: once per epoch
    assert step_intervals(auto, 3, 4) == (1, 3)  # a run shorter than an epoch evaluates at its end
    never = spec(hyperparameters={"save_steps": 0, "eval_steps": None}).hyperparameters
    assert step_intervals(never, 12, 4) == (None, None)
    fixed = spec(hyperparameters={"save_steps": 7, "eval_steps": 2}).hyperparameters
    assert step_intervals(fixed, 12, 4) == (7, 2)
