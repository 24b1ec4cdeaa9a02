"""`torch.ops.unipose.mixed_attention`: one custom op, one implementation per device, a fake for tracing.

    unipose::mixed_attention(q, k, v, block_start, block_end, key_start, query_offset, scale) -> Tensor

What runs where:
- CPU: the C++ kernel `_mixed_attention_cpu` (kernels/csrc, float32; half inputs are computed in float32 and
  cast back) when the extension was built, else the torch reference.
- CUDA: the Triton kernel (kernels/triton) when triton imports and the head dimension is one it compiles for,
  else the torch reference.
- Anything else (and the meta / fake tensors of torch.compile and torch.export): the reference / a shape-only fake.
A fallback is never silent: the first time it happens per device and reason, a RuntimeWarning says what was
asked for and what runs instead.

`fused_attention(q, k, v, mask, scale)` adapts the op to the `AttentionImpl` signature of
`unipose_sdk.models.attention`, where `register_with_model()` files it under the name "fused": the model's default
for long calls on the CPU when the C++ kernel is built; elsewhere only when forced.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.kernels.reference import check_inputs, mixed_attention_reference
from unipose_sdk.models.attention import register_attention_impl
from unipose_sdk.models.attention_mask import MixedMask

_CPU_EXTENSION = "unipose_sdk.kernels._mixed_attention_cpu"
# Head dimensions the Triton kernel is compiled and tested for (tl.arange needs a power of two).
TRITON_HEAD_DIMS = (16, 32, 64, 128, 256)

# Whether "fused" becomes the model's default attention for long calls on CUDA. Off until the Triton kernel has been
# timed on a GPU against SDPA (benchmarks/bench_attention.py); until then CUDA attends with SDPA.
FUSED_IS_CUDA_DEFAULT = False

_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()
_cpu_module: ModuleType | None = None
_cpu_error: str | None = None
_triton_module: ModuleType | None = None
_triton_error: str | None = None
# Tests flip these to exercise the fallbacks without uninstalling anything.
_disabled: set[str] = set()


def _warn_once(device: str, reason: str, message: str) -> None:
    key = (device, reason)
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def cpu_extension() -> ModuleType | None:
    """The compiled CPU kernel module, or None (the reason is in `kernel_status()`)."""
    global _cpu_module, _cpu_error
    if "cpu" in _disabled:
        return None
    if _cpu_module is None and _cpu_error is None:
        try:
            _cpu_module = importlib.import_module(_CPU_EXTENSION)
        except ImportError as error:  # not built (no compiler at install time) or not loadable (missing libgomp)
            _cpu_error = f"{type(error).__name__}: {error}"
    return _cpu_module


def cpu_extension_built() -> bool:
    """Whether the compiled CPU kernel is installed, without loading it (cheap, for import-time decisions)."""
    try:
        return importlib.util.find_spec(_CPU_EXTENSION) is not None
    except (ImportError, ValueError):
        return False


def triton_kernel() -> ModuleType | None:
    """The Triton kernel module (imports triton on first use), or None."""
    global _triton_module, _triton_error
    if "cuda" in _disabled:
        return None
    if _triton_module is None and _triton_error is None:
        try:
            _triton_module = importlib.import_module("unipose_sdk.kernels.triton.mixed_attention")
        except ImportError as error:
            _triton_error = f"{type(error).__name__}: {error}"
    return _triton_module


def kernel_status() -> dict[str, Any]:
    """What the op runs on each device here, for `unipose info`, benchmarks and bug reports."""
    ext = cpu_extension()
    cpu: dict[str, Any] = {"kernel": "c++" if ext is not None else "torch reference"}
    if ext is not None:
        cpu.update(isa=ext.supported_isas()[0], openmp=bool(ext.openmp()))
    elif "cpu" in _disabled:
        cpu["reason"] = "disabled"
    else:
        cpu["reason"] = _cpu_error
    triton_found = importlib.util.find_spec("triton") is not None
    cuda: dict[str, Any] = {
        "kernel": "triton" if triton_found else "torch reference",
        "fused_is_default": FUSED_IS_CUDA_DEFAULT,
    }
    if not triton_found:
        cuda["reason"] = "triton is not installed"
    return {"cpu": cpu, "cuda": cuda}


# --------------------------------------------------------------------------------------------- the custom op
# Defined with torch.library.Library rather than @torch.library.custom_op: custom_op wraps every backend function
# in torch._disable_dynamo, whose first call imports torch._dynamo and with it triton (seconds, and a GPU
# compiler stack on a CPU-only call); plain Library kernels are called directly.
_lib = torch.library.Library("unipose", "DEF")
_lib.define(
    "mixed_attention(Tensor q, Tensor k, Tensor v, Tensor block_start, Tensor block_end, Tensor key_start, "
    "Tensor query_offset, float scale) -> Tensor"
)


def mixed_attention(
    q: Tensor, k: Tensor, v: Tensor,
    block_start: Tensor, block_end: Tensor, key_start: Tensor, query_offset: Tensor,
    scale: float,
) -> Tensor:
    """Attention of q [B, Hq, Tq, D] over k, v [B, Hkv, Tk, D] under the mixed mask (see attention_mask.py).

    Same as torch.ops.unipose.mixed_attention(...): the C++ kernel on CPU, the Triton kernel on CUDA, the torch
    reference elsewhere. Forward kernels only; gradients (if asked for) come from the reference.
    """
    return torch.ops.unipose.mixed_attention(q, k, v, block_start, block_end, key_start, query_offset, scale)


@torch.library.register_fake("unipose::mixed_attention", lib=_lib)
def _mixed_attention_fake(q, k, v, block_start, block_end, key_start, query_offset, scale):
    check_inputs(q, k, v, block_start, block_end, key_start, query_offset)
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _mixed_attention_other(q, k, v, block_start, block_end, key_start, query_offset, scale):
    # Devices without a dedicated kernel (e.g. MPS): the torch reference.
    return mixed_attention_reference(q, k, v, block_start, block_end, key_start, query_offset, scale)


def _mixed_attention_cpu(q, k, v, block_start, block_end, key_start, query_offset, scale):
    ext = cpu_extension()
    if ext is None:
        _warn_once(
            "cpu", "no-extension",
            "unipose::mixed_attention on CPU: the fused C++ kernel was asked for but is not available "
            f"({'disabled' if 'cpu' in _disabled else _cpu_error}); using the torch reference instead. "
            "Reinstall unipose-sdk with a C++17 compiler (and OpenMP) to build it.",
        )
        return mixed_attention_reference(q, k, v, block_start, block_end, key_start, query_offset, scale)
    check_inputs(q, k, v, block_start, block_end, key_start, query_offset)
    if q.shape[-1] > 256:
        _warn_once(
            "cpu", "head-dim",
            f"unipose::mixed_attention on CPU: head dimension {q.shape[-1]} is above the C++ kernel's 256; "
            "using the torch reference instead.",
        )
        return mixed_attention_reference(q, k, v, block_start, block_end, key_start, query_offset, scale)

    # The kernel is float32 only; .detach() because numpy views refuse tensors that require grad.
    def f32(t: Tensor) -> Tensor:
        return t.detach().to(torch.float32).contiguous()

    qf, kf, vf = f32(q), f32(k), f32(v)
    out = torch.empty_like(qf)
    bounds = [t.detach().contiguous().numpy() for t in (block_start, block_end, key_start, query_offset)]
    ext.forward(qf.numpy(), kf.numpy(), vf.numpy(), *bounds, out.numpy(), float(scale),
                torch.get_num_threads(), "auto")
    return out if q.dtype == torch.float32 else out.to(q.dtype)


def _mixed_attention_cuda(q, k, v, block_start, block_end, key_start, query_offset, scale):
    kernel = triton_kernel()
    if kernel is None:
        _warn_once(
            "cuda", "no-triton",
            "unipose::mixed_attention on CUDA: the fused Triton kernel was asked for but is not available "
            f"({'disabled' if 'cuda' in _disabled else _triton_error}); using the torch reference instead. "
            "pip install triton to get it.",
        )
        return mixed_attention_reference(q, k, v, block_start, block_end, key_start, query_offset, scale)
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        _warn_once(
            "cuda", "head-dim",
            f"unipose::mixed_attention on CUDA: head dimension {q.shape[-1]} is not one the Triton kernel "
            f"compiles for {TRITON_HEAD_DIMS}; using the torch reference instead.",
        )
        return mixed_attention_reference(q, k, v, block_start, block_end, key_start, query_offset, scale)
    check_inputs(q, k, v, block_start, block_end, key_start, query_offset)
    return kernel.mixed_attention_triton(q, k, v, block_start, block_end, key_start, query_offset, scale)


def _setup_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])
    ctx.scale = inputs[7]


def _backward(ctx, grad_out):
    """Gradients by differentiating the torch reference (the kernels are forward-only)."""
    q, k, v, *bounds = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
        out = mixed_attention_reference(*leaves, *bounds, ctx.scale)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return (*(next(grads) if t.requires_grad else None for t in leaves), None, None, None, None, None)


_lib.impl("mixed_attention", _mixed_attention_cpu, "CPU")
_lib.impl("mixed_attention", _mixed_attention_cuda, "CUDA")
_lib.impl("mixed_attention", _mixed_attention_other, "CompositeExplicitAutograd")
torch.library.register_autograd("unipose::mixed_attention", _backward, setup_context=_setup_backward, lib=_lib)


# ------------------------------------------------------------------------------- the model's attention registry
def fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: MixedMask, scale: float) -> Tensor:
    """`AttentionImpl` adapter: the model's `mixed_attention(q, k, v, mask)` through the custom op."""
    block_start, block_end, key_start, query_offset = mask.to(q.device).fields()
    return torch.ops.unipose.mixed_attention(q, k, v, block_start, block_end, key_start, query_offset, float(scale))


def fused_default_devices() -> tuple[str, ...]:
    """Device types where "fused" is the model's default attention for long multi-token calls (above
    `models.attention.SDPA_MAX_SCORES`; shorter calls and decode steps take SDPA, see models/attention.py).

    CPU: only when the C++ kernel is built (it is faster than dense masked SDPA from T ~ 256 up, see
    benchmarks/results/attention_cpu.md); the torch reference alone is not. CUDA: see FUSED_IS_CUDA_DEFAULT.
    """
    devices = []
    if cpu_extension_built() and "cpu" not in _disabled:
        devices.append("cpu")
    if FUSED_IS_CUDA_DEFAULT and importlib.util.find_spec("triton") is not None:
        devices.append("cuda")
    return tuple(devices)


def register_with_model() -> None:
    """File the op under "fused" in unipose_sdk.models.attention (idempotent)."""
    register_attention_impl("fused", fused_attention, long_calls_on=fused_default_devices())
