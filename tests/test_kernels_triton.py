"""The Triton mixed-attention kernel: in the Triton interpreter on CPU (small shapes), and on CUDA when present.

TRITON_INTERPRET must be set before triton is imported, and the rest of the test session may import triton for
other reasons, so the interpreter runs in a subprocess that prints one JSON line of results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# (name, random_case keyword arguments); shapes kept small: the interpreter runs tl.dot in numpy.
INTERPRETER_CASES = [
    ("gqa1_block_middle_padding", dict(heads_q=2, heads_kv=2, num_queries=37, num_keys=37, head_dim=16,
                                       block_place="middle")),
    ("gqa2_block_start", dict(heads_q=4, heads_kv=2, num_queries=29, num_keys=40, head_dim=16,
                              block_place="start")),
    ("gqa4_block_end_no_padding", dict(heads_q=4, heads_kv=1, num_queries=33, num_keys=33, head_dim=16,
                                       block_place="end", left_padding=False)),
    ("empty_block_cache_offset", dict(num_queries=20, num_keys=53, head_dim=16, block_place="empty")),
    ("decode_tq1", dict(heads_q=4, heads_kv=1, num_queries=1, num_keys=45, head_dim=16, block_place="middle")),
    ("pose_step_tq81", dict(batch=1, heads_q=2, heads_kv=1, num_queries=81, num_keys=100, head_dim=16,
                            block_place="queries", block_len=80)),
    ("head_dim_64", dict(batch=1, heads_q=2, heads_kv=1, num_queries=24, num_keys=30, head_dim=64)),
]

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import unipose_sdk.kernels
    from unipose_sdk.kernels.triton.mixed_attention import mixed_attention_triton, INTERPRET
    from unipose_sdk.kernels.reference import mixed_attention_reference
    from unipose_sdk.kernels.testing import Case, random_case
    from unipose_sdk.models.attention import sdpa_dense

    assert INTERPRET
    cases = json.loads(sys.argv[1])
    gen = torch.Generator().manual_seed(0)
    results = {}
    for name, params in cases:
        case = random_case(gen, **params)
        exact = mixed_attention_reference(*case.args())
        out = mixed_attention_triton(*case.args())
        results[name] = {"fp32_error": (out - exact).abs().max().item(), "finite": bool(torch.isfinite(out).all())}
    # Low precision: fp16 against the fp32 reference, next to PyTorch's own fp16 result.
    case = random_case(gen, heads_q=4, heads_kv=2, num_queries=40, num_keys=48, head_dim=16, block_place="queries")
    exact = mixed_attention_reference(*case.args())
    low = Case(case.q.half(), case.k.half(), case.v.half(), case.mask, case.scale)
    out = mixed_attention_triton(*low.args())
    torch_low = sdpa_dense(low.q.float(), low.k.float(), low.v.float(), low.mask, low.scale).half()
    results["fp16"] = {"error": (out.float() - exact).abs().max().item(), "dtype": str(out.dtype),
                       "torch_error": (torch_low.float() - exact).abs().max().item()}
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(INTERPRETER_CASES)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [name for name, _ in INTERPRETER_CASES])
def test_interpreted_kernel_matches_reference_fp32(interpreter_results: dict, name: str) -> None:
    assert interpreter_results[name]["finite"]
    assert interpreter_results[name]["fp32_error"] < 2e-5


def test_interpreted_kernel_fp16_within_twice_torchs_error(interpreter_results: dict) -> None:
    """Flash-attention rule: at most 2x as far from the fp32 reference as PyTorch's own fp16 result."""
    fp16 = interpreter_results["fp16"]
    assert fp16["dtype"] == "torch.float16"
    assert fp16["error"] <= 2 * fp16["torch_error"] + 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_op_matches_reference(dtype: torch.dtype) -> None:
    import unipose_sdk.kernels  # noqa: F401
    from unipose_sdk.kernels import ops
    from unipose_sdk.kernels.reference import mixed_attention_reference
    from unipose_sdk.kernels.testing import Case, random_case
    from unipose_sdk.models.attention import sdpa_dense

    gen = torch.Generator().manual_seed(0)
    for params in [dict(heads_q=32, heads_kv=8, num_queries=121, num_keys=700, head_dim=128, block_place="queries",
                        block_len=80),
                   dict(heads_q=8, heads_kv=8, num_queries=1, num_keys=300, head_dim=64),
                   dict(heads_q=8, heads_kv=2, num_queries=777, num_keys=777, head_dim=64, block_place="end")]:
        case = random_case(gen, **params)
        exact = mixed_attention_reference(*case.args())
        low = Case(*(t.to("cuda", dtype) for t in (case.q, case.k, case.v)), case.mask.to("cuda"), case.scale)
        out = torch.ops.unipose.mixed_attention(*low.args())
        assert ops.triton_kernel() is not None
        torch_error = (sdpa_dense(low.q, low.k, low.v, low.mask, low.scale).float().cpu() - exact).abs().max()
        assert (out.float().cpu() - exact).abs().max() <= 2 * torch_error + 1e-4
