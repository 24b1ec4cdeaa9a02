"""The UniPose mixed attention mask, defined once.

`mask_mod` states the rule below; `dense_mask` materialises it, and `key_intervals` gives it as one key interval
per query (the form the model's per-call attention bias and the kernels' block bounds use). Every attention
implementation in the SDK (SDPA, Triton, C++, the ONNX graph forms) is tested against `mask_mod`.

Coordinates. Keys are indexed by their slot in the KV cache, 0..Tk-1. Query i of a call sits at cache slot
`query_offset[b] + i` (prefill of a fresh cache: offset 0; a decode step: offset = tokens already cached).
All per-row bounds below are in cache slots.

Rule. Query i of row b may attend key j iff
    j >= key_start[b]                                   (left padding of row b is never attended)
    and (j <= i + query_offset[b]                       (causal, for text, images and input poses)
         or (block_start[b] <= i + query_offset[b] < block_end[b]
             and block_start[b] <= j < block_end[b]))   (bidirectional inside the generated pose block)
An empty block (block_start == block_end) makes the row purely causal. In UniPose the block holds the 80
pose-query positions that follow a BEGIN token; BEGIN itself is causal.

Interval form. The keys a query may see are always ONE interval: the causal keys are [0, slot] (slot = the
query's cache slot), and a query inside the block also sees the block, which starts at or before its slot; so
the allowed keys are key_start[b] <= j < end with end = max(slot + 1, block_end[b]) for a query inside the block,
else slot + 1. An empty interval (end <= key_start) is a query without any key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# The four fields as Python ints per row: (block_start, block_end, key_start, query_offset).
HostMask = tuple[list[int], list[int], list[int], list[int]]


@dataclass(frozen=True)
class MixedMask:
    """Per-row description of the mixed mask; every field is an int32 tensor of shape [B]."""

    block_start: Tensor
    block_end: Tensor
    key_start: Tensor
    query_offset: Tensor

    @staticmethod
    def causal(batch_size: int, device: torch.device | str = "cpu", query_offset: int = 0) -> MixedMask:
        """A purely causal mask with no padding and no pose block."""
        zeros = torch.zeros(batch_size, dtype=torch.int32, device=device)
        return MixedMask(zeros, zeros, zeros, torch.full_like(zeros, query_offset))

    @staticmethod
    def from_lists(
        block_start: list[int],
        block_end: list[int],
        key_start: list[int] | None = None,
        query_offset: list[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> MixedMask:
        """Build from plain Python lists (tests, prompt builders)."""
        n = len(block_start)

        def as_i32(values: list[int] | None) -> Tensor:
            return torch.tensor(values if values is not None else [0] * n, dtype=torch.int32, device=device)

        return MixedMask(as_i32(block_start), as_i32(block_end), as_i32(key_start), as_i32(query_offset))

    @property
    def batch_size(self) -> int:
        return int(self.block_start.shape[0])

    def to(self, device: torch.device | str) -> MixedMask:
        return MixedMask(*(t.to(device=device, dtype=torch.int32) for t in self.fields()))

    def fields(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.block_start, self.block_end, self.key_start, self.query_offset)

    def to_host(self) -> HostMask:
        """The fields as Python ints (off the CPU this waits for the device)."""
        return self.block_start.tolist(), self.block_end.tolist(), self.key_start.tolist(), self.query_offset.tolist()

    def validate(self, num_queries: int, num_keys: int) -> None:
        """Raise ValueError when the description cannot be right for these lengths."""
        batch = self.batch_size
        for name, t in zip(("block_start", "block_end", "key_start", "query_offset"), self.fields()):
            if t.shape != (batch,):
                raise ValueError(f"MixedMask.{name} has shape {tuple(t.shape)}, expected ({batch},)")
        if bool((self.block_end < self.block_start).any()):
            raise ValueError(
                f"MixedMask block_end < block_start: start={self.block_start.tolist()} end={self.block_end.tolist()}"
            )
        if bool((self.query_offset + num_queries > num_keys).any()):
            raise ValueError(
                f"MixedMask query_offset={self.query_offset.tolist()} + {num_queries} queries exceeds the "
                f"{num_keys} keys: every query must have its own slot in the cache"
            )


def mask_mod(mask: MixedMask) -> MaskMod:
    """The rule above in FlexAttention's `mask_mod(b, h, q_idx, kv_idx)` form (h is unused: all heads share it)."""
    block_start, block_end, key_start, query_offset = mask.fields()

    def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_pos = q_idx + query_offset[b]
        causal = kv_idx <= q_pos
        q_in_block = (q_pos >= block_start[b]) & (q_pos < block_end[b])
        kv_in_block = (kv_idx >= block_start[b]) & (kv_idx < block_end[b])
        return (kv_idx >= key_start[b]) & (causal | (q_in_block & kv_in_block))

    return mod


def dense_mask(mask: MixedMask, num_queries: int, num_keys: int) -> Tensor:
    """Materialise the mask as a boolean tensor [B, 1, Tq, Tk] (True = may attend), via `mask_mod`."""
    device = mask.block_start.device
    b = torch.arange(mask.batch_size, device=device).view(-1, 1, 1)
    q_idx = torch.arange(num_queries, device=device).view(1, -1, 1)
    kv_idx = torch.arange(num_keys, device=device).view(1, 1, -1)
    h = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(mask)(b, h, q_idx, kv_idx).unsqueeze(1)


def key_interval_end(slot: int, block_start: int, block_end: int) -> int:
    """End (exclusive) of the keys a query at cache slot `slot` may see, for plain ints (see "Interval form")."""
    return max(slot + 1, block_end) if block_start <= slot < block_end else slot + 1


def key_intervals(mask: MixedMask, num_queries: int) -> tuple[Tensor, Tensor]:
    """The rule as one key interval per query: query i of row b may attend exactly the keys start[b] <= j <
    end[b, i]. Returns start [B, 1] (= key_start) and end [B, Tq], int32 (see "Interval form")."""
    block_start, block_end, key_start, query_offset = (field.view(-1, 1) for field in mask.fields())
    slot = query_offset + torch.arange(num_queries, dtype=query_offset.dtype, device=query_offset.device)
    after_slot = slot + 1
    in_block = (slot >= block_start) & (slot < block_end)
    return key_start, torch.where(in_block, torch.maximum(after_slot, block_end), after_slot)
