"""The LLM's attention: its implementations, and the one router that picks among them.

The model asks `resolve_attention_impl(device_type, num_queries, num_keys)` once per forward call and prepares
the answer once for all its layers (`prepare_attention`). `mixed_attention(q, k, v, mask)` asks the same router
for a single call (kernels, export, tests). `use_attention_impl(name)` forces one implementation (tests,
benchmarks, export).

Implementations:
- "sdpa_dense", the PyTorch reference: SDPA with the boolean mask from `attention_mask.dense_mask`, rebuilt on
  every call, and the K/V heads repeated for grouped-query attention.
- "sdpa": the same SDPA, with the mask prepared once per forward from its interval form
  (`attention_mask.key_intervals`) as an additive bias. A one-query call (a decode step) puts the G query heads of
  each KV head as G query rows of that head ([B, Hkv, G, D]: no repeated K/V) and passes no mask at all when no
  attended key is masked (batch 1 without padding, known on the CPU from the host-side mask).
- "fused": the custom op `torch.ops.unipose.mixed_attention` (C++ kernel on the CPU, Triton on CUDA), filed here
  by `unipose_sdk.kernels` when that package is imported (`unipose_sdk.loading`, the one torch loader, imports
  it). The kernels build on this module (the mask, the registry), never the reverse, so this module does not
  import them; a model built by hand without the kernels imported takes SDPA everywhere.

The default route (nothing forced):
- CPU: "sdpa" for decode steps and for calls of up to SDPA_MAX_SCORES scores per head (the tiny model's prefill
  and pose block); "fused" above that when the C++ kernel is built (and filed). The fused kernel re-tiles the keys and
  allocates scratch on every call, which a short call cannot amortise; from about 300 x 300 scores it is ahead
  (benchmarks/results/attention_cpu.md).
- CUDA and other devices: "sdpa" for every call. The Triton kernel has not been timed against SDPA on a GPU, so
  it runs only when forced (`FUSED_IS_CUDA_DEFAULT` in kernels/ops.py).

Shapes: q [B, Hq, Tq, D]; k, v [B, Hkv, Tk, D] with Hq a multiple of Hkv (grouped-query attention). Prepared
attention takes q flattened over tokens, [N, Hq, D] with N = B * Tq, and returns [N, Hq * D] (the model's layout).
A query with no allowed key (a left-padding query) yields zeros, never NaN.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from unipose_sdk.models.attention_mask import HostMask, MixedMask, dense_mask, key_interval_end, key_intervals

AttentionImpl = Callable[[Tensor, Tensor, Tensor, MixedMask, float], Tensor]  # (q, k, v, mask, scale) -> [B, Hq, Tq, D]
PreparedAttention = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q [N, Hq, D], k, v) -> [N, Hq * D]

# Multi-token calls with more scores per head (Tq * Tk) than this take the long-call implementation of their device.
SDPA_MAX_SCORES = 300 * 300


def sdpa_dense(q: Tensor, k: Tensor, v: Tensor, mask: MixedMask, scale: float) -> Tensor:
    """Reference: SDPA with the materialised mask; GQA by repeating the KV heads."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    allowed = dense_mask(mask.to(q.device), q.shape[2], k.shape[2])  # [B, 1, Tq, Tk]
    has_key = allowed.any(dim=-1, keepdim=True)  # [B, 1, Tq, 1]
    # A row with no allowed key would be NaN inside SDPA: let it see everything, then zero it.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has_key, scale=scale)
    return out * has_key.to(out.dtype)


# ---------------------------------------------------------------------------------------------- "sdpa"
def prepare_sdpa(mask: MixedMask, num_queries: int, num_keys: int, scale: float, dtype: torch.dtype,
                 host: HostMask | None = None) -> PreparedAttention:
    """SDPA with the mask built once for every layer of a call. host: the mask's ints, when they can be read
    without a device sync; they let the common cases skip tensor work."""
    if num_queries == 1:
        return _sdpa_one_query(mask, num_keys, scale, dtype, host)
    return _sdpa_with_bias(mask, num_queries, num_keys, scale, dtype, host)


def _every_query_has_a_key(host: HostMask, num_keys: int) -> bool:
    # A row's first query has its smallest interval end (the end grows with the slot).
    return all(min(key_interval_end(offset, start, end), num_keys) > max(key_start, 0)
               for start, end, key_start, offset in zip(*host))


def _sdpa_one_query(mask: MixedMask, num_keys: int, scale: float, dtype: torch.dtype,
                    host: HostMask | None) -> PreparedAttention:
    """Masked keys get the lowest finite bias rather than -inf, so a row without any key stays finite; it is then
    zeroed, as the reference does."""
    bias = keep = None
    sees_all = host is not None and all(key_start <= 0 and key_interval_end(offset, start, end) >= num_keys
                                        for start, end, key_start, offset in zip(*host))
    if not sees_all:
        batch, device = mask.batch_size, mask.key_start.device
        key_start, key_end = key_intervals(mask, 1)  # [B, 1], [B, 1]
        keys = torch.arange(num_keys, dtype=key_start.dtype, device=device)
        allowed = (keys >= key_start) & (keys < key_end)  # [B, Tk]
        bias = torch.zeros(batch, 1, 1, num_keys, dtype=dtype, device=device)
        bias.masked_fill_(~allowed.view(batch, 1, 1, num_keys), torch.finfo(dtype).min)
        if host is None or not _every_query_has_a_key(host, num_keys):
            keep = (key_end.clamp(max=num_keys) > key_start.clamp(min=0)).to(dtype).view(batch, 1, 1, 1)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch, kv_heads, _, dim = k.shape
        out = F.scaled_dot_product_attention(q.view(batch, kv_heads, -1, dim), k, v, attn_mask=bias, scale=scale)
        return (out if keep is None else out * keep).view(batch, -1)

    return attend


