"""Which adapters can be served, read from their adapter_config.json: by serve's own batched LoRA engine
(worker/serve/lora.py) and by vLLM (worker/serve/vllm.py, and the model object's `vllm` note). One list of
rules: vLLM refuses what serve refuses, and DoRA and ranks above its --max-lora-rank besides (which serve's engine
runs in its place under the vLLM backend)."""

from __future__ import annotations

from typing import Any

from common.schemas.models import VllmCompatibility

# PEFT config keys of LoRA variants whose forward is not `W x + s·B A x` (or DoRA): no server here runs them.
_VARIANTS = {"alora_invocation_tokens": "aLoRA", "arrow_config": "Arrow routing",
             "layer_replication": "layer replication", "trainable_token_indices": "trainable tokens",
             "target_parameters": "target_parameters", "use_qalora": "QA-LoRA", "use_bdlora": "BD-LoRA",
             "kasa_config": "KaSA", "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA",
             "lora_bias": "LoRA biases", "fan_in_fan_out": "fan_in_fan_out layers"}


def serving_problems(config: dict[str, Any]) -> list[str]:
    """Why serve's engine cannot run this adapter in a mixed LoRA batch (empty: it can)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; only LoRA adapters are served")
    modules = config.get("modules_to_save")
    if modules:
        problems.append(f"modules_to_save {modules} replaces whole modules, which LoRA serving does not load: train "
                        "without method.lora.modules_to_save")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r} trains the base model's biases, which LoRA serving does not load: "
                        "train with bias='none'")
    problems += [f"{label} ({key}) is not supported" for key, label in _VARIANTS.items() if config.get(key)]
    return problems


def lora_rank(config: dict[str, Any]) -> int | None:
    """The largest rank of the adapter's layers (`r` and any per-module `rank_pattern`)."""
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks) or None


def vllm_compatibility(config: dict[str, Any], max_lora_rank: int) -> VllmCompatibility:
    """Whether vLLM started with `--max-lora-rank max_lora_rank` can load this adapter, and if not, why."""
    problems = serving_problems(config)
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM's LoRA kernels")
    rank = lora_rank(config)
    if rank is not None and rank > max_lora_rank:
        problems.append(f"LoRA rank {rank} is above --max-lora-rank {max_lora_rank}: start vLLM with "
                        f"--max-lora-rank {rank} or more, or train with lora.r ≤ {max_lora_rank}")
    modules = config.get("modules_to_save") or None
    return VllmCompatibility(compatible=not problems, lora_rank=rank, max_lora_rank=max_lora_rank,
                             modules_to_save=list(modules) if modules else None, problems=problems)
