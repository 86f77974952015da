"""What this worker's device makes of a job: the precision policy (the dtype of the frozen base weights and of
the computation), attention implementation, optimizer and gradient checkpointing, with the "auto" values decided
here. A job that needs what the device lacks (CUDA, bitsandbytes, flash-attn) is refused before anything loads,
with `unsupported_on_worker` and what it needed.

The precision policy (docs/job-spec.md, `precision`): weights that train are always fp32. The frozen base weights
of an adapter method (lora, dora; qlora's are 4-bit) are stored in 16 bits where the device runs 16-bit matmuls
fast: on CUDA the autocast dtype; on a CPU, bf16 when it has bf16 instructions and a timed matmul confirms that
they pay (`cpu_bf16`), with no autocast: the frozen layers' matmuls run in bf16, the activations between them and
the adapters in fp32 (worker/train/precision.py). full and freeze keep fp32 weights (autocast on CUDA)."""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass

import torch

from common.schemas.job_spec import ADAPTER_METHODS, ResolvedJobSpec
from worker.cpuinfo import CPU_BF16_FLAGS, cpu_flags
from worker.train.errors import TrainingError
from worker.train.protocol import UNSUPPORTED_ON_WORKER

OPTIMIZERS_CUDA = {"adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit",
                   "paged_adamw": "paged_adamw_32bit", "paged_adamw_8bit": "paged_adamw_8bit"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# CPU flags of native bf16 arithmetic: x86 (AVX-512 BF16, AMX) and aarch64 (the BF16 extension).
# bf16 frozen weights on a CPU only when the probe's bf16 matmul beats fp32 by at least this much (measured on
# an AMD EPYC with avx512_bf16 and no AMX: 3.5-5.5×, docs/job-spec.md); below it, fp32 is as fast and exact.
CPU_BF16_MIN_SPEEDUP = 1.3
PROBE_SHAPE = (256, 576, 1536)  # [256×576]@[576×1536]: a small model's projection, ~3 ms in bf16 on one core


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU runs bf16 matmuls fast enough for bf16 frozen weights, and why (for the job's event)."""

    fast: bool
    reason: str


def bf16_matmul_speedup(repeats: int = 3) -> float:
    """fp32 time / bf16 time of one `PROBE_SHAPE` matmul on this CPU, each the fastest of `repeats` after a
    warm-up, interleaved so that a busy neighbour slows both alike. Uses its own generator: the job's seeded
    RNG is left alone."""
    m, k, n = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    with torch.no_grad():
        for x, y in pairs.values():
            x @ y
        for _ in range(repeats):
            for dtype, (x, y) in pairs.items():
                start = time.perf_counter()
                x @ y
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


@functools.cache
def cpu_bf16() -> CpuBf16:
    """Decided once per process from the CPU's flags: bf16 instructions → yes, none → no. Only where the flags
    cannot be read does a timed probe decide; a probe is at the mercy of the machine's load (on a busy 2-core
    host it once measured bf16 under its threshold where a quiet one measured 4–9×), and a job's numerics should
    not depend on what else ran beside it."""
    flags = cpu_flags()
    native = sorted(flags & CPU_BF16_FLAGS) if flags is not None else None
    if native == []:
        return CpuBf16(False, "this CPU has no bf16 instructions (no avx512_bf16, amx_bf16 or bf16 flag)")
    if native:
        return CpuBf16(True, f"this CPU has {', '.join(native)}")
    has = "this CPU's flags are unknown"
    speedup = bf16_matmul_speedup()
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return CpuBf16(True, f"{has} and a bf16 matmul ran {speedup:.1f}× as fast as fp32")
    return CpuBf16(False, f"{has} but a bf16 matmul ran only {speedup:.1f}× as fast as fp32")


@dataclass(frozen=True)
class DeviceChoices:
    """The device-dependent settings of one attempt, decided once by `decide_device_choices`; `describe()` goes
    into the first log event."""

    device: str  # "cuda" | "cpu"
    precision: str  # "bf16" | "fp16" | "fp32": the autocast dtype (fp32: none)
    frozen_dtype: str  # "bf16" | "fp16" | "fp32": the frozen base weights of an adapter method
    precision_reason: str  # why, for the job's first event
    attention: str  # a transformers attn_implementation
    optimizer: str  # a transformers `optim` name
    gradient_checkpointing: bool | None  # None: decide after the model is loaded (auto on CUDA)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def weights_dtype(self, adapter: bool) -> torch.dtype:
        """The dtype the base model loads in: `frozen_dtype` under an adapter method (whose trained weights PEFT
        and `apply_method` keep fp32), fp32 for full and freeze (fp32 master weights)."""
        return DTYPES[self.frozen_dtype] if adapter else torch.float32

    @property
    def half_matmuls_fp32_activations(self) -> bool:
        """An adapter job over 16-bit frozen weights without autocast: its frozen layers compute in 16 bits and
        hand fp32 on (worker/train/precision.py `fp32_activations`)."""
        return self.autocast_dtype is None and self.frozen_dtype != "fp32"

    def describe_precision(self, adapter: bool) -> str:
        """E.g. "frozen base weights bf16, trained weights fp32, bf16 matmuls with fp32 activations (auto: this
        CPU has avx512_bf16 and …)"."""
        weights = (f"frozen base weights {self.frozen_dtype}, trained weights fp32" if adapter
                   else "weights fp32")
        if self.autocast_dtype is not None:
            compute = f"{self.precision} autocast"
        elif adapter and self.half_matmuls_fp32_activations:
            compute = f"{self.frozen_dtype} matmuls with fp32 activations"
        else:
            compute = "fp32 compute"
        return f"{weights}, {compute} ({self.precision_reason})"

    def describe(self, adapter: bool, gradient_checkpointing: bool | None = None) -> str:
        """For the first log event; `gradient_checkpointing`: what loading decided where this says auto."""
        decided = self.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
        checkpointing = {True: "on", False: "off", None: "auto"}[decided]
        return (f"{self.device}: {self.describe_precision(adapter)}; attention {self.attention}, optimizer "
                f"{self.optimizer}, gradient checkpointing {checkpointing}")


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _refuse(needed: str, param: str, instead: str) -> TrainingError:
    return TrainingError(UNSUPPORTED_ON_WORKER, f"{needed}, which this worker does not have; {instead}.",
                         param=param)


def decide_device_choices(spec: ResolvedJobSpec, *, cuda: bool | None = None) -> DeviceChoices:
    """Check what the job needs against this device and fill in the "auto" choices."""
    hp = spec.hyperparameters
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if spec.method.type == "qlora":
        if not cuda:
            raise _refuse("method.type 'qlora' needs a CUDA GPU with bitsandbytes", "method.type",
                          "use method.type 'lora' or 'dora', or submit to a GPU worker")
        if not has_module("bitsandbytes"):
            raise _refuse("method.type 'qlora' needs the bitsandbytes package", "method.type",
                          "install tunequeue[gpu] on the worker, or use method.type 'lora'")
    if hp.optimizer != "adamw" and (not cuda or not has_module("bitsandbytes")):
        raise _refuse(f"hyperparameters.optimizer {hp.optimizer!r} needs a CUDA GPU with bitsandbytes",
                      "hyperparameters.optimizer", "use optimizer 'adamw'")
    if hp.attention == "flash_attention_2" and (not cuda or not has_module("flash_attn")):
        raise _refuse("hyperparameters.attention 'flash_attention_2' needs a CUDA GPU with flash-attn installed",
                      "hyperparameters.attention", "use attention 'auto' or 'sdpa'")

    precision, frozen, reason = _decide_precision(spec, cuda)

    attention = hp.attention
    if attention == "auto":
        attention = "flash_attention_2" if cuda and precision != "fp32" and has_module("flash_attn") else "sdpa"
    optimizer = OPTIMIZERS_CUDA[hp.optimizer] if cuda else "adamw_torch"
    checkpointing = hp.gradient_checkpointing
    gradient_checkpointing = checkpointing if isinstance(checkpointing, bool) else (None if cuda else False)
    return DeviceChoices("cuda" if cuda else "cpu", precision, frozen, reason, attention, optimizer,
                         gradient_checkpointing)


def _decide_precision(spec: ResolvedJobSpec, cuda: bool) -> tuple[str, str, str]:
    """(autocast precision, frozen base dtype, why). See the module's docstring for the policy."""
    precision = spec.hyperparameters.precision
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if precision == "bf16" and cuda and not bf16_ok:
        raise _refuse("hyperparameters.precision 'bf16' needs a GPU with bfloat16 support", "hyperparameters."
                      "precision", "use precision 'auto' or 'fp16'")
    if precision == "fp16" and not cuda:
        raise _refuse("hyperparameters.precision 'fp16' needs a CUDA GPU", "hyperparameters.precision",
                      "use precision 'auto', 'bf16' or 'fp32'")
    if spec.method.type == "qlora" and precision == "fp32":
        precision = "bf16" if bf16_ok else "fp16"
        return precision, precision, "qlora computes in 16 bits"
    if precision != "auto":
        return precision, precision, f"hyperparameters.precision is '{precision}'"
    if cuda:
        precision = "bf16" if bf16_ok else "fp16"
        return precision, precision, "auto: this GPU " + ("supports bf16" if bf16_ok else "has no bf16")
    if spec.method.type not in ADAPTER_METHODS:
        return "fp32", "fp32", "auto: full and freeze keep fp32 weights on a CPU"
    lora = spec.method.lora
    if lora is not None and lora.init == "pissa":
        return "fp32", "fp32", ("auto: PiSSA rewrites the base weights, which stay fp32 so that the published "
                                "LoRA applies exactly to the original base")
    cpu = cpu_bf16()
    return "fp32", "bf16" if cpu.fast else "fp32", f"auto: {cpu.reason}"


def needs_gradient_checkpointing(model: torch.nn.Module, micro_batch: int, seq_len: int, precision: str) -> bool:
    """'auto' on CUDA: on when the estimated activations of one micro batch exceed 70% of the free memory after
    the model is loaded. Activation bytes per layer ≈ tokens × hidden × (34 + 5 × heads × seq / hidden) in 16-bit
    (Korthikanti et al. 2022), doubled for fp32."""
    if not torch.cuda.is_available():
        return False
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 1) or 1
    per_layer = micro_batch * seq_len * hidden * (34 + 5 * heads * seq_len / max(1, hidden))
    estimate = per_layer * layers * (2 if precision == "fp32" else 1)
    free, _ = torch.cuda.mem_get_info()
    return estimate > 0.7 * free
