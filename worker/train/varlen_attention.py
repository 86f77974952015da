"""Padding-free batches without flash-attention: sdpa run per packed row.

A padding-free batch (worker/train/stages/sft.py: the micro-batch's rows end to end in one row, `position_ids`
restarting at 0 for each) computes no padding in the linear layers, the bulk of a step. Attention must still
keep the rows apart. flash-attention's varlen kernels do that from `position_ids`; with plain sdpa transformers
builds one dense block-diagonal mask over the whole packed length instead, so attention then costs
(sum of lengths)² rather than the sum of each length², which on a CPU can cost more than the padding saved.

`varlen_sdpa` is an attention implementation registered with transformers under `VARLEN_SDPA`: it cuts the
packed row at every position 0 and runs causal sdpa (transformers' own `sdpa_attention_forward`, so GQA and
scaling are handled as usual) on each piece. No mask is built for it (transformers builds none for an
implementation it has no mask function for). `packed_attention(model)` switches an sdpa model to it for the
forward passes inside the block; models on flash-attention or eager are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

VARLEN_SDPA = "tunequeue_varlen_sdpa"


def segment_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of the rows packed in one row of `position_ids` (a row starts wherever the position is 0)."""
    starts = (position_ids == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], position_ids.numel()]
    return list(zip(starts, ends, strict=True))


def varlen_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, *, position_ids: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query/key/value [batch, heads, length, head_dim] → ([batch, length, heads, head_dim], None), each packed
    row attending causally within itself only."""
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    positions = position_ids.expand(query.shape[0], -1)
    rows = []
    for b in range(query.shape[0]):
        pieces = [
            sdpa_attention_forward(module, query[b:b + 1, :, start:end], key[b:b + 1, :, start:end],
                                   value[b:b + 1, :, start:end], None, is_causal=True, **kwargs)[0]
            for start, end in segment_bounds(positions[b])
        ]
        rows.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1))
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)), None


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)


@contextlib.contextmanager
def packed_attention(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block, a model on sdpa attends per packed row (`varlen_sdpa`); others are unchanged. The
    backward pass needs no switch: autograd replays the recorded operations."""
    config: Any = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model in `module`
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    config._attn_implementation = VARLEN_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
