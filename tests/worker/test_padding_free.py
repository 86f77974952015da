"""Padding-free batches (worker/train/varlen_attention.py) and the chunked LM-head loss
(worker/train/chunked_loss.py) compute what the padded batch and the full logits compute.

Tolerances: float32 throughout; the padded and the packed batch sum the same numbers in another order, so the
loss agrees to 1e-5 relative and every gradient to 1e-5 of its own largest entry. The chunked cross-entropy
agrees with `F.cross_entropy` over the full logits to 1e-5.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from common.text.masks import IGNORE_INDEX
from worker.train.chunked_loss import chunked_cross_entropy
from worker.train.stages.base import Row
from worker.train.stages.sft import Sft, scored_cross_entropy
from worker.train.varlen_attention import VARLEN_SDPA, packed_attention, segment_bounds, varlen_sdpa

LENGTHS = [5, 19, 12, 30, 8]


def small_llama() -> LlamaForCausalLM:
    """A random Llama with grouped-query attention (4 query heads, 2 key/value heads) on sdpa."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).float()


def rows() -> list[Row]:
    """Chat-like rows: the first half of each is prompt (not trained), the rest is trained."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for length in LENGTHS:
        ids = torch.randint(1, 300, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2:]})
    return out


def collate(padding_free: bool) -> dict[str, Any]:
    stage = Sft(SimpleNamespace(), SimpleNamespace(pad_token_id=0), None, padding_free=padding_free)
    batch = stage.collate(rows())
    batch.pop("num_tokens")
    return batch


def loss_and_gradients(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor,
                                                                               dict[str, torch.Tensor]]:
    model.zero_grad()
    total, correct = scored_cross_entropy(model, batch, batch["shift_labels"])
    total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return total.detach(), correct, grads


def test_padding_free_batch_is_one_row_with_positions_restarting_per_row() -> None:
    batch = collate(padding_free=True)
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    assert "attention_mask" not in batch
    expected = [pos for length in LENGTHS for pos in range(length)]
    assert batch["position_ids"].tolist() == [expected]
    assert segment_bounds(batch["position_ids"][0]) == [(0, 5), (5, 24), (24, 36), (36, 66), (66, 74)]


def test_padding_free_loss_and_gradients_equal_the_padded_batch() -> None:
    model = small_llama()
    padded_loss, padded_hits, padded_grads = loss_and_gradients(model, collate(padding_free=False))
    packed_loss, packed_hits, packed_grads = loss_and_gradients(model, collate(padding_free=True))
    assert collate(padding_free=False)["input_ids"].shape == (len(LENGTHS), max(LENGTHS))
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=0)
    assert packed_hits == padded_hits
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(packed_grads[name], grad, rtol=0, atol=1e-5 * scale, msg=name)


def test_varlen_sdpa_equals_sdpa_with_transformers_block_diagonal_mask() -> None:
    """The per-row attention gives the hidden states of the dense block-diagonal mask transformers builds for
    sdpa from `position_ids`, and the packed rows do not see each other."""
    model = small_llama().eval()
    batch = collate(padding_free=True)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    with torch.no_grad():
        dense = model.model(**inputs, use_cache=False).last_hidden_state
        with packed_attention(model):
            per_row = model.model(**inputs, use_cache=False).last_hidden_state
        alone = model.model(input_ids=batch["input_ids"][:, 5:24], use_cache=False).last_hidden_state
    torch.testing.assert_close(per_row, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_row[:, 5:24], alone, rtol=1e-5, atol=1e-5)


def test_packed_attention_switches_sdpa_only_inside_the_block() -> None:
    model = small_llama()
    seen = []
    with packed_attention(model):
        seen.append(model.config._attn_implementation)
    assert seen == [VARLEN_SDPA]
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with packed_attention(model):
        assert model.config._attn_implementation == "eager"


def test_varlen_sdpa_without_position_ids_is_plain_sdpa() -> None:
    model = small_llama()
    attention = model.model.layers[0].self_attn
    query, key, value = (torch.randn(2, heads, 6, 16) for heads in (4, 2, 2))
    out, _ = varlen_sdpa(attention, query, key, value, None, scaling=0.25)
    expected = F.scaled_dot_product_attention(query, key.repeat_interleave(2, dim=1),
                                              value.repeat_interleave(2, dim=1), is_causal=True, scale=0.25)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_cross_entropy_equals_full_cross_entropy(bias: bool) -> None:
    torch.manual_seed(2)
    head = torch.nn.Linear(16, 97, bias=bias)
    hidden = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 97, (50,))

    full_logits = head(hidden).float()
    full = F.cross_entropy(full_logits, targets, reduction="sum")
    (2.5 * full).backward()
    expected = {"hidden": hidden.grad, "weight": head.weight.grad, "bias": head.bias.grad if bias else None}
    hidden.grad, head.weight.grad = None, None
    if bias:
        head.bias.grad = None

    total, hits = chunked_cross_entropy(hidden, head, targets, chunk=7)
    (2.5 * total).backward()
    torch.testing.assert_close(total, full.detach(), rtol=1e-5, atol=1e-5)
    assert hits.item() == (full_logits.argmax(dim=-1) == targets).sum().item()
    got = {"hidden": hidden.grad, "weight": head.weight.grad, "bias": head.bias.grad if bias else None}
    for name, grad in expected.items():
        if grad is None:
            assert got[name] is None
        else:
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_chunked_cross_entropy_of_a_frozen_head_grads_only_the_hidden_states() -> None:
    torch.manual_seed(3)
    head = torch.nn.Linear(16, 97, bias=False).requires_grad_(False)
    hidden = torch.randn(20, 16, requires_grad=True)
    targets = torch.randint(0, 97, (20,))
    total, _ = chunked_cross_entropy(hidden, head, targets, chunk=3)
    total.backward()
    assert head.weight.grad is None
    reference = hidden.detach().clone().requires_grad_(True)
    F.cross_entropy(head(reference), targets, reduction="sum").backward()
    torch.testing.assert_close(hidden.grad, reference.grad, rtol=1e-5, atol=1e-6)


def test_chunked_cross_entropy_under_no_grad_keeps_no_graph() -> None:
    head = torch.nn.Linear(16, 97)
    hidden = torch.randn(10, 16, requires_grad=True)
    targets = torch.randint(0, 97, (10,))
    with torch.no_grad():
        total, _ = chunked_cross_entropy(hidden, head, targets, chunk=4)
        expected = F.cross_entropy(head(hidden), targets, reduction="sum")
    assert not total.requires_grad
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
