"""Validation is part of export: each ONNX graph runs in ONNX Runtime against the float32 torch model.

The inputs differ in every dynamic size from the ones the graph was traced with (batch 3, 7 tokens, 12 cache
slots, 3 logit positions), so a size that was silently baked in as a constant fails here, not in a user's app.
A graph passes when every float output is within its spec's tolerance (max|onnx - torch| <= atol + rtol *
max|torch|) and every integer output agrees on at least `min_match` of its elements; a miss raises
ExportValidationError naming the graph, the output and the max / mean difference.

Reading artifacts back (`read_graph_metadata`, `read_directory`) lives here too: the runtime and the TensorRT
builder use it to learn everything from the files themselves.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from unipose_sdk.export import specs as S

from unipose_sdk.errors import BackendUnavailableError, CheckpointError, ExportValidationError, ModelNotFoundError
from unipose_sdk.models.config import UniPoseConfig

log = logging.getLogger("unipose_sdk")

VALIDATION_SIZES = {"batch": 3, "tokens": 7, "keys": 12, "logits": 3}


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError.make(
            "a request that needs ONNX Runtime, which is not installed", "the onnxruntime package",
            'Install it with pip install "unipose-sdk[onnx]" (or onnxruntime-gpu for CUDA).') from None
    return onnxruntime


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


def validate_graph(path: Path, spec: S.GraphSpec, config: UniPoseConfig, reference: nn.Module,
                   graph_dtype: torch.dtype) -> tuple[float | None, float | None, str]:
    """Run `path` in ONNX Runtime (CPU) and `reference` (float32 torch) on the same inputs.

    Returns (max abs diff over float outputs, mean abs diff, "yes"), or (None, None, "skipped: ...") for a bf16
    graph, which ONNX Runtime cannot run on the CPU (logged; validate it on the GPU that will run it).
    """
    from unipose_sdk.export.onnx import example_inputs

    ort = require_onnxruntime()
    if graph_dtype == torch.bfloat16:
        reason = "bf16 graphs need a GPU execution provider; ONNX Runtime's CPU provider has no bf16 kernels"
        log.warning("export: graph %s not validated: %s", spec.name, reason)
        return None, None, f"skipped: {reason}"
    inputs = example_inputs(spec, config, graph_dtype, seed=1, **VALIDATION_SIZES)
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


# ------------------------------------------------------------------------------------------- reading artifacts
@dataclass
class GraphInfo:
    path: Path
    spec: S.GraphSpec
    metadata: dict[str, str]


@dataclass
class ExportedModel:
    """A directory written by `unipose export`, described by the metadata inside its files."""

    directory: Path
    config: UniPoseConfig
    precision: str
    emission: str
    is_random: bool
    source: str
    graphs: dict[str, GraphInfo]
    pose_codebook: np.ndarray | None = None  # [K, D] float32; None in exports written before it existed


def read_graph_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of one ONNX file (the graph structure only; external weights are not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def is_export_directory(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a directory written by `unipose export` (it has the decoder graph)."""
    root = Path(path)
    return root.is_dir() and (root / "decoder.onnx").is_file()


def read_directory(path: str | os.PathLike) -> ExportedModel:
    root = Path(path)
    if not root.is_dir():
        raise ModelNotFoundError.make(f"export directory {str(root)!r}, which does not exist",
                                      "a directory written by `unipose export`",
                                      "Check the path, or export first: unipose export --model M -o DIR.")
    graphs: dict[str, GraphInfo] = {}
    missing = [n for n in S.GRAPH_NAMES if not (root / f"{n}.onnx").is_file()]
    if missing:
        raise CheckpointError.make(
            f"export directory {str(root)!r} without {[f'{n}.onnx' for n in missing]}",
            f"all of {[f'{n}.onnx' for n in S.GRAPH_NAMES]}", "Re-run `unipose export` into a new directory.")
    for name in S.GRAPH_NAMES:
        file = root / f"{name}.onnx"
        meta = read_graph_metadata(file)
        if meta.get(S.META_FORMAT) != S.FORMAT_NAME or meta.get(S.META_GRAPH) != name:
            raise CheckpointError.make(
                f"{file} with format {meta.get(S.META_FORMAT)!r} / graph {meta.get(S.META_GRAPH)!r}",
                f"format {S.FORMAT_NAME!r} and graph {name!r}",
                "This file was not written by `unipose export`; export the model again.")
        if meta.get(S.META_FORMAT_VERSION) != str(S.FORMAT_VERSION):
            raise CheckpointError.make(
                f"{file} of format version {meta.get(S.META_FORMAT_VERSION)!r}", f"version {S.FORMAT_VERSION}",
                "Re-export with this SDK version (or upgrade unipose-sdk).")
        graphs[name] = GraphInfo(file, S.GraphSpec.from_dict(json.loads(meta[S.META_SPEC])), meta)
    first = graphs["decoder"].metadata
    config = UniPoseConfig.from_dict(json.loads(first[S.META_CONFIG]))
    for name, info in graphs.items():
        if json.loads(info.metadata[S.META_CONFIG]) != json.loads(first[S.META_CONFIG]):
            raise CheckpointError.make(f"graph {name} exported from a different model config than decoder.onnx",
                                       "one model per export directory", "Re-export all graphs together.")
    return ExportedModel(root, config, first[S.META_PRECISION], first[S.META_EMISSION],
                         json.loads(first.get(S.META_IS_RANDOM, "false")), first.get(S.META_SOURCE, ""), graphs,
                         read_pose_codebook(root, config))


def read_pose_codebook(root: Path, config: UniPoseConfig) -> np.ndarray | None:
    """The export's `pose_codebook.npy` [K, D] float32, or None when the directory has none."""
    path = root / S.POSE_CODEBOOK_FILE
    if not path.is_file():
        return None
    codebook = np.load(path, allow_pickle=False)
    expected = (config.pose_tokenizer.codebook_size, config.pose_tokenizer.code_dim)
    if codebook.shape != expected:
        raise CheckpointError.make(f"{path} of shape {codebook.shape}", f"the codebook shape {expected} of the config",
                                   "Re-export the model: this file belongs to another pose tokenizer.")
    return codebook.astype(np.float32)
