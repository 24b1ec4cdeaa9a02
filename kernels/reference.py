"""Pure-torch reference of the fused mixed-attention op: the fallback of every kernel and the yardstick of the tests.

It takes the mask as the four per-row int32 tensors of `MixedMask` (cache-slot coordinates; the rule is in
`unipose_sdk.models.attention_mask`, and this file asks `dense_mask` for it rather than restating it), computes
in float32 whatever the input dtype, and returns the input dtype. Grouped-query attention is a reshape of the
query heads into [B, Hkv, G, Tq, D] so the K/V heads are broadcast, never copied.

Shapes: q [B, Hq, Tq, D]; k, v [B, Hkv, Tk, D]; block_start, block_end, key_start, query_offset [B] int32.
A query row with no allowed key yields zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.attention_mask import MixedMask, dense_mask


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor,
    block_start: Tensor, block_end: Tensor, key_start: Tensor, query_offset: Tensor,
) -> None:
    """Shape / dtype / device checks shared by every implementation (cheap: no device synchronisation)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InvalidInputError.make(
            f"q, k, v of {q.dim()}, {k.dim()}, {v.dim()} dimensions",
            "4-D tensors q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D]",
            "move the head axis before the token axis (x.view(B, T, H, D).transpose(1, 2)).",
        )
    batch, heads_q, _, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise InvalidInputError.make(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}",
            "k and v of equal shape [B, Hkv, Tk, D] with the B and D of q",
            "pass keys and values of the same cache.",
        )
    if heads_q % k.shape[1] != 0:
        raise InvalidInputError.make(
            f"{heads_q} query heads and {k.shape[1]} key/value heads",
            "a number of query heads that is a multiple of the key/value heads (grouped-query attention)",
            "check the model configuration's num_heads / num_kv_heads.",
        )
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise InvalidInputError.make(
            f"dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}", "one floating dtype for q, k and v",
            "cast the cache and the queries to the model dtype.",
        )
    for name, t in zip(("block_start", "block_end", "key_start", "query_offset"),
                       (block_start, block_end, key_start, query_offset)):
        if t.shape != (batch,) or t.dtype != torch.int32:
            raise InvalidInputError.make(
                f"{name} of shape {tuple(t.shape)} and dtype {t.dtype}", f"an int32 tensor of shape ({batch},)",
                "build the bounds with MixedMask.from_lists(...) or MixedMask.to(device).",
            )
        if t.device != q.device:
            raise InvalidInputError.make(
                f"{name} on {t.device} and q on {q.device}", "the mask bounds on the device of q",
                "call mask.to(q.device) first.",
            )


def mixed_attention_reference(
    q: Tensor, k: Tensor, v: Tensor,
    block_start: Tensor, block_end: Tensor, key_start: Tensor, query_offset: Tensor,
    scale: float,
) -> Tensor:
    """Masked softmax attention in float32, written out step by step. Returns [B, Hq, Tq, D] in q's dtype."""
    check_inputs(q, k, v, block_start, block_end, key_start, query_offset)
    batch, heads_q, num_queries, head_dim = q.shape
    heads_kv, num_keys = k.shape[1], k.shape[2]
    groups = heads_q // heads_kv

    qf = q.float().reshape(batch, heads_kv, groups, num_queries, head_dim)
    kf = k.float().unsqueeze(2)  # [B, Hkv, 1, Tk, D]: broadcast over the group, no copy
    vf = v.float().unsqueeze(2)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # [B, Hkv, G, Tq, Tk]

    allowed = dense_mask(MixedMask(block_start, block_end, key_start, query_offset), num_queries, num_keys)
    allowed = allowed.unsqueeze(1)  # [B, 1, 1, Tq, Tk]
    scores = scores.masked_fill(~allowed, float("-inf"))
    # softmax of a row that is all -inf is NaN; such rows (left-padding queries) must give 0.
    has_key = allowed.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1).masked_fill(~has_key, 0.0)
    out = torch.matmul(probs, vf)  # [B, Hkv, G, Tq, D]
    return out.reshape(batch, heads_q, num_queries, head_dim).to(q.dtype)
