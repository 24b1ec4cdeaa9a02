"""The fused mixed-attention op on CPU: reference, C++ kernel, dispatch and fallback, model registration, tracing.

The Triton kernel (through the interpreter) is in test_kernels_triton.py, the ONNX forms in test_kernels_onnx.py.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import unipose_sdk.kernels  # noqa: F401  (defines torch.ops.unipose.mixed_attention)
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.kernels import ops
from unipose_sdk.kernels.reference import mixed_attention_reference
from unipose_sdk.kernels.testing import BLOCK_PLACES, random_case
from unipose_sdk.models.attention import mixed_attention, resolve_attention_impl, sdpa_dense, use_attention_impl
from unipose_sdk.models.attention_mask import MixedMask

ext = ops.cpu_extension()
needs_ext = pytest.mark.skipif(ext is None, reason="the C++ extension is not built here")
FP32_TOL = dict(atol=2e-5, rtol=1e-5)


def case_grid() -> list[dict]:
    """GQA 1/2/4, every block place, Tq in {1, 37, 81, 130}, prefill and cache offsets, D 64/128 and an odd one."""
    grid = []
    for i, (groups, place, tq) in enumerate(
        (g, p, t) for g in (1, 2, 4) for p in BLOCK_PLACES for t in (1, 37, 81, 130)
    ):
        grid.append(dict(
            heads_kv=2, heads_q=2 * groups, block_place=place, num_queries=tq,
            num_keys=tq + (0, 5, 64, 190)[i % 4],          # prefill, short / tile-sized / long cache
            head_dim=(64, 128, 64, 40)[i % 4], batch=1 + i % 3, left_padding=i % 2 == 0,
        ))
    return grid


def test_reference_matches_the_models_dense_sdpa() -> None:
    gen = torch.Generator().manual_seed(1)
    for params in case_grid()[::3]:
        case = random_case(gen, **params)
        expected = sdpa_dense(case.q, case.k, case.v, case.mask, case.scale)
        torch.testing.assert_close(mixed_attention_reference(*case.args()), expected, **FP32_TOL,
                                   msg=case.describe)


@needs_ext
def test_cpp_kernel_matches_reference_on_every_instruction_set() -> None:
    """Each compiled clone this CPU can run (AVX-512 / AVX2 / baseline), over the whole case grid."""
    gen = torch.Generator().manual_seed(2)
    for params in case_grid():
        case = random_case(gen, **params)
        expected = mixed_attention_reference(*case.args())
        bounds = [t.numpy() for t in case.mask.fields()]
        for isa in ext.supported_isas():
            out = torch.empty_like(case.q)
            ext.forward(case.q.numpy(), case.k.numpy(), case.v.numpy(), *bounds, out.numpy(), case.scale, 2, isa)
            torch.testing.assert_close(out, expected, **FP32_TOL, msg=lambda m: f"{isa} {case.describe()}: {m}")


@needs_ext
def test_cpp_kernel_rows_without_keys_are_zero_and_the_rest_is_finite() -> None:
    gen = torch.Generator().manual_seed(3)
    case = random_case(gen, batch=1, num_queries=20, num_keys=20, block_place="empty", left_padding=False)
    # key_start 12: queries 0..11 (left padding) see nothing.
    case.mask = MixedMask.from_lists([0], [0], [12], [0])
    out = torch.ops.unipose.mixed_attention(*case.args())
    assert torch.isfinite(out).all()
    assert out[:, :, :12].abs().max() == 0
    torch.testing.assert_close(out, mixed_attention_reference(*case.args()), **FP32_TOL)


@needs_ext
def test_cpp_kernel_block_in_the_middle_of_a_query_tile() -> None:
    """Block bounds that cut a 32-row query tile and a 64-key tile, queries after the block stay causal."""
    gen = torch.Generator().manual_seed(4)
    case = random_case(gen, batch=2, num_queries=150, block_place="empty")
    case.mask = MixedMask.from_lists([45, 70], [125, 71], [0, 3], [0, 0])
    torch.testing.assert_close(torch.ops.unipose.mixed_attention(*case.args()),
                               mixed_attention_reference(*case.args()), **FP32_TOL)


@needs_ext
def test_cpp_binding_rejects_bad_buffers_with_a_fix() -> None:
    q = torch.randn(1, 2, 4, 8)
    out = torch.empty_like(q)
    bounds = [torch.zeros(1, dtype=torch.int32).numpy()] * 4
    with pytest.raises(ValueError, match="C-contiguous"):
        ext.forward(q.transpose(2, 3).numpy(), q.numpy(), q.numpy(), *bounds, out.numpy(), 1.0)
    with pytest.raises(ValueError, match="float32"):
        ext.forward(q.double().numpy(), q.numpy(), q.numpy(), *bounds, out.numpy(), 1.0)
    with pytest.raises(ValueError, match="int32"):
        ext.forward(q.numpy(), q.numpy(), q.numpy(), *[torch.zeros(1).numpy()] * 4, out.numpy(), 1.0)
    with pytest.raises(ValueError, match="isa='auto'"):
        ext.forward(q.numpy(), q.numpy(), q.numpy(), *bounds, out.numpy(), 1.0, 1, "avx9000")


def test_op_checks_inputs_with_typed_errors() -> None:
    q = torch.randn(1, 3, 4, 8)
    kv = torch.randn(1, 2, 4, 8)
    mask = MixedMask.causal(1)
    with pytest.raises(InvalidInputError, match="multiple of the key/value heads"):
        torch.ops.unipose.mixed_attention(q, kv, kv, *mask.fields(), 1.0)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(InvalidInputError, match="int32"):
        torch.ops.unipose.mixed_attention(q, kv, kv, *(t.long() for t in mask.fields()), 1.0)


@needs_ext
def test_cpu_dispatch_uses_the_cpp_kernel() -> None:
    status = ops.kernel_status()["cpu"]
    assert status["kernel"] == "c++" and status["isa"] in ext.supported_isas()


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cpu_follow_the_low_precision_rule(dtype: torch.dtype) -> None:
    """At most 2x as far from the fp32 reference as PyTorch's own low-precision SDPA (flash-attention rule)."""
    gen = torch.Generator().manual_seed(5)
    case = random_case(gen, num_queries=81, num_keys=120, heads_q=4, heads_kv=1, block_place="queries")
    exact = mixed_attention_reference(*case.args())
    low = random_case.__globals__["Case"](case.q.to(dtype), case.k.to(dtype), case.v.to(dtype), case.mask, case.scale)
    out = torch.ops.unipose.mixed_attention(*low.args())
    assert out.dtype == dtype
    torch_error = (sdpa_dense(low.q, low.k, low.v, low.mask, low.scale).float() - exact).abs().max()
    assert (out.float() - exact).abs().max() <= 2 * torch_error + 1e-6


