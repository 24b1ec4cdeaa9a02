"""Random mixed-attention problems for the kernel tests (CPU, Triton interpreter, ONNX) and the benchmarks.

Kept in the package (not in tests/) so that a subprocess running the Triton interpreter, and other test files,
can build exactly the same cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unipose_sdk.models.attention_mask import MixedMask

BLOCK_PLACES = ("start", "middle", "end", "empty", "queries")


@dataclass
class Case:
    q: Tensor
    k: Tensor
    v: Tensor
    mask: MixedMask
    scale: float

    def args(self) -> tuple:
        """Positional arguments of torch.ops.unipose.mixed_attention."""
        return (self.q, self.k, self.v, *self.mask.fields(), self.scale)

    def describe(self) -> str:
        fields = {n: t.tolist() for n, t in zip(("bs", "be", "ks", "off"), self.mask.fields())}
        return f"q {tuple(self.q.shape)} k {tuple(self.k.shape)} {fields}"


def random_case(
    gen: torch.Generator,
    *,
    batch: int = 2,
    heads_q: int = 4,
    heads_kv: int = 2,
    num_queries: int = 37,
    num_keys: int | None = None,
    head_dim: int = 64,
    block_place: str = "middle",
    block_len: int | None = None,
    left_padding: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Case:
    """One problem with per-row bounds drawn from `gen`.

    num_keys > num_queries puts the queries at the end of a cache (a decode step or a chunk after a prefix);
    block_place says where the bidirectional block sits: at the start / middle / end of the key range, "queries"
    (over the query positions, as when BEGIN + 80 pose queries are fed after a prefix), or "empty".
    """
    num_keys = num_queries if num_keys is None else num_keys
    assert num_keys >= num_queries

    def randint(low: int, high: int) -> int:  # inclusive bounds, high >= low
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    starts, ends, key_starts, offsets = [], [], [], []
    for _ in range(batch):
        offset = randint(0, num_keys - num_queries)
        length = block_len if block_len is not None else randint(1, max(1, min(80, num_keys // 2)))
        length = min(length, num_keys)
        if block_place == "start":
            start = 0
        elif block_place == "end":
            start = num_keys - length
        elif block_place == "queries":
            start = offset + randint(0, max(0, num_queries - 1))
            length = min(length, num_keys - start)
        elif block_place == "middle":
            start = randint(0, num_keys - length)
        elif block_place == "empty":
            start, length = randint(0, num_keys), 0
        else:
            raise ValueError(f"block_place {block_place!r} not in {BLOCK_PLACES}")
        key_start = randint(0, max(0, min(num_keys - 1, offset + num_queries // 2))) if left_padding else 0
        starts.append(start)
        ends.append(start + length)
        key_starts.append(key_start)
        offsets.append(offset)
    mask = MixedMask.from_lists(starts, ends, key_starts, offsets)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    q = randn(batch, heads_q, num_queries, head_dim)
    k = randn(batch, heads_kv, num_keys, head_dim)
    v = randn(batch, heads_kv, num_keys, head_dim)
    return Case(q, k, v, mask, head_dim ** -0.5)