def _sdpa_with_bias(mask: MixedMask, num_queries: int, num_keys: int, scale: float, dtype: torch.dtype,
                    host: HostMask | None) -> PreparedAttention:
    """As the reference, a query without any key sees every key, then is zeroed."""
    batch, device = mask.batch_size, mask.key_start.device
    key_start, key_end = key_intervals(mask, num_queries)  # [B, 1], [B, Tq]
    keys = torch.arange(num_keys, dtype=key_start.dtype, device=device)
    has_key = key_end.clamp(max=num_keys) > key_start.clamp(min=0)  # [B, Tq]
    visible = ((keys >= key_start.unsqueeze(-1)) & (keys < key_end.unsqueeze(-1))) | ~has_key.unsqueeze(-1)
    bias = torch.zeros(batch, 1, num_queries, num_keys, dtype=dtype, device=device)
    bias.masked_fill_(~visible.unsqueeze(1), float("-inf"))
    keep = None
    if host is None or not _every_query_has_a_key(host, num_keys):
        keep = has_key.to(dtype).view(batch, 1, num_queries, 1)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, heads, dim = q.shape
        batch = k.shape[0]
        out = F.scaled_dot_product_attention(q.view(batch, n // batch, heads, dim).transpose(1, 2), k, v,
                                             attn_mask=bias, scale=scale, enable_gqa=True)
        return (out if keep is None else out * keep).transpose(1, 2).reshape(n, heads * dim)

    return attend


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: MixedMask, scale: float) -> Tensor:
    """"sdpa" for a single call, heads-first layout."""
    batch, heads, num_queries, dim = q.shape
    attend = prepare_sdpa(mask.to(q.device), num_queries, k.shape[2], scale, q.dtype)
    out = attend(q.transpose(1, 2).reshape(batch * num_queries, heads, dim), k, v)
    return out.view(batch, num_queries, heads, dim).transpose(1, 2)


# -------------------------------------------------------------------------------------------- the registry
_IMPLS: dict[str, AttentionImpl] = {"sdpa_dense": sdpa_dense, "sdpa": sdpa}
# Implementations that prepare per call (mask work shared by all layers); the others are called per layer.
_PREPARERS = {"sdpa": prepare_sdpa}
# Device types whose long multi-token calls (above SDPA_MAX_SCORES) take a registered implementation.
_LONG_CALLS_BY_DEVICE: dict[str, str] = {}
_forced = threading.local()


def register_attention_impl(name: str, impl: AttentionImpl, long_calls_on: tuple[str, ...] = ()) -> None:
    """Add an implementation; `long_calls_on` lists device types ("cpu", "cuda") whose multi-token calls above
    SDPA_MAX_SCORES it takes by default."""
    _IMPLS[name] = impl
    for device_type in long_calls_on:
        _LONG_CALLS_BY_DEVICE[device_type] = name


def available_attention_impls() -> list[str]:
    return sorted(_IMPLS)


@contextlib.contextmanager
def use_attention_impl(name: str) -> Iterator[None]:
    """Force one implementation inside the block (per thread)."""
    if name not in _IMPLS:
        raise KeyError(f"unknown attention implementation {name!r}; available: {available_attention_impls()} "
                       f"(import unipose_sdk.kernels to file \"fused\")")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


def resolve_attention_impl(device_type: str, num_queries: int, num_keys: int) -> str:
    """The implementation a call of `num_queries` queries over `num_keys` keys uses on `device_type`: the forced
    one, else the default route of the module docstring."""
    forced = getattr(_forced, "name", None)
    if forced is not None:
        return forced
    if num_queries > 1 and num_queries * num_keys > SDPA_MAX_SCORES:
        return _LONG_CALLS_BY_DEVICE.get(device_type, "sdpa")
    return "sdpa"


def prepare_attention(mask: MixedMask, num_queries: int, num_keys: int, scale: float, dtype: torch.dtype,
                      host: HostMask | None = None) -> PreparedAttention:
    """The attention of one forward call, for all its layers: q [N, Hq, D], k, v [B, Hkv, Tk, D] -> [N, Hq * D].
    `mask` is on the device of q; host: its ints when readable without a device sync (see prepare_sdpa)."""
    name = resolve_attention_impl(mask.key_start.device.type, num_queries, num_keys)
    if name in _PREPARERS:
        return _PREPARERS[name](mask, num_queries, num_keys, scale, dtype, host)
    impl = _IMPLS[name]

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, heads, dim = q.shape
        out = impl(q.view(k.shape[0], n // k.shape[0], heads, dim).transpose(1, 2), k, v, mask, scale)
        return out.transpose(1, 2).reshape(n, heads * dim)

    return attend


def mixed_attention(q: Tensor, k: Tensor, v: Tensor, mask: MixedMask, scale: float | None = None) -> Tensor:
    """Attention of q over k, v under the mixed mask, by the routed implementation. Returns [B, Hq, Tq, D]."""
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _IMPLS[resolve_attention_impl(q.device.type, q.shape[2], k.shape[2])](q, k, v, mask, scale)
