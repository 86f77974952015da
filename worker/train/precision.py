"""Training an adapter over 16-bit frozen weights without autocast: the CPU policy of worker/train/runtime.py.

- `train_saved_modules_in_fp32`: PEFT keeps its adapter weights fp32 itself, but its trained copies of
  `modules_to_save` (a reward model's value head among them) keep the base's dtype; they are upcast here.
- `fp32_activations`: each frozen 16-bit `Linear` casts its input to its own dtype and its output to fp32, and
  each 16-bit `Embedding` its output to fp32. The matmuls of the frozen weights run in bf16 (where the speed is);
  everything between them — the residual stream, norms, attention, and the sum of a frozen layer's output and
  its adapter's — stays fp32.

Why the second: PEFT adds an adapter's output to the frozen layer's output and casts the sum back to that
output's dtype. In bf16 the frozen output is already on the bf16 grid, so an adapter contribution below half a
bf16 step (2^-9 of the value: every contribution in the first steps of a LoRA) rounds away entirely. Measured on
SmolLM2-135M-Instruct, one LoRA step (lr 2e-4) took the batch's loss from 4.03 to 3.05 in fp32 and only to 3.68
with bf16 activations, and the bf16 run stayed about a step behind (held-out loss 0.66 against 0.47 after 12
steps). Rounding an fp32 value off the grid, at the next matmul's input, loses nothing on average.
"""

from __future__ import annotations

from typing import Any

import torch

HALF = (torch.bfloat16, torch.float16)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(item, dtype) for item in value)
    return value


def _inputs_to_weight_dtype(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return _cast(args, module.weight.dtype)  # type: ignore[arg-type]


def _output_to_fp32(_module: torch.nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
    return _cast(output, torch.float32)


def train_saved_modules_in_fp32(model: torch.nn.Module) -> None:
    from peft.utils import ModulesToSaveWrapper

    for wrapper in model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for copy in wrapper.modules_to_save.values():
                if any(p.dtype in HALF for p in copy.parameters()):
                    copy.float()


def fp32_activations(model: torch.nn.Module) -> int:
    """Hook every 16-bit Linear and Embedding of `model` (see the module's docstring; all of them are frozen, the
    weights that train being fp32); returns how many. The fp32 modules (adapters, modules_to_save copies) get
    fp32 inputs as they are."""
    hooked = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dtype not in HALF:
            continue
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(_inputs_to_weight_dtype)
        elif not isinstance(module, torch.nn.Embedding):
            continue
        module.register_forward_hook(_output_to_fp32)
        hooked += 1
    return hooked
