"""Token cross-entropy through the LM head in chunks: full logits are never materialised.

The language-modelling loss (worker/train/stages/sft.py) reads the logits of the scored positions only, but
those alone are [scored tokens × vocabulary]: for a batch of 8 chat rows and a 49k vocabulary about 1,500 ×
49,152 floats, 300 MB, plus as much again for their gradient and the log-softmax. `chunked_cross_entropy`
projects `chunk` positions at a time, takes the loss of each chunk, and — when gradients are wanted — computes
the gradient with respect to the hidden states (and to the head's weight and bias when those train) in the same
pass: softmax minus one-hot, times the head. Backward then only scales the saved gradients, so no chunk's
logits outlive its iteration. The arithmetic is the same as autograd's through `head(hidden).float()` and
`F.cross_entropy`: logits in the head's dtype, softmax in float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 2**25  # logits per chunk (128 MB in float32): ~680 positions of a 49k vocabulary


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int, want_grads: bool) -> tuple[torch.Tensor, torch.Tensor]:
        need_hidden = want_grads and hidden.requires_grad
        need_weight = want_grads and weight.requires_grad
        need_bias = want_grads and bias is not None and bias.requires_grad
        dtype = weight.dtype
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias and bias is not None else None
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].to(dtype)
            t = targets[start:start + chunk]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t.unsqueeze(1)).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == t).sum()
            if not (need_hidden or need_weight or need_bias):
                continue
            grad_logits = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = (grad_logits @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_correct: Any) -> tuple[Any, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_total
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
            (grad_weight * scale).to(weight_dtype) if grad_weight is not None else None,
            (grad_bias * scale).to(bias_dtype) if grad_bias is not None else None,
            None, None, None,
        )


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                          chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the token cross-entropies, number of argmax hits) of `head(hidden)` [n, vocab] against
    `targets` [n]. `head` must be a plain `nn.Linear`; `chunk` positions are projected at a time."""
    weight: torch.Tensor = head.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = head.bias  # type: ignore[assignment]
    size = chunk if chunk is not None else max(1, CHUNK_ELEMENTS // int(weight.shape[0]))
    total, correct = _ChunkedCrossEntropy.apply(hidden, weight, bias, targets, size, torch.is_grad_enabled())
    return total, correct

