"""The one attention function of the LLM, and the registry of its implementations.

`mixed_attention(q, k, v, mask)` is the only place the model computes attention. The default implementation is
PyTorch SDPA with the dense boolean mask from `attention_mask.dense_mask` (the PyTorch reference path). Faster
implementations (fused kernels in `unipose_sdk.kernels`) register themselves under a name and are chosen per
device; `use_attention_impl("name")` forces one (tests, benchmarks, export).

Shapes: q [B, Hq, Tq, D]; k, v [B, Hkv, Tk, D] with Hq a multiple of Hkv (grouped-query attention).
A query row with no allowed key (a left-padding query) yields zeros, never NaN.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch.nn.functional as F
from torch import Tensor

from unipose_sdk.models.attention_mask import MixedMask, dense_mask

AttentionImpl = Callable[[Tensor, Tensor, Tensor, MixedMask, float], Tensor]


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


_IMPLS: dict[str, AttentionImpl] = {"sdpa_dense": sdpa_dense}
# Implementation chosen per device type when nothing is forced; kernels update this when they register.
_DEFAULT_BY_DEVICE: dict[str, str] = {}
_forced = threading.local()


_kernels_loaded = False


def _load_kernels() -> None:
    """Import unipose_sdk.kernels once, on first use: it registers the "fused" implementation (cheap, no triton)."""
    global _kernels_loaded
    if not _kernels_loaded:
        _kernels_loaded = True
        try:
            import unipose_sdk.kernels  # noqa: F401
        except ImportError:  # a trimmed install without the kernels package: sdpa_dense only
            pass


def register_attention_impl(name: str, impl: AttentionImpl, default_for: tuple[str, ...] = ()) -> None:
    """Add an implementation; `default_for` lists device types ("cpu", "cuda") it becomes the default for."""
    _IMPLS[name] = impl
    for device_type in default_for:
        _DEFAULT_BY_DEVICE[device_type] = name


def available_attention_impls() -> list[str]:
    _load_kernels()
    return sorted(_IMPLS)


@contextlib.contextmanager
def use_attention_impl(name: str) -> Iterator[None]:
    """Force one implementation inside the block (per thread)."""
    _load_kernels()
    if name not in _IMPLS:
        raise KeyError(f"unknown attention implementation {name!r}; available: {available_attention_impls()}")
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


def resolve_attention_impl(device_type: str) -> str:
    _load_kernels()
    forced = getattr(_forced, "name", None)
    if forced is not None:
        return forced
    return _DEFAULT_BY_DEVICE.get(device_type, "sdpa_dense")


def mixed_attention(q: Tensor, k: Tensor, v: Tensor, mask: MixedMask, scale: float | None = None) -> Tensor:
    """Attention of q over k, v under the mixed mask. Returns [B, Hq, Tq, D]."""
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _IMPLS[resolve_attention_impl(q.device.type)](q, k, v, mask, scale)
