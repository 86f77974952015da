"""Peak memory of one training attempt, estimated from the base model's config.json and the job spec, for
placement by fit: a job goes only to a worker whose device has the memory, and `batch_size: "auto"` takes the
largest micro-batch that fits (`largest_micro_batch`).

No torch here (the API imports this module): the estimate is arithmetic on the config's shapes, following what
the training child really does (worker/train/):

    total = weights + trainable_parameters + gradients + optimizer_states + activations + overhead

- weights: the frozen weights. Adapter methods load the base in the frozen dtype (`frozen_dtype`, the policy of
  worker/train/runtime.py `_decide_precision`: on CUDA the autocast dtype; on a CPU bf16 where it has bf16
  instructions, else fp32); qlora's decoder linears are 4- or 8-bit and the rest is upcast to fp32 by
  `prepare_model_for_kbit_training`. full and freeze load fp32 weights (on CUDA plus autocast's 16-bit copy of
  each linear weight, which autocast caches for the step).
- trainable_parameters, gradients: every trained weight is fp32 (4 bytes) with an fp32 gradient. LoRA: r·(in+out)
  per targeted linear (+ out for DoRA's magnitude); `modules_to_save` and a reward model's value head in full.
- optimizer_states: AdamW keeps two fp32 moments (8 bytes a trained weight); the bitsandbytes 8-bit variants two
  8-bit ones (2 bytes). Paged variants count the same: the estimate is for the device.
- activations: what autograd saves for backward, per token and decoder layer, as `a_h·hidden + a_kv·kv_dim +
  a_i·intermediate` elements (ACTIVATION_COEFFICIENTS, counted with `torch.autograd.graph.saved_tensors_hooks`
  on Llama-shaped models: the coefficients are exact for that layer code, whatever its size), times the tokens
  of a micro-batch: micro_batch × sequences per row (2 for dpo/orpo/rm, whose chosen and rejected answers go
  through the model together) × max_seq_length, an upper bound (every row as long as the window). freeze saves
  activations in its trainable layers only. Gradient checkpointing keeps each layer's input instead, and
  recomputes one layer at a time in backward. Then the LM head: sft and pt run it in chunks
  (worker/train/chunked_loss.py) and never hold more than one chunk of logits; dpo, orpo and kto project every
  scored position at once (worker/train/stages/base.py `scored_logits`) and keep [positions × vocab] floats with
  their log-softmax; kto adds a no-grad pass over its KL samples; rm's head has one output.
- overhead: on a CPU the RSS of the Python process with the training stack imported (torch, transformers, peft),
  CPU_RUNTIME_BYTES, and what training allocates whatever the model, CPU_TRAINING_SLACK_BYTES, both measured once
  (see their comment); on CUDA the context and the kernels' workspaces, CUDA_RUNTIME_BYTES, an assumption not
  measured here.

DPO and KTO hold no second model: their reference log-probabilities are computed once before training
(worker/train/run.py `reference_pass`) and ride with the rows. benchmarks/memory_estimate_error.py measures the
error against real training runs (results in benchmarks/results/).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.schemas.job_spec import ADAPTER_METHODS, JobSpec, ResolvedJobSpec, resolve_spec

Device = Literal["cuda", "cpu"]
MIB = 2**20

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Per token and decoder layer, the elements autograd saves (a_h, a_kv, a_i: per unit of hidden_size, of the
# key/value width and of intermediate_size), counted on a Llama layer of this project's transformers with the
# project's precision hooks. LoRA's dropout (> 0) keeps its own copy of every adapted input; DoRA also keeps the
# base and adapter outputs it rescales. With gradient checkpointing a layer keeps ~2 hidden-wide tensors.
ACTIVATION_COEFFICIENTS: dict[str, tuple[float, float, float]] = {
    "full": (9.1, 2.0, 4.0),
    "lora": (14.8, 2.0, 5.0),
    "lora_no_dropout": (6.3, 2.0, 4.0),
    "dora": (11.4, 6.6, 15.5),
}
CHECKPOINTED_LAYER_ELEMENTS = 2.0  # × hidden_size per token and layer
OUTSIDE_LAYERS_ELEMENTS = 4.0  # × hidden_size per token: the embedding output, the final norm, the head's input
# worker/train/chunked_loss.py CHUNK_ELEMENTS (a test keeps them equal): logits per chunk of the sft/pt loss.
CHUNK_ELEMENTS = 2**25
# A CPU attempt's process before the model: python with torch, transformers, peft and datasets imported, 440 MiB
# RSS (measured on an AMD EPYC, torch 2.13 CPU build, transformers 5); and what training adds whatever the model
# (tokenizer, Trainer, accelerate, first-use kernels): the tiny model's attempts grow 40-60 MiB over that
# baseline, 10-30 MiB of it its own estimate (benchmarks/results/memory_estimate_cpu.txt).
CPU_RUNTIME_BYTES = 440 * MIB
CPU_TRAINING_SLACK_BYTES = 30 * MIB
# A CUDA attempt: the context (~300-500 MiB on recent GPUs) and cuBLAS/attention workspaces. Not measured here.
CUDA_RUNTIME_BYTES = 1024 * MIB
QUANTIZED_BYTES = {4: 0.516, 8: 1.0}  # per weight: 4-bit + double-quantised absmax per 64 (nf4/fp4), 8-bit + scales
QUANTIZED_BYTES_NO_DOUBLE_QUANT = 0.5625  # 4-bit + an fp32 absmax per 64 weights
OPTIMIZER_BYTES = {"adamw": 8, "paged_adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2}


@dataclass(frozen=True)
class ModelShape:
    """The shapes that memory depends on, read from a transformers config.json (Llama, Qwen2, Mistral, …)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(hidden=hidden, intermediate=int(config["intermediate_size"]),
                   layers=int(config["num_hidden_layers"]), heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads), vocab=int(config["vocab_size"]),
                   tied=bool(config.get("tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of one decoder layer, by module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    def layer_params(self) -> int:
        return self.layer_linear_params() + 2 * self.hidden  # + the two norms

    def embedding_params(self) -> int:
        return self.vocab * self.hidden


def load_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The base model's config.json as a dict."""
    config: dict[str, Any] = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return config


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one attempt, what they are made of, and the assumptions they rest on."""

    total_bytes: int
    breakdown: dict[str, int]  # weights, trainable_parameters, gradients, optimizer_states, activations, overhead
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frozen_dtype(spec: JobSpec, device: Device, *, cpu_bf16: bool = False, cuda_bf16: bool = True) -> str:
    """The dtype of the frozen base weights (fp32 for full/freeze, whose weights train) — the policy of
    worker/train/runtime.py `_decide_precision`, restated without torch (a test keeps the two in step)."""
    method, precision = spec.method.type, spec.hyperparameters.precision
    if method not in ADAPTER_METHODS:
        return "fp32"
    if method == "qlora" and precision == "fp32":
        return "bf16" if cuda_bf16 else "fp16"
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if cuda_bf16 else "fp16"
    if spec.method.lora is not None and spec.method.lora.init == "pissa":
        return "fp32"
    return "bf16" if cpu_bf16 else "fp32"


def activation_bytes_per_element(spec: JobSpec, device: Device) -> int:
    """On a CPU activations are fp32 (no autocast; worker/train/precision.py keeps them fp32 between 16-bit
    matmuls); on CUDA the autocast dtype, 16 bits unless the job asks for fp32."""
    if device == "cpu" or (spec.hyperparameters.precision == "fp32" and spec.method.type != "qlora"):
        return 4
    return 2


def micro_batch_of(spec: JobSpec) -> int:
    """Rows per forward pass: the resolved spec's, or what `resolve_spec` makes of an explicit batch size (an
    "auto" batch size depends on the rows: pass `micro_batch_size`, or ask `largest_micro_batch`)."""
    if isinstance(spec, ResolvedJobSpec):
        return spec.hyperparameters.micro_batch_size
    if spec.hyperparameters.batch_size == "auto":
        raise ValueError("batch_size is 'auto': give micro_batch_size, or use largest_micro_batch")
    return resolve_spec(spec, 1).hyperparameters.micro_batch_size  # an explicit batch size ignores the rows


def _trainable_params(shape: ModelShape, spec: JobSpec, reward_model: bool) -> int:
    method = spec.method
    head = shape.hidden if reward_model else 0  # rm: the value head `score`, always trained
    lm_head = 0 if reward_model or shape.tied else shape.embedding_params()
    if method.type == "full":
        return shape.layers * shape.layer_params() + shape.embedding_params() + lm_head + shape.hidden + head
    if method.type == "freeze":
        assert method.freeze is not None
        layers = min(method.freeze.trainable_layers, shape.layers)
        extra = {"lm_head": lm_head if not reward_model else 0, "embed_tokens": shape.embedding_params(),
                 "norm": shape.hidden}
        return layers * shape.layer_params() + head + sum(extra.get(m, 0) for m in method.freeze.extra_modules)
    assert method.lora is not None
    targets = method.lora.target_modules
    chosen = [(a, b) for name, (a, b) in shape.linears().items() if targets == "all-linear" or name in targets]
    per_layer = sum(method.lora.r * (a + b) + (b if method.type == "dora" else 0) for a, b in chosen)
    saved = {"lm_head": shape.embedding_params(), "embed_tokens": shape.embedding_params(), "score": 0}
    return shape.layers * per_layer + head + sum(saved.get(m, 0) for m in method.lora.modules_to_save or [])


def _weight_bytes(shape: ModelShape, spec: JobSpec, device: Device, frozen: str, reward_model: bool) -> float:
    """The frozen weights (full and freeze: their frozen part, plus autocast's 16-bit copies on CUDA)."""
    lm_head = 0 if reward_model or shape.tied else shape.embedding_params()
    rest = shape.embedding_params() + lm_head + shape.hidden + shape.layers * 2 * shape.hidden  # not in linears
    linears = shape.layers * shape.layer_linear_params()
    method = spec.method
    if method.type == "qlora":
        assert method.quantization is not None
        bits = method.quantization.bits
        per = QUANTIZED_BYTES[bits] if bits == 8 or method.quantization.double_quant else \
            QUANTIZED_BYTES_NO_DOUBLE_QUANT
        return linears * per + rest * 4  # prepare_model_for_kbit_training upcasts the rest to fp32
    if method.type in ADAPTER_METHODS:
        return (linears + rest) * DTYPE_BYTES[frozen]
    autocast_copies = linears * 2 if device == "cuda" and spec.hyperparameters.precision != "fp32" else 0
    if method.type == "full":
        return autocast_copies
    trained = _trainable_params(shape, spec, reward_model) - (shape.hidden if reward_model else 0)
    return (linears + rest - trained) * 4 + autocast_copies


def _layer_elements(shape: ModelShape, spec: JobSpec) -> float:
    """Saved elements per token of one decoder layer without checkpointing."""
    method = spec.method
    if method.type in ADAPTER_METHODS:
        assert method.lora is not None
        key = "dora" if method.type == "dora" else ("lora" if method.lora.dropout > 0 else "lora_no_dropout")
    else:
        key = "full"
    a_h, a_kv, a_i = ACTIVATION_COEFFICIENTS[key]
    return a_h * shape.hidden + a_kv * shape.kv_heads * shape.head_dim + a_i * shape.intermediate


def _activation_bytes(shape: ModelShape, spec: JobSpec, device: Device, micro_batch: int, checkpointing: bool,
                      head_bytes: int) -> tuple[float, dict[str, Any]]:
    stage, hp = spec.stage, spec.hyperparameters
    element = activation_bytes_per_element(spec, device)
    sequences = 2 if stage in ("dpo", "orpo", "rm") else 1
    tokens = micro_batch * sequences * hp.max_seq_length
    layers = shape.layers
    if spec.method.type == "freeze" and spec.method.freeze is not None:
        layers = min(spec.method.freeze.trainable_layers, shape.layers)  # frozen layers below save nothing
    per_layer = _layer_elements(shape, spec)
    if checkpointing:  # each layer's input, and one layer recomputed at a time in backward
        body = tokens * (layers * CHECKPOINTED_LAYER_ELEMENTS * shape.hidden + per_layer)
    else:
        body = tokens * layers * per_layer
    body += tokens * OUTSIDE_LAYERS_ELEMENTS * shape.hidden
    half_head = head_bytes < 4  # a 16-bit head's output is cast to fp32 (one more copy of the logits)
    if stage == "rm":
        logits = 0.0
    elif stage in ("sft", "pt"):  # one chunk of logits and its logsumexp temporary, + the saved dL/dhidden
        chunk = min(tokens, max(1, CHUNK_ELEMENTS // shape.vocab))
        logits = chunk * shape.vocab * (8 + (2 * head_bytes if half_head else 0)) + tokens * shape.hidden * 4
    else:  # every scored position at once: fp32 logits, their log-softmax, and their gradients in backward
        logits = tokens * shape.vocab * (12 + (head_bytes if half_head else 0))
        if stage == "kto":  # the KL samples' forward without grad, while the policy's activations are held
            logits += tokens * shape.vocab * 8
    return body * element + logits, {"tokens_per_micro_batch": tokens, "sequences_per_row": sequences,
                                     "layers_holding_activations": layers}


def estimate_training_memory(
    config: Mapping[str, Any],
    spec: JobSpec,
    *,
    device: Device,
    micro_batch_size: int | None = None,
    gradient_checkpointing: bool | None = None,
    cpu_bf16: bool = False,
    cuda_bf16: bool = True,
) -> MemoryEstimate:
    """Peak memory of training `spec` on the model of `config` (its config.json) on `device` — host RSS for a CPU
    worker, device memory for CUDA (see the module's docstring).

    `micro_batch_size`: rows per forward pass (default: the spec's, `micro_batch_of`). `gradient_checkpointing`:
    overrides the spec's; "auto" means off on a CPU (as the worker decides) and, on CUDA, off here too: the worker
    turns it on only when activations would not fit, so an estimate without it is the upper bound
    (`largest_micro_batch` tries both). `cpu_bf16`: whether the CPU has bf16 instructions
    (worker/train/runtime.py `cpu_bf16`), which puts an adapter's frozen base in bf16; `cuda_bf16`: whether the
    GPU supports bf16 (else fp16)."""
    shape = ModelShape.from_config(config)
    hp = spec.hyperparameters
    micro = micro_batch_size if micro_batch_size is not None else micro_batch_of(spec)
    if micro < 1:
        raise ValueError(f"micro_batch_size must be ≥ 1; got {micro}")
    if gradient_checkpointing is None:
        gradient_checkpointing = hp.gradient_checkpointing if isinstance(hp.gradient_checkpointing, bool) else False
    reward_model = spec.stage == "rm"
    frozen = frozen_dtype(spec, device, cpu_bf16=cpu_bf16, cuda_bf16=cuda_bf16)
    trainable = _trainable_params(shape, spec, reward_model)
    head_bytes = DTYPE_BYTES[frozen] if spec.method.type in ADAPTER_METHODS else 4
    if spec.method.type == "qlora":
        head_bytes = 4  # upcast with the rest of the unquantised weights
    optimizer = hp.optimizer if device == "cuda" else "adamw"  # a CPU worker refuses the others
    runtime = CPU_RUNTIME_BYTES if device == "cpu" else CUDA_RUNTIME_BYTES
    activations, shapes = _activation_bytes(shape, spec, device, micro, gradient_checkpointing, head_bytes)
    breakdown = {
        "weights": int(_weight_bytes(shape, spec, device, frozen, reward_model)),
        "trainable_parameters": trainable * 4,
        "gradients": trainable * 4,
        "optimizer_states": trainable * OPTIMIZER_BYTES[optimizer],
        "activations": int(activations),
        "overhead": runtime + (CPU_TRAINING_SLACK_BYTES if device == "cpu" else 0),
    }
    assumptions: dict[str, Any] = {
        "device": device, "stage": spec.stage, "method": spec.method.type, "frozen_weights_dtype": frozen,
        "weight_bits": spec.method.quantization.bits if spec.method.quantization else DTYPE_BYTES[frozen] * 8,
        "compute_dtype": "fp32" if activation_bytes_per_element(spec, device) == 4 else
        ("bf16" if cuda_bf16 else "fp16"),
        "micro_batch_size": micro, "max_seq_length": hp.max_seq_length,
        "gradient_checkpointing": gradient_checkpointing, "optimizer": optimizer, "trainable_params": trainable,
        "runtime_bytes": runtime,
        **shapes,
    }
    return MemoryEstimate(sum(breakdown.values()), breakdown, assumptions)


def fits(config: Mapping[str, Any], spec: JobSpec, *, device: Device, budget_bytes: int, micro_batch_size: int,
         **options: Any) -> bool:
    """Whether a micro-batch of `micro_batch_size` fits `budget_bytes`. On CUDA with gradient_checkpointing
    "auto", with checkpointing if not without it (the worker turns it on when activations would not fit)."""
    def under(checkpointing: bool | None) -> bool:
        estimate = estimate_training_memory(config, spec, device=device, micro_batch_size=micro_batch_size,
                                            gradient_checkpointing=checkpointing, **options)
        return estimate.total_bytes <= budget_bytes

    if under(None):
        return True
    return device == "cuda" and spec.hyperparameters.gradient_checkpointing == "auto" and under(True)


def largest_micro_batch(config: Mapping[str, Any], spec: JobSpec, *, device: Device, budget_bytes: int,
                        limit: int = 1024, **options: Any) -> int:
    """The largest micro-batch (≤ `limit`, the spec's batch_size bound) whose estimate fits `budget_bytes`;
    0 when not even one row fits. The estimate grows with the micro-batch, so a binary search finds it."""
    if not fits(config, spec, device=device, budget_bytes=budget_bytes, micro_batch_size=1, **options):
        return 0
    low, high = 1, limit  # low fits; find the last that fits in (low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if fits(config, spec, device=device, budget_bytes=budget_bytes, micro_batch_size=middle, **options):
            low = middle
        else:
            high = middle - 1
    return low