def test_cpu_fallback_warns_once_and_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_disabled", {"cpu"})
    monkeypatch.setattr(ops, "_warned", set())
    case = random_case(torch.Generator().manual_seed(6), num_queries=33)
    with pytest.warns(RuntimeWarning, match="fused C\\+\\+ kernel was asked for .* using the torch reference"):
        out = torch.ops.unipose.mixed_attention(*case.args())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must be quiet
        torch.ops.unipose.mixed_attention(*case.args())
    torch.testing.assert_close(out, mixed_attention_reference(*case.args()))
    assert ops.kernel_status()["cpu"] == {"kernel": "torch reference", "reason": "disabled"}


def test_registered_as_fused_in_the_models_attention() -> None:
    case = random_case(torch.Generator().manual_seed(7), num_queries=81, num_keys=100, heads_q=8, heads_kv=2)
    with use_attention_impl("sdpa_dense"):
        expected = mixed_attention(case.q, case.k, case.v, case.mask)
    with use_attention_impl("fused"):
        got = mixed_attention(case.q, case.k, case.v, case.mask)
    torch.testing.assert_close(got, expected, **FP32_TOL)
    # The CPU default for long calls is the fused op exactly when the C++ kernel is built (it is faster there; see
    # benchmarks/); decode steps and short calls take SDPA.
    assert resolve_attention_impl("cpu", 512, 512) == ("fused" if ops.cpu_extension_built() else "sdpa")
    assert resolve_attention_impl("cpu", 1, 512) == "sdpa"


def test_import_is_cheap_and_registers_fused() -> None:
    """A fresh interpreter: the model's attention knows nothing of the kernels (they build on it, not the reverse);
    importing unipose_sdk.kernels, or the torch loader that imports it, files "fused" without triton or onnx."""
    code = (
        "import sys, torch\n"
        "from unipose_sdk.models.attention import available_attention_impls, mixed_attention, use_attention_impl\n"
        "from unipose_sdk.models.attention_mask import MixedMask\n"
        "before = 'fused' in available_attention_impls()\n"
        "import unipose_sdk.loading\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "with use_attention_impl('fused'):\n"
        "    out = mixed_attention(q, q, q, MixedMask.causal(1))\n"
        "print(before, out.shape == q.shape, 'unipose_sdk.kernels' in sys.modules, 'triton' in sys.modules,"
        " 'onnx' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True", "False", "False"]


class _Block(torch.nn.Module):
    def forward(self, q, k, v, block_start, block_end, key_start, query_offset):
        return torch.ops.unipose.mixed_attention(q, k, v, block_start, block_end, key_start, query_offset, 0.125) * 2


def test_torch_export_traces_the_op() -> None:
    case = random_case(torch.Generator().manual_seed(8), num_queries=40, num_keys=50)
    args = case.args()[:-1]
    exported = torch.export.export(_Block(), args)
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert torch.ops.unipose.mixed_attention.default in targets
    torch.testing.assert_close(exported.module()(*args), _Block()(*args))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph_on_cpu(backend: str) -> None:
    """aot_eager checks the fake implementation in a full graph; inductor (C++ codegen, ~45 s) the real path."""
    case = random_case(torch.Generator().manual_seed(9), num_queries=24, num_keys=30)
    args = case.args()[:-1]
    compiled = torch.compile(_Block(), fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(*args), _Block()(*args))


def test_gradients_come_from_the_reference() -> None:
    case = random_case(torch.Generator().manual_seed(10), num_queries=20, num_keys=26, head_dim=16)
    leaves = [t.clone().requires_grad_() for t in (case.q, case.k, case.v)]
    torch.ops.unipose.mixed_attention(*leaves, *case.mask.fields(), case.scale).square().sum().backward()
    expected = [t.clone().requires_grad_() for t in (case.q, case.k, case.v)]
    mixed_attention_reference(*expected, *case.mask.fields(), case.scale).square().sum().backward()
    for got, want in zip(leaves, expected):
        torch.testing.assert_close(got.grad, want.grad, **FP32_TOL)
