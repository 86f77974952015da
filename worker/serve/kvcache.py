"""The engine's KV cache: transformers' DynamicCache with layers that grow in place instead of concatenating.

DynamicLayer appends each step's keys with `torch.cat`, copying the whole cache of every layer at every decode
step; here each layer keeps a buffer with room to spare and writes the new token into it. The batch changes
shape only when requests join (left-padded to a common length) or finish (rows dropped, dead padding
columns cut), both done here."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

HEADROOM = 64


class GrowingLayer(DynamicLayer):
    """keys/values are views of the first `length` positions of buffers (batch, heads, capacity, head_dim)."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.is_initialized = True

    def _reserve(self, needed: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        if self._k is not None and needed <= self._k.shape[2]:
            return
        capacity = max(needed + HEADROOM, 2 * (self._k.shape[2] if self._k is not None else 0))
        k = like_k.new_empty((*like_k.shape[:2], capacity, like_k.shape[3]))
        v = like_v.new_empty((*like_v.shape[:2], capacity, like_v.shape[3]))
        if self._k is not None and self._v is not None and self.length:
            k[:, :, :self.length] = self._k[:, :, :self.length]
            v[:, :, :self.length] = self._v[:, :, :self.length]
        self._k, self._v = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        self._reserve(end, key_states, value_states)
        assert self._k is not None and self._v is not None
        self._k[:, :, start:end] = key_states
        self._v[:, :, start:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Take new contents (after a merge or a row drop), with room to grow."""
        self._k = self._v = None
        self.length = 0
        self._reserve(keys.shape[2], keys, values)
        assert self._k is not None and self._v is not None
        self._k[:, :, :keys.shape[2]] = keys
        self._v[:, :, :values.shape[2]] = values
        self.length = keys.shape[2]
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            keys, values = _kv(self)
            self.replace(keys[indices], values[indices])


def new_cache() -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer  # layers are made on first use, one per decoder layer
    return cache


def _layers(cache: DynamicCache) -> list[GrowingLayer]:
    return list(cache.layers)  # type: ignore[arg-type]


def _kv(layer: GrowingLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]
    return F.pad(t, pad)


def merge(cache: DynamicCache, mask: torch.Tensor, other: DynamicCache,
          other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows to `cache`, both left-padded to the longer one; returns the merged 2-D mask."""
    width = max(mask.shape[1], other_mask.shape[1])
    for mine, theirs in zip(_layers(cache), _layers(other), strict=True):
        (k1, v1), (k2, v2) = _kv(mine), _kv(theirs)
        mine.replace(torch.cat([_left_pad(k1, width, 2), _left_pad(k2, width, 2)]),
                     torch.cat([_left_pad(v1, width, 2), _left_pad(v2, width, 2)]))
    return torch.cat([_left_pad(mask, width, 1), _left_pad(other_mask, width, 1)])


def keep_rows(cache: DynamicCache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep only `rows`, and cut the columns that are padding for all of them; returns the new mask."""
    index = torch.tensor(rows, device=mask.device)
    mask = mask[index]
    first = int(mask.any(0).nonzero()[0])
    for layer in _layers(cache):
        keys, values = _kv(layer)
        layer.replace(keys[index, :, first:], values[index, :, first:])
    return mask[:, first:]
