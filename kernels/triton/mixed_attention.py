"""Mixed attention forward in Triton (flash-attention style online softmax), for CUDA tensors.

One program per (query tile of BLOCK_M rows, batch row x query head). Query slot `pos` of row b sees exactly the
keys [key_start_b, limit(pos)) with limit(pos) = max(pos + 1, block_end_b) inside the block [block_start_b,
block_end_b) and pos + 1 elsewhere (the rule of unipose_sdk/models/attention_mask.py, rewritten as one interval per
query). Over the tile's rows this gives, per program:
    key_hi  = max limit : key tiles from here on are masked for every row -> never visited;
    full_hi = min limit : key tiles inside [key_start, full_hi) are allowed for every row -> no mask arithmetic;
so the key loop runs in three stretches: one partial tile before key_start's tile boundary (masked), the full
tiles (unmasked), the tiles up to key_hi (masked). Grouped-query attention is index arithmetic on the head
(h_kv = h // groups): K/V are never repeated. Query rows without an allowed key give 0 (no NaN: the running
maximum is made finite before exponentiating).

Importing this module imports triton. Set TRITON_INTERPRET=1 before that import to run it on CPU tensors in the
Triton interpreter (tests do so in a subprocess; small shapes only, and a single autotune config there).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list[triton.Config]:
    if INTERPRET:  # autotuning would time every config on the CPU: one small tile shape is enough for correctness
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    shapes = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages): prefill-sized first, then small-Tq ones
        (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 4),
        (64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 4), (16, 64, 4, 3), (16, 128, 4, 3),
    ]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune(configs, named_args, **kwargs):
    """Do not time query tiles far larger than the number of queries (decode steps, the 81-query pose step)."""
    q_bucket = named_args["Q_BUCKET"] if "Q_BUCKET" in named_args else kwargs["Q_BUCKET"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, q_bucket)]
    return kept or configs[:1]


@triton.jit
def _attend_key_tile(
    acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start_n, key_start, limit, num_keys,
    offs_n, offs_d, MASKED: tl.constexpr, IEEE: tl.constexpr,
):
    cols = start_n + offs_n
    k_ptrs = k_base + cols[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :]
    if MASKED:
        in_range = cols[:, None] < num_keys
        k = tl.load(k_ptrs, mask=in_range, other=0.0)
        v = tl.load(v_ptrs, mask=in_range, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if IEEE:  # float32 inputs: no TF32 rounding
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    if MASKED:
        allowed = (cols[None, :] >= key_start) & (cols[None, :] < limit[:, None])
        s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet stays at 0
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "Q_BUCKET", "K_BUCKET", "IEEE"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _mixed_attention_fwd(
    Q, K, V, Out, BlockStart, BlockEnd, KeyStart, QueryOffset,
    qk_scale,  # softmax scale * log2(e): the softmax runs in base 2
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    heads_q, groups, num_queries, num_keys,
    Q_BUCKET, K_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    h_kv = h // groups

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < num_queries

    block_start = tl.load(BlockStart + b)
    block_end = tl.load(BlockEnd + b)
    key_start = tl.maximum(tl.load(KeyStart + b), 0)
    pos = offs_m + tl.load(QueryOffset + b)
    in_block = (pos >= block_start) & (pos < block_end)
    limit = tl.minimum(tl.where(in_block, tl.maximum(pos + 1, block_end), pos + 1), num_keys)
    limit = tl.where(row_valid, limit, 0)
    key_hi = tl.max(limit, 0)
    full_hi = tl.min(tl.where(row_valid, limit, num_keys), 0)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
    q = (q * qk_scale).to(q.dtype)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    lo = (key_start // BLOCK_N) * BLOCK_N
    full_lo = tl.cdiv(key_start, BLOCK_N) * BLOCK_N
    full_end = tl.maximum(full_lo, (full_hi // BLOCK_N) * BLOCK_N)
    # 1. the tile that holds key_start when it is not on a tile boundary (masked)
    for start_n in range(lo, full_lo, BLOCK_N):
        acc, m_i, l_i = _attend_key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start_n,
                                         key_start, limit, num_keys, offs_n, offs_d, True, IEEE)
    # 2. tiles every row of the tile may fully see (no mask)
    for start_n in range(full_lo, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start_n,
                                         key_start, limit, num_keys, offs_n, offs_d, False, IEEE)
    # 3. the diagonal / block-edge tiles up to the last key any row may see (masked)
    for start_n in range(full_end, key_hi, BLOCK_N):
        acc, m_i, l_i = _attend_key_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start_n,
                                         key_start, limit, num_keys, offs_n, offs_d, True, IEEE)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # rows without an allowed key: acc is 0, the output is 0
    out = acc / l_safe[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_valid[:, None])


def _bucket(n: int, cap: int) -> int:
    return min(cap, 1 << max(0, math.ceil(math.log2(max(1, n)))))


def mixed_attention_triton(
    q: Tensor, k: Tensor, v: Tensor,
    block_start: Tensor, block_end: Tensor, key_start: Tensor, query_offset: Tensor,
    scale: float,
) -> Tensor:
    """Launch the kernel. q [B, Hq, Tq, D]; k, v [B, Hkv, Tk, D]; bounds int32 [B]; D a power of two >= 16.

    Inputs are checked by the caller (unipose_sdk.kernels.ops); here only the innermost stride is fixed up.
    """
    batch, heads_q, num_queries, head_dim = q.shape
    heads_kv, num_keys = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bounds = [t.contiguous() for t in (block_start, block_end, key_start, query_offset)]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.numel() == 0:
        return out

    def grid(meta):
        return (triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads_q)

    _mixed_attention_fwd[grid](
        q, k, v, out, *bounds, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        heads_q, heads_q // heads_kv, num_queries, num_keys,
        _bucket(num_queries, 256), _bucket(num_keys, 8192),
        HEAD_DIM=head_dim, IEEE=q.dtype == torch.float32,
    )
    return out
