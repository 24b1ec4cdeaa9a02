"""The mixed mask against hand-written matrices, its interval form against the rule, and mixed_attention
(sdpa_dense) against a naive softmax loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unipose_sdk.models.attention import mixed_attention, use_attention_impl
from unipose_sdk.models.attention_mask import MixedMask, dense_mask, key_interval_end, key_intervals, mask_mod


def matrix(rows: str) -> torch.Tensor:
    """'1100 / 1110' -> bool tensor; one string per query row, one character per key."""
    return torch.tensor([[c == "1" for c in row] for row in rows.split()], dtype=torch.bool)


def one_row(block: tuple[int, int] = (0, 0), key_start: int = 0, query_offset: int = 0) -> MixedMask:
    return MixedMask.from_lists([block[0]], [block[1]], [key_start], [query_offset])


CASES = {
    "causal": (
        one_row(),
        4,
        4,
        """
        1000
        1100
        1110
        1111
        """,
    ),
    "block at the start": (
        one_row(block=(0, 3)),
        5,
        5,
        """
        11100
        11100
        11100
        11110
        11111
        """,
    ),
    "block in the middle": (
        one_row(block=(1, 3)),
        5,
        5,
        """
        10000
        11100
        11100
        11110
        11111
        """,
    ),
    "block at the end (prompt, BEGIN, two queries)": (
        one_row(block=(3, 5)),
        5,
        5,
        """
        10000
        11000
        11100
        11111
        11111
        """,
    ),
    "empty block is causal": (
        one_row(block=(2, 2)),
        4,
        4,
        """
        1000
        1100
        1110
        1111
        """,
    ),
    "left padding: two pad slots, pad queries see nothing": (
        one_row(block=(4, 6), key_start=2),
        6,
        6,
        """
        000000
        000000
        001000
        001100
        001111
        001111
        """,
    ),
    "cache offset: a 3-token pose step written at slot 3 of 7": (
        one_row(block=(4, 6), key_start=1, query_offset=3),
        3,
        7,
        """
        0111000
        0111110
        0111110
        """,
    ),
    "decode step after a pose block sees everything before it": (
        one_row(key_start=1, query_offset=6),
        1,
        8,
        """
        01111110
        """,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dense_mask_matches_hand_written_matrix(name: str) -> None:
    mask, num_queries, num_keys, expected = CASES[name]
    got = dense_mask(mask, num_queries, num_keys)
    assert got.shape == (1, 1, num_queries, num_keys) and got.dtype == torch.bool
    assert torch.equal(got[0, 0], matrix(expected)), f"\n{got[0, 0].int()}"


def test_rows_of_one_batch_use_their_own_parameters() -> None:
    names = ["block at the end (prompt, BEGIN, two queries)", "left padding: two pad slots, pad queries see nothing"]
    masks = [CASES[n][0] for n in names]
    batch = MixedMask(*(torch.cat(fields) for fields in zip(*(m.fields() for m in masks))))
    got = dense_mask(batch, 6, 6)
    # Row 0 is the 5x5 case extended by one more causal query and key.
    expected_row0 = matrix(
        """
        100000
        110000
        111000
        111110
        111110
        111111
        """
    )
    assert torch.equal(got[0, 0], expected_row0)
    assert torch.equal(got[1, 0], matrix(CASES[names[1]][3]))


def test_mask_mod_takes_flex_attention_style_scalar_indices() -> None:
    mod = mask_mod(one_row(block=(3, 5), key_start=1))

    def t(index: int) -> torch.Tensor:
        return torch.tensor(index)

    h = t(0)
    assert bool(mod(t(0), h, t(3), t(4)))  # inside the block: a query sees a later block key
    assert not bool(mod(t(0), h, t(2), t(3)))  # BEGIN (slot 2) is causal
    assert not bool(mod(t(0), h, t(4), t(0)))  # left padding is never attended
    assert bool(mod(t(0), h, t(5), t(4)))  # after the block: causal again


def brute_force_allowed(mask: MixedMask, b: int, i: int, j: int) -> bool:
    """The rule from the module docstring, in plain Python."""
    start, end = int(mask.block_start[b]), int(mask.block_end[b])
    q = i + int(mask.query_offset[b])
    in_block = start <= q < end and start <= j < end
    return j >= int(mask.key_start[b]) and (j <= q or in_block)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dense_mask_equals_the_rule_for_random_parameters(data: st.DataObject) -> None:
    num_keys = data.draw(st.integers(1, 12))
    num_queries = data.draw(st.integers(1, num_keys))
    rows = []
    for _ in range(data.draw(st.integers(1, 3))):
        offset = data.draw(st.integers(0, num_keys - num_queries))
        start = data.draw(st.integers(0, num_keys))
        end = data.draw(st.integers(start, num_keys))
        rows.append((start, end, data.draw(st.integers(0, num_keys)), offset))
    mask = MixedMask.from_lists(*map(list, zip(*rows)))
    mask.validate(num_queries, num_keys)
    got = dense_mask(mask, num_queries, num_keys)
    for b in range(len(rows)):
        for i in range(num_queries):
            for j in range(num_keys):
                assert bool(got[b, 0, i, j]) == brute_force_allowed(mask, b, i, j)


def test_validate_rejects_impossible_descriptions() -> None:
    with pytest.raises(ValueError, match="block_end < block_start"):
        MixedMask.from_lists([3], [2]).validate(4, 4)
    with pytest.raises(ValueError, match="exceeds"):
        MixedMask.from_lists([0], [0], [0], [3]).validate(2, 4)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MixedMask, scale: float) -> torch.Tensor:
    """Loop over every (row, head, query): softmax over the allowed keys only; no allowed key -> zeros."""
    batch, num_heads, num_queries, _ = q.shape
    group = num_heads // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(num_heads):
            kv_head = h // group  # query heads h*group..: the grouped-query layout of HF's repeat_kv
            for i in range(num_queries):
                keys = [j for j in range(k.shape[2]) if brute_force_allowed(mask, b, i, j)]
                if not keys:
                    continue
                scores = torch.stack([(q[b, h, i] * k[b, kv_head, j]).sum() * scale for j in keys])
                weights = torch.softmax(scores.double(), dim=0).to(q.dtype)
                out[b, h, i] = sum(w * v[b, kv_head, j] for w, j in zip(weights, keys))
    return out


@pytest.mark.parametrize("impl", ["sdpa_dense", "sdpa"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_matches_naive_softmax_with_gqa(scale: float | None, impl: str) -> None:
    batch, num_heads, num_kv_heads, num_queries, num_keys, head_dim = 2, 4, 2, 5, 9, 8
    q = torch.randn(batch, num_heads, num_queries, head_dim)
    k = torch.randn(batch, num_kv_heads, num_keys, head_dim)
    v = torch.randn(batch, num_kv_heads, num_keys, head_dim)
    # Row 0: a pose step (BEGIN + 4 queries) written at slot 4 after a padded prompt.
    # Row 1: heavy left padding, so its first two queries (slots 2, 3) have no allowed key.
    mask = MixedMask.from_lists(block_start=[5, 6], block_end=[9, 8], key_start=[1, 4], query_offset=[4, 2])
    with use_attention_impl(impl):
        got = mixed_attention(q, k, v, mask, scale=scale)
    expected = naive_attention(q, k, v, mask, scale if scale is not None else 1 / math.sqrt(head_dim))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1, :, :2], torch.zeros(num_heads, 2, head_dim))  # fully masked rows give 0, not NaN
    assert not torch.isnan(got).any()


@pytest.mark.parametrize("key_start", [[0, 0], [1, 4], [0, 9]])
def test_sdpa_one_query_matches_naive_softmax(key_start: list[int]) -> None:
    """Decode steps: the query heads of a KV head as rows, a bias only when something is masked; row 1 of the
    last case sees no key (zeros)."""
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    mask = MixedMask.from_lists([0, 2], [0, 9], key_start=key_start, query_offset=[8, 5])
    with use_attention_impl("sdpa"):
        got = mixed_attention(q, k, v, mask)
    torch.testing.assert_close(got, naive_attention(q, k, v, mask, 8**-0.5), rtol=1e-5, atol=1e-5)


def test_mixed_attention_rejects_incompatible_head_counts() -> None:
    q = torch.randn(1, 3, 2, 4)
    kv = torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        mixed_attention(q, kv, kv, MixedMask.causal(1))


def exhaustive_masks(num_queries: int, num_keys: int) -> MixedMask:
    """Every (block, key_start, query_offset) with the block and key_start inside 0..num_keys, one per row."""
    rows = [(start, end, key_start, offset)
            for start in range(num_keys + 1) for end in range(start, num_keys + 1)
            for key_start in range(num_keys + 1) for offset in range(num_keys - num_queries + 1)]
    return MixedMask.from_lists(*map(list, zip(*rows)))


@pytest.mark.parametrize("num_queries, num_keys", [(1, 1), (1, 6), (2, 5), (4, 6), (6, 6)])
def test_key_intervals_are_the_rule_exhaustively(num_queries: int, num_keys: int) -> None:
    mask = exhaustive_masks(num_queries, num_keys)
    start, end = key_intervals(mask, num_queries)  # [B, 1], [B, Tq]
    keys = torch.arange(num_keys)
    from_intervals = (keys >= start.unsqueeze(-1)) & (keys < end.unsqueeze(-1))  # [B, Tq, Tk]
    assert torch.equal(from_intervals, dense_mask(mask, num_queries, num_keys)[:, 0])
    # The plain-int form (host-side decisions) gives the same ends.
    host_ends = [[key_interval_end(offset + i, block_start, block_end) for i in range(num_queries)]
                 for block_start, block_end, _, offset in zip(*mask.to_host())]
    assert end.tolist() == host_ends


def test_key_intervals_of_a_pose_step_row() -> None:
    # A 3-token pose step (BEGIN + 2 queries) at slot 3 of 7, two pad slots: BEGIN is causal, the queries see
    # the whole block.
    start, end = key_intervals(one_row(block=(4, 6), key_start=2, query_offset=3), 3)
    assert start.tolist() == [[2]] and end.tolist() == [[4, 6, 6]]
