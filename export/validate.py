"""Validation is part of export: each ONNX graph runs in ONNX Runtime against the float32 torch model.

The inputs differ in every dynamic size from the ones the graph was traced with (batch 3, 7 tokens, 12 cache
slots, 3 logit positions), so a size that was silently baked in as a constant fails here, not in a user's app.
A graph passes when every float output is within its spec's tolerance (max|onnx - torch| <= atol + rtol *
max|torch|) and every integer output agrees on at least `min_match` of its elements; a miss raises
ExportValidationError naming the graph, the output and the max / mean difference.

This module only compares; reading export directories back is artifacts.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import unipose_sdk.export.specs as S
from torch import nn

import unipose_sdk.formats as formats
from unipose_sdk.errors import ExportValidationError

log = logging.getLogger("unipose_sdk")

VALIDATION_SIZES = {"batch": 3, "tokens": 7, "keys": 12, "logits": 3}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """numpy has no bfloat16: such tensors travel as float32 (only reachable for bf16 graphs, validated on GPU)."""
    t = t.detach().cpu()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def compare(name: str, output: str, onnx_value: np.ndarray, torch_value: torch.Tensor,
            tolerance: S.Tolerance) -> tuple[float, float]:
    """Max / mean abs difference of one output; raises ExportValidationError when outside the tolerance."""
    ref = torch_value.detach().cpu()
    got = torch.from_numpy(np.asarray(onnx_value))
    if tuple(got.shape) != tuple(ref.shape):
        raise ExportValidationError.make(
            f"graph {name!r} output {output!r} of shape {tuple(got.shape)}", f"torch's shape {tuple(ref.shape)}",
            "A dynamic axis was probably traced as a constant; check the spec's dynamic axes and re-export.")
    if not ref.is_floating_point():
        match = float((got == ref).double().mean())
        mismatch = float((got != ref).double().sum())
        if match < tolerance.min_match:
            raise ExportValidationError.make(
                f"graph {name!r} output {output!r} agreeing with torch on {match:.2%} of elements "
                f"({int(mismatch)} differ)", f"at least {tolerance.min_match:.2%}",
                "Export in fp32, or report the model and command if fp32 misses.")
        return mismatch, mismatch / max(1, ref.numel())
    diff = (got.double() - ref.double()).abs()
    max_diff, mean_diff = float(diff.max()), float(diff.mean())
    bound = tolerance.atol + tolerance.rtol * float(ref.double().abs().max())
    if not np.isfinite(max_diff) or max_diff > bound:
        raise ExportValidationError.make(
            f"graph {name!r} output {output!r} with max abs diff {max_diff:.3e} and mean abs diff {mean_diff:.3e}",
            f"max abs diff <= {bound:.3e} (atol {tolerance.atol} + rtol {tolerance.rtol} x max|torch|)",
            "Export in fp32 (or fp16 instead of bf16); if fp32 misses, report the model and command.")
    return max_diff, mean_diff


def validate_graph(path: Path, spec: S.GraphSpec, reference: nn.Module, graph_dtype: torch.dtype,
                   inputs: tuple[torch.Tensor, ...]) -> tuple[float | None, float | None, str]:
    """Run `path` in ONNX Runtime (CPU) and `reference` (float32 torch) on `inputs` (the exporter's
    `example_inputs` at VALIDATION_SIZES, which differ from the traced sizes).

    Returns (max abs diff over float outputs, mean abs diff, "yes"), or (None, None, "skipped: ...") for a bf16
    graph, which ONNX Runtime cannot run on the CPU (logged; validate it on the GPU that will run it).
    """
    ort = formats.FORMATS["onnx"].require()
    if graph_dtype == torch.bfloat16:
        reason = "bf16 graphs need a GPU execution provider; ONNX Runtime's CPU provider has no bf16 kernels"
        log.warning("export: graph %s not validated: %s", spec.name, reason)
        return None, None, f"skipped: {reason}"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(spec.output_names, {n: to_numpy(t) for n, t in zip(spec.input_names, inputs)})
    with torch.no_grad():
        ref_inputs = tuple(t.float() if t.is_floating_point() else t for t in inputs)
        expected = reference(*ref_inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    max_diff, mean_sum, floats = 0.0, 0.0, 0
    for out_spec, got, want in zip(spec.outputs, outputs, expected):
        max_d, mean_d = compare(spec.name, out_spec.name, got, want.float() if want.is_floating_point() else want,
                                spec.tolerance)
        if want.is_floating_point():
            max_diff, mean_sum, floats = max(max_diff, max_d), mean_sum + mean_d, floats + 1
    return max_diff, (mean_sum / floats if floats else 0.0), "yes"
