"""One model built at a time in a process.

transformers (5.x) builds a model inside context managers that swap process-wide functions for no-ops
(`PreTrainedModel.tie_weights`, `PreTrainedModel.init_weights` and the `torch.nn.init` functions) and put back
what they found on the way out. Two threads building at once can each put back the other's no-op: from then on
every model the process loads keeps an untied, uninitialised LM head (SmolLM2 then answers with NaN logits), and
every new adapter's weights stay uninitialised. Serve builds base models from request threads, its preload
thread and its reload thread, so each build takes this lock; so does any other code that builds a model or an
adapter in a process where serve's threads may run (training, tests)."""

from __future__ import annotations

import threading

MODEL_BUILD_LOCK = threading.RLock()

# The no-op stand-ins transformers swaps in while a model is built are functions local to these context managers.
_STAND_IN_MARKERS = ("no_init_weights.<locals>", "no_tie_weights.<locals>")


def swapped_out_functions() -> list[str]:
    """The process-wide functions a model build left swapped for transformers' no-ops ([] when every one is
    itself). Only meaningful while MODEL_BUILD_LOCK is held, or when no build is under way."""
    import sys

    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None:
        return []
    import torch.nn.init

    checked = {f"PreTrainedModel.{name}": getattr(modeling.PreTrainedModel, name)
               for name in ("tie_weights", "init_weights")}
    checked.update({f"torch.nn.init.{name}": getattr(torch.nn.init, name)
                    for name in ("normal_", "uniform_", "zeros_", "ones_", "kaiming_uniform_", "trunc_normal_")})
    return [name for name, func in checked.items()
            if any(marker in getattr(func, "__qualname__", "") for marker in _STAND_IN_MARKERS)]
