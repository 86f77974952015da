"""The native job spec (docs/job-spec.md) and its one hyperparameter model. Unknown fields are an error at every
level.

`POST /jobs` validates a `JobSpec`, then `resolve_spec()` turns it into a `ResolvedJobSpec` once: every default is
filled in and the "auto" values that the submitted rows decide (n_epochs, batch_size,
gradient_accumulation_steps, learning_rate, packing) become values. The jobs table stores the resolved
hyperparameters beside the submitted spec (`stored_spec`, called by common/services/jobs.py) and the job object
shows them (common/schemas/jobs.py); the worker parent hands the training child the spec with them in place
(`training_spec`, called by worker/prepare.py), and the child parses that as a `ResolvedJobSpec`
(worker/train/config.py).

The values only the worker can decide stay "auto" until the child decides them and reports what it picked in its
first event: precision, attention and gradient_checkpointing (from the device, worker/train/runtime.py), and
eval_steps and save_steps (from the number of training sequences the stage really prepared — packing, a
validation split and skipped rows change it; worker/train/run.py `plan_steps`).

Stage- and method-specific option blocks (`method.lora`, `method.quantization`, `method.freeze`, `dpo`, `orpo`,
`kto`) are `null` unless they apply; the validator fills in their defaults where they apply, so a stored spec
validates again unchanged, and refuses them where they do not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.schemas.integrations import MAX_INTEGRATIONS, Integration, check_unique
from common.schemas.strings import Metadata, Name

Stage = Literal["sft", "dpo", "orpo", "kto", "pt", "rm"]
MethodType = Literal["lora", "qlora", "dora", "full", "freeze"]
Auto = Literal["auto"]

ADAPTER_METHODS: tuple[str, ...] = ("lora", "qlora", "dora")
PAIR_STAGES: tuple[str, ...] = ("dpo", "orpo", "rm")
MAX_LORA_RANK = 256
# hyperparameters.eval_samples: at most this many generated answers per evaluation (docs/progress.md, "Generated
# samples"); each is at most as long as its reference and at most TUNEQUEUE_EVAL_SAMPLE_MAX_TOKENS tokens
MAX_EVAL_SAMPLES = 16
EVAL_SAMPLES_PARAM = "hyperparameters.eval_samples"
# resources.devices: at most the GPUs of one host (torchrun --standalone runs the ranks of a job on one worker host;
# the largest single hosts carry 16)
MAX_DEVICES = 16
DEVICES_PARAM = "resources.devices"

_SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


# `priority` as the jobs table stores it (common/scheduling/policy.py orders by it)
PRIORITIES = {"low": 0, "normal": 1, "high": 2}
PRIORITY_NAMES = {rank: name for name, rank in PRIORITIES.items()}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(StrictModel):
    r: int = Field(default=16, ge=1, description="LoRA rank (1-256). Higher fits more, costs more memory.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator; the update is scaled by alpha/r "
                       "(alpha/sqrt(r) with use_rslora).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Name | list[Name] = Field(
        default="all-linear", description="'all-linear' or a list of module names such as ['q_proj', 'v_proj']."
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilised LoRA: scale by alpha/sqrt(r).")
    init: Literal["default", "gaussian", "pissa"] = Field(
        default="default", description="Adapter initialisation: 'default' (B = 0), 'gaussian', or 'pissa' "
        "(principal singular vectors of each weight; faster convergence). A PiSSA adapter is published converted "
        "to a plain LoRA of rank 2r that applies to the unmodified base model.")
    loraplus_lr_ratio: float | None = Field(
        default=None, ge=1.0, le=64.0, description="LoRA+: the B matrices learn this many times faster than A "
        "(the paper suggests 16). None: one learning rate.")
    modules_to_save: list[Name] | None = Field(
        default=None, description="Modules trained in full and saved beside the adapter, e.g. ['lm_head']. "
        "Warning: vLLM and most serving engines refuse adapters that carry them.")

    @field_validator("r")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value > MAX_LORA_RANK:
            raise ValueError(f"`lora.r` must be ≤ {MAX_LORA_RANK}; got {value}. Use method.type 'full' to train "
                             "every weight instead")
        return value

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError("must be 'all-linear' or a list of module names, e.g. ['q_proj', 'v_proj']")
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return value


class QuantizationOptions(StrictModel):
    bits: Literal[4, 8] = Field(default=4, description="Load the frozen base in 4-bit or 8-bit (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type; ignored for 8-bit.")
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too (4-bit only).")


class FreezeOptions(StrictModel):
    trainable_layers: int = Field(default=2, ge=1, le=1000,
                                  description="Train the last N decoder layers; everything else stays frozen.")
    trainable_modules: list[Name] | None = Field(
        default=None, description="Within those layers, train only parameters whose name contains one of these, "
        "e.g. ['mlp'] or ['self_attn.o_proj']. None: the whole layer.")
    extra_modules: list[Name] = Field(
        default_factory=list, description="Modules outside the decoder layers to train too, e.g. ['lm_head', "
        "'norm', 'embed_tokens'].")


class Method(StrictModel):
    type: MethodType = Field(default="lora", description="lora, qlora, dora, full or freeze.")
    lora: LoraOptions | None = Field(default=None, description="Adapter options for lora/qlora/dora "
                                     "(defaults filled in for those methods).")
    quantization: QuantizationOptions | None = Field(default=None, description="Base-model quantisation; qlora "
                                                     "only (defaults filled in for it).")
    freeze: FreezeOptions | None = Field(default=None, description="Which weights train; freeze only "
                                         "(defaults filled in for it).")

    @model_validator(mode="after")
    def _options_match_type(self) -> Method:
        adapter = self.type in ADAPTER_METHODS
        if self.lora is not None and not adapter:
            raise ValueError(f"`lora` options apply to method.type lora, qlora or dora, not {self.type!r}; "
                             "remove `method.lora` or change the type")
        if self.quantization is not None and self.type != "qlora":
            raise ValueError(f"`quantization` options apply to method.type 'qlora' only; got {self.type!r}. "
                             "Remove `method.quantization` or use qlora")
        if self.freeze is not None and self.type != "freeze":
            raise ValueError(f"`freeze` options apply to method.type 'freeze' only; got {self.type!r}")
        if adapter and self.lora is None:
            self.lora = LoraOptions()
        if self.type == "qlora" and self.quantization is None:
            self.quantization = QuantizationOptions()
        if self.type == "freeze" and self.freeze is None:
            self.freeze = FreezeOptions()
        if self.type == "qlora" and self.lora is not None and self.lora.init == "pissa":
            raise ValueError("`lora.init` 'pissa' needs the full-precision base weights; use method.type 'lora' "
                             "with PiSSA, or init 'default' with qlora")
        return self


class DpoOptions(StrictModel):
    loss_type: Literal["sigmoid", "ipo", "simpo", "hinge"] = Field(
        default="sigmoid", description="sigmoid: DPO; ipo: IPO (squared, length-normalised); simpo: SimPO "
        "(reference-free, length-normalised, margin gamma); hinge: SLiC.")
    beta: float | Auto = Field(default="auto", description="Strength of the KL constraint (DPO/IPO/hinge) or "
                               "the reward scale (SimPO). auto: 0.1, or 2.0 for simpo.")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5,
                                   description="Conservative DPO: the assumed fraction of flipped labels (sigmoid).")
    simpo_gamma: float = Field(default=0.5, ge=0.0, le=10.0, description="SimPO target reward margin.")
    sft_weight: float = Field(default=0.0, ge=0.0, le=10.0,
                              description="Add this times the NLL of the chosen answer (RPO / LLaMA-Factory's ftx).")

    @field_validator("beta")
    @classmethod
    def _beta(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0 < value <= 100:
            raise ValueError(f"must be > 0 and ≤ 100 (or 'auto'); got {value}")
        return value


class OrpoOptions(StrictModel):
    beta: float = Field(default=0.1, gt=0.0, le=10.0,
                        description="Weight λ of the odds-ratio term added to the NLL of the chosen answer.")


class KtoOptions(StrictModel):
    beta: float = Field(default=0.1, gt=0.0, le=100.0, description="Strength of the KL constraint.")
    desirable_weight: float = Field(default=1.0, gt=0.0, le=100.0, description="Loss weight of desirable rows.")
    undesirable_weight: float = Field(default=1.0, gt=0.0, le=100.0,
                                      description="Loss weight of undesirable rows.")


class Publish(StrictModel):
    merged: bool = Field(default=False, description="Also publish the base model with the adapter folded in "
                         "(safetensors), for engines that take no adapters. Adapter methods only.")


class Resources(StrictModel):
    devices: int = Field(
        default=1, description=f"Devices the job trains on at once (1-{MAX_DEVICES}), on one worker: its GPUs, or "
        "on a CPU worker the devices TUNEQUEUE_WORKER_DEVICES declares. Above 1 the ranks run under torchrun (DDP for "
        "adapter methods, FSDP for full and freeze on CUDA); hyperparameters.batch_size stays the global batch and "
        "must be a multiple of devices.")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number of devices from 1 to {MAX_DEVICES}, e.g. 2; got {value!r}")
        if not 1 <= value <= MAX_DEVICES:
            raise ValueError(f"must be between 1 and {MAX_DEVICES} (the devices of one worker host); got {value}. "
                             "Use 1 for a single device")
        return value


def per_device_batches(hp: ResolvedHyperparameters, devices: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) on each of `devices` ranks, so that micro × accumulation × devices =
    `batch_size`, the global batch (docs/job-spec.md, resources): the accumulation is divided by the devices where
    it divides, else each device takes batch_size / devices rows per step in the largest micro-batch (up to the
    spec's) that divides them. `batch_size` is a multiple of `devices` (JobSpec refuses it otherwise)."""
    micro, accumulation = hp.micro_batch_size, hp.gradient_accumulation_steps
    if devices <= 1:
        return micro, accumulation
    if accumulation % devices == 0:
        return micro, accumulation // devices
    rows = max(1, hp.batch_size // devices)
    micro = max(m for m in range(1, min(micro, rows) + 1) if rows % m == 0)
    return micro, rows // micro


def _bounded_int(name: str, value: Any, low: int, high: int) -> Any:
    if isinstance(value, int) and not low <= value <= high:
        raise ValueError(f"must be between {low} and {high} (or 'auto'); got {value}")
    return value


class Hyperparameters(StrictModel):
    n_epochs: int | Auto = Field(default="auto", description="Passes over the data; auto: 3, 1 for 10,000+ rows.")
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000,
                                  description="Stop after this many optimizer steps; overrides n_epochs.")
    batch_size: int | Auto = Field(default="auto", description="Examples per optimizer step; auto: rows/4, "
                                   "between 1 and 8.")
    gradient_accumulation_steps: int | Auto = Field(
        default="auto", description="Micro-batches per optimizer step; batch_size must be a multiple. auto: 1.")
    learning_rate: float | Auto = Field(default="auto", description="Peak learning rate; auto depends on stage "
                                        "and method (docs/job-spec.md).")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warmup: cosine or linear to 0, or constant.")
    warmup_ratio: float = Field(default=0.0, ge=0.0, le=0.5,
                                description="Fraction of the steps that ramp the learning rate up from 0.")
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1000.0, description="Gradient clipping; 0: none.")
    max_seq_length: int = Field(default=2048, ge=16, le=131072, description="Longer rows are truncated.")
    logging_steps: int = Field(default=1, ge=1, description="Report progress every this many steps.")
    packing: bool | Auto = Field(default="auto", description="Pack short rows into max_seq_length windows, no "
                                 "cross-attention (sft and pt). auto: on for pt, off for sft.")
    gradient_checkpointing: bool | Auto = Field(
        default="auto", description="Recompute activations in backward to save memory. auto: on only when the "
        "estimated activations would not fit the GPU.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="Weights and compute dtypes; trained weights are always fp32. auto: on CUDA, "
        "bf16 (fp16 without bf16 support) autocast and frozen base weights; on a CPU, no autocast and frozen base "
        "weights of lora/dora in bf16 where the CPU runs bf16 fast, else fp32 (docs/job-spec.md, Precision).")
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        default="auto", description="Attention implementation. auto: flash_attention_2 when installed on a GPU "
        "worker, else sdpa.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        default="adamw", description="adamw (torch, fused on GPU), or bitsandbytes' 8-bit and paged variants "
        "(GPU only).")
    neftune_noise_alpha: float | None = Field(default=None, gt=0.0, le=100.0,
                                              description="NEFTune: noise on the input embeddings while training.")
    eval_steps: int | Auto | None = Field(default="auto", description="Evaluate on the validation data every "
                                          "this many steps. auto: once per epoch and at the end; null: never.")
    save_steps: int | Auto | None = Field(default="auto", description="Save a checkpoint every this many steps. "
                                          "auto: about 4 per run, at least every 500 steps; 0 or null: none.")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, le=100, description="Stop when the validation loss did not improve for this many "
        "evaluations. Needs validation data.")
    eval_samples: int = Field(
        default=0, ge=0, le=MAX_EVAL_SAMPLES, description="At each evaluation, generate greedy answers for the "
        "first N validation prompts and record them as an `eval_samples` job event next to the reference answers, "
        f"so you can watch the model learn. 0: off; at most {MAX_EVAL_SAMPLES}. Needs validation data "
        "(validation_file or validation_split) and evaluations (eval_steps not null); not for stage rm, which "
        "scores answers instead of writing them. "
        "Each answer is at most as long as its reference (capped at 128 tokens by default); the generation time "
        "counts in the job's run time.")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, value: int | str) -> int | str:
        return _bounded_int("n_epochs", value, 1, 100)

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int | str) -> int | str:
        return _bounded_int("batch_size", value, 1, 1024)

    @field_validator("gradient_accumulation_steps")
    @classmethod
    def _accumulation(cls, value: int | str) -> int | str:
        return _bounded_int("gradient_accumulation_steps", value, 1, 1024)

    @field_validator("eval_steps", "save_steps")
    @classmethod
    def _interval(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 0 <= value <= 1_000_000:
            raise ValueError(f"must be between 0 and 1000000, 'auto' or null; got {value}")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0 < value <= 1:
            raise ValueError(f"must be > 0 and ≤ 1 (or 'auto'); got {value}")
        return value

    @model_validator(mode="after")
    def _accumulation_divides(self) -> Hyperparameters:
        batch, accumulation = self.batch_size, self.gradient_accumulation_steps
        if isinstance(batch, int) and isinstance(accumulation, int) and batch % accumulation:
            raise ValueError(f"batch_size ({batch}) must be a multiple of gradient_accumulation_steps "
                             f"({accumulation}); e.g. batch_size {accumulation * max(1, batch // accumulation)}")
        return self


class JobSpec(StrictModel):
    base_model: Name = Field(description="A registered base model id; GET /v1/models lists them.")
    training_file: Name = Field(description="A processed file id (file-…).")
    validation_file: Name | None = Field(default=None, description="Optional processed file id for evaluation.")
    validation_split: float | None = Field(default=None, gt=0, lt=0.5,
                                           description="Hold out this fraction of training_file for evaluation.")
    template: Name | None = Field(default=None, description="A built-in chat template name (chatml, qwen2.5, smollm2, "
                                 "llama3, mistral, gemma, phi3, zephyr; docs/datasets.md). None: the one the base "
                                 "model is registered with, else the tokenizer's own.")
    train_on_inputs: bool = Field(default=False, description="Also train on system/user tokens (default: "
                                  "assistant tokens only). sft only.")
    stage: Stage = Field(default="sft", description="sft, dpo, orpo, kto, pt or rm.")
    method: Method = Field(default_factory=Method)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    dpo: DpoOptions | None = Field(default=None, description="stage dpo only (defaults filled in for it).")
    orpo: OrpoOptions | None = Field(default=None, description="stage orpo only (defaults filled in for it).")
    kto: KtoOptions | None = Field(default=None, description="stage kto only (defaults filled in for it).")
    resume_from: Name | None = Field(default=None, description="A checkpoint id (ftckpt-…) to continue from: "
                                    "weights, optimizer, scheduler and step.")
    from_model: Name | None = Field(default=None, description="A fine-tuned model id (ft:…) of the same base "
                                   "model whose adapter this job continues to train.")
    publish: Publish = Field(default_factory=Publish, description="What is published besides the adapter.")
    resources: Resources = Field(default_factory=Resources, description="What the job trains on: "
                                 "{'devices': N} (default 1).")
    suffix: Name | None = Field(default=None, description="Up to 40 of [a-z0-9-]; part of the model name.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seeds weights init, shuffling and dropout.")
    priority: Literal["low", "normal", "high"] = Field(
        default="normal", description="Orders the jobs of one organization (docs/scheduling.md); never one "
        "organization's against another's. high takes a tenant-admin key.")
    metadata: Metadata | None = Field(default=None, description="Up to 16 string pairs for your own use: keys of "
                                      "at most 64 characters, values of at most 512.")
    integrations: list[Integration] | None = Field(
        default=None, max_length=MAX_INTEGRATIONS, description="Experiment trackers the training reports to: "
        "{'type': 'wandb', 'wandb': {'project', 'name', 'entity', 'tags'}}, {'type': 'mlflow', 'mlflow': "
        "{'tracking_uri', 'experiment', 'run_name'}}, {'type': 'tensorboard', 'tensorboard': {}} "
        "(docs/trackers.md). Credentials are the tenant's secrets (PUT /secrets/{name}).")

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list[Any] | None) -> list[Any] | None:
        return check_unique(value)

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not _SUFFIX_RE.match(value):
            raise ValueError(
                f"must be 1-40 characters of a-z, 0-9 and '-', starting with a letter or digit; got {value!r}")
        return value

    @field_validator("resume_from")
    @classmethod
    def _resume_from(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("ftckpt-"):
            raise ValueError(f"must be a checkpoint id (ftckpt-…) from GET /jobs/{{id}}/checkpoints; got {value!r}")
        return value

    @field_validator("from_model")
    @classmethod
    def _from_model(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("ft:"):
            raise ValueError(f"must be a fine-tuned model id (ft:…) from GET /v1/models; got {value!r}")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> JobSpec:
        if self.validation_file and self.validation_split:
            raise ValueError("give validation_file or validation_split, not both")
        for stage in ("dpo", "orpo", "kto"):
            if getattr(self, stage) is not None and self.stage != stage:
                raise ValueError(f"`{stage}` options apply to stage {stage!r}, not {self.stage!r}; remove them or "
                                 f"set stage to {stage!r}")
        if self.stage == "dpo" and self.dpo is None:
            self.dpo = DpoOptions()
        if self.stage == "orpo" and self.orpo is None:
            self.orpo = OrpoOptions()
        if self.stage == "kto" and self.kto is None:
            self.kto = KtoOptions()
        hp, method = self.hyperparameters, self.method.type
        if hp.packing is True and self.stage not in ("sft", "pt"):
            raise ValueError(f"hyperparameters.packing applies to stages sft and pt; stage {self.stage!r} trains "
                             "on pairs or labelled rows that cannot be packed. Remove packing")
        if self.train_on_inputs and self.stage != "sft":
            raise ValueError(f"train_on_inputs applies to stage sft only; got stage {self.stage!r}")
        if self.resume_from and self.from_model:
            raise ValueError("give resume_from (continue an interrupted run) or from_model (train a finished "
                             "adapter further), not both")
        if self.from_model and method not in ADAPTER_METHODS:
            raise ValueError(f"from_model continues an adapter, so method.type must be lora, qlora or dora; "
                             f"got {method!r}")
        if self.publish.merged and method not in ADAPTER_METHODS:
            raise ValueError(f"publish.merged folds an adapter into the base; method {method!r} already publishes "
                             "full weights. Remove publish.merged")
        if hp.early_stopping_patience and not (self.validation_file or self.validation_split):
            raise ValueError("hyperparameters.early_stopping_patience needs validation data: give validation_file "
                             "or validation_split")
        if hp.early_stopping_patience and hp.eval_steps is None:
            raise ValueError("hyperparameters.early_stopping_patience needs evaluations; eval_steps is null")
        devices = self.resources.devices
        if isinstance(hp.batch_size, int) and hp.batch_size % devices:
            raise ValueError(f"hyperparameters.batch_size ({hp.batch_size}) must be a multiple of resources.devices "
                             f"({devices}): it is the global batch, split evenly over the devices; e.g. batch_size "
                             f"{devices * max(1, hp.batch_size // devices)}")
        return self


def eval_samples_problem(spec: JobSpec) -> str | None:
    """Why `spec` cannot have `hyperparameters.eval_samples` (in words that say the fix), or None. The API refuses
    such a spec with 400 `invalid_eval_samples` on `EVAL_SAMPLES_PARAM` (common/services/jobs.py); the training
    child skips the samples of a spec that gets here anyway (worker/train/samples.py)."""
    hp = spec.hyperparameters
    if not hp.eval_samples:
        return None
    if spec.stage == "rm":
        return ("hyperparameters.eval_samples: stage rm trains a reward model, which scores answers and cannot "
                "write them; remove eval_samples (the evaluations still report valid_preference_accuracy)")
    if not (spec.validation_file or spec.validation_split):
        return ("hyperparameters.eval_samples needs validation data to take the prompts and reference answers from: "
                "give validation_file or validation_split, or remove eval_samples")
    if hp.eval_steps is None or hp.eval_steps == 0:
        return ("hyperparameters.eval_samples generates answers at each evaluation, and eval_steps is "
                f"{hp.eval_steps!r} (never): set eval_steps to a number of steps or 'auto', or remove eval_samples")
    return None


DEFAULT_LEARNING_RATES: dict[tuple[str, bool], float] = {
    # (stage, adapter method?) → learning rate
    ("sft", True): 2e-4, ("sft", False): 2e-5,
    ("pt", True): 2e-4, ("pt", False): 2e-5,
    ("rm", True): 1e-4, ("rm", False): 1e-5,
    ("dpo", True): 5e-6, ("dpo", False): 5e-7,
    ("orpo", True): 8e-6, ("orpo", False): 8e-7,
    ("kto", True): 5e-6, ("kto", False): 5e-7,
}


def step_intervals(hp: Hyperparameters, total_steps: int, steps_per_epoch: int) -> tuple[int | None, int | None]:
    """(save interval, eval interval) in optimizer steps for a run of `total_steps`; None: never. "auto" save:
    about 4 checkpoints per run, at least one every 500 steps; "auto" eval: once per epoch (the last step always
    evaluates, worker/train/callbacks.py). The training child calls this once it knows the real step count."""
    save = hp.save_steps if hp.save_steps != "auto" else max(1, min(500, math.ceil(total_steps / 4)))
    evaluate = hp.eval_steps if hp.eval_steps != "auto" else min(steps_per_epoch, total_steps)
    return save or None, evaluate or None


def dpo_beta(options: DpoOptions) -> float:
    if options.beta != "auto":
        return float(options.beta)
    return 2.0 if options.loss_type == "simpo" else 0.1


class ResolvedHyperparameters(Hyperparameters):
    """`Hyperparameters` after `resolve_spec()`: the data-dependent "auto" values are values (and required, so a job
    that skipped resolution fails to parse instead of training with a guess)."""

    n_epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    packing: bool

    @property
    def micro_batch_size(self) -> int:
        """Rows per forward pass."""
        return self.batch_size // self.gradient_accumulation_steps


class ResolvedJobSpec(JobSpec):
    """A `JobSpec` whose hyperparameters went through `resolve_spec()`: what the training child parses."""

    hyperparameters: ResolvedHyperparameters


def resolve_spec(spec: JobSpec, n_rows: int) -> ResolvedJobSpec:
    """Decide the "auto" values the training data decides, once, at submit time. `n_rows` counts the rows of
    the training file (pairs for dpo/orpo/rm). What only the worker can decide stays "auto" (module docstring)."""
    hp = spec.hyperparameters
    batch_size = hp.batch_size if hp.batch_size != "auto" else max(1, min(8, n_rows // 4 or 1))
    accumulation = hp.gradient_accumulation_steps if hp.gradient_accumulation_steps != "auto" else 1
    if batch_size % accumulation:  # an explicit accumulation with an auto batch size
        batch_size = max(accumulation, batch_size - batch_size % accumulation)
    devices = spec.resources.devices
    if hp.batch_size == "auto" and batch_size % devices:  # an auto batch size is split evenly over the devices
        step = math.lcm(devices, accumulation)
        batch_size = max(step, batch_size - batch_size % step)
    if hp.learning_rate != "auto":
        learning_rate = float(hp.learning_rate)
    else:
        learning_rate = DEFAULT_LEARNING_RATES[(spec.stage, spec.method.type in ADAPTER_METHODS)]
    decided = {
        "n_epochs": hp.n_epochs if hp.n_epochs != "auto" else (3 if n_rows < 10_000 else 1),
        "batch_size": batch_size,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": learning_rate,
        "packing": hp.packing if hp.packing != "auto" else spec.stage == "pt",
    }
    data = spec.model_dump()
    data["hyperparameters"].update(decided)
    return ResolvedJobSpec.model_validate(data)


def stored_spec(spec: JobSpec, n_rows: int) -> dict[str, Any]:
    """What the jobs table stores: the spec as submitted (its hash keys idempotency, and worker/runner.py reads
    whether batch_size was "auto") and, under `resolved_hyperparameters`, what `resolve_spec` made of it."""
    stored = spec.model_dump(mode="json")
    stored["resolved_hyperparameters"] = resolve_spec(spec, n_rows).hyperparameters.model_dump(mode="json")
    return stored


def training_spec(stored: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ResolvedJobSpec:
    """The spec the training child trains with: a stored spec (`stored_spec`) with its resolved hyperparameters
    in place, patched by `overrides` (the parent's OOM retry). Keys the worker added to the stored spec
    (e.g. token statistics) are left out."""
    data = {name: stored[name] for name in JobSpec.model_fields if name in stored}
    data["hyperparameters"] = {**stored["resolved_hyperparameters"], **(overrides or {})}
    return ResolvedJobSpec.model_validate(data)
