"""TensorRT engines from the exported ONNX graphs: profiles, self-describing engine files, version checks, builder.

    unipose export --model M --format engine --dtype float16 -o DIR   (ONNX graphs + one .engine per graph)

Engine file layout (artifacts.py's EngineHeader): MAGIC | header length | header JSON | the serialized
engine. The header names the TensorRT version, GPU, compute capability, SDK version, precision, the graph's
spec and the identity of the export the graph came from, so a loader can refuse an engine built elsewhere or
from other graphs before handing it to TensorRT (which would fail with a less helpful message, or worse, run a
mismatched plan).

Precision comes from the ONNX graph: engines are built from a STRONGLY TYPED network over the fp16 / bf16 ONNX
export. TensorRT 11 removed the FP16 / BF16 builder flags and TensorRT 10 accepts strongly typed networks, so
one path serves both. Attention: the decomposed MatMul / Softmax form (TensorRT < 10.14, e.g. JetPack 6 with
TensorRT 10.3) or the opset-23 `Attention` op (>= 10.14), see `attention_emission_for`.

TensorRT is an optional extra (`pip install "unipose-sdk[trt]"`) imported only by `require_tensorrt()`. Every
other function here is pure Python and tested without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import unipose_sdk.export.specs as S
from unipose_sdk.export.artifacts import (
    HEADER_LENGTH,
    MAGIC,
    EngineHeader,
    Identity,
    file_sha256,
    parse_version,
    read_directory,
)

import unipose_sdk.formats as formats
from unipose_sdk._version import __version__
from unipose_sdk.errors import BackendUnavailableError, CheckpointError, InvalidInputError
from unipose_sdk.fileio import atomic_write, atomic_write_bytes


def require_tensorrt() -> Any:
    return formats.FORMATS["engine"].require()


# First TensorRT release whose ONNX parser imports the opset-23 Attention operator (IAttention).
ATTENTION_OP_MIN_VERSION = (10, 14)


def attention_emission_for(tensorrt_version: str) -> str:
    """The attention form a TensorRT version can import: 'attention23' from 10.14 on, else 'decomposed'."""
    return "attention23" if parse_version(tensorrt_version)[:2] >= ATTENTION_OP_MIN_VERSION else "decomposed"


# ------------------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class ProfileShapes:
    """min / opt / max shape of one engine input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimization_profile(spec: S.GraphSpec, axis_ranges: dict[str, tuple[int, int, int]] | None = None,
                         ) -> dict[str, ProfileShapes]:
    """Per input of `spec`: the shapes of one TensorRT optimization profile, from the spec's axis ranges (each
    dynamic axis -> (min, opt, max)), optionally overridden per axis name (e.g. {"batch": (1, 1, 1)} on Jetson)."""
    ranges = dict(spec.axis_ranges)
    ranges.update(axis_ranges or {})
    for axis, (lo, opt, hi) in ranges.items():
        if not (1 <= lo <= opt <= hi):
            raise InvalidInputError.make(f"axis {axis!r} range (min {lo}, opt {opt}, max {hi})",
                                         "1 <= min <= opt <= max", "Fix the axis range.")
    profile = {}
    for tensor in spec.inputs:
        dims: list[list[int]] = [[], [], []]
        for size in tensor.shape:
            if isinstance(size, str):
                if size not in ranges:
                    raise InvalidInputError.make(f"graph {spec.name!r} input {tensor.name!r} with axis {size!r}",
                                                 f"a range for every dynamic axis (have {sorted(ranges)})",
                                                 "Add the axis to the spec's axis_ranges or pass it in axis_ranges.")
                for k in range(3):
                    dims[k].append(ranges[size][k])
            else:
                for k in range(3):
                    dims[k].append(size)
        profile[tensor.name] = ProfileShapes(tuple(dims[0]), tuple(dims[1]), tuple(dims[2]))
    return profile


# ------------------------------------------------------------------------------------------- engine files
def write_engine_file(path: str | os.PathLike, header: EngineHeader, engine: bytes) -> Path:
    """Header + engine, written to a temporary file beside `path` and renamed into place (mode from the umask)."""
    target = Path(path)
    payload = header.to_json()
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(handle: BinaryIO) -> None:
        handle.write(MAGIC + HEADER_LENGTH.pack(len(payload)) + payload)
        handle.write(engine)

    return atomic_write(target, write)


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, compute_capability: str, precision: str,
                     profile: dict[str, ProfileShapes]) -> str:
    """A stable key for reusing a built engine: same graph bytes, TensorRT, GPU architecture, precision, profile."""
    material = json.dumps({"onnx": onnx_sha256, "trt": ".".join(map(str, parse_version(tensorrt_version)[:3])),
                           "sm": compute_capability, "precision": precision,
                           "profile": {k: asdict(v) for k, v in sorted(profile.items())}}, sort_keys=True)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------------------------------- the builder
def build_engine(onnx_path: str | os.PathLike, spec: S.GraphSpec, output: str | os.PathLike, identity: Identity, *,
                 axis_ranges: dict[str, tuple[int, int, int]] | None = None,
                 timing_cache: str | os.PathLike | None = None, workspace_gib: float = 4.0) -> Path:
    """Build one engine from an exported ONNX graph (needs TensorRT and a GPU; not run in this project's CI).

    The network is strongly typed, so fp16 / bf16 come from the graph itself (works on TensorRT 10 and 11).
    `timing_cache` is read if present and written back after the build (rebuilds take seconds instead of minutes).
    `identity`: the export the graph belongs to (recorded in the header, checked when the engine is loaded).
    """
    import torch

    trt = require_tensorrt()
    if not torch.cuda.is_available():
        raise BackendUnavailableError.make("an engine build without a CUDA device", "a CUDA GPU visible to torch",
                                           "Build engines on the machine (and GPU) that will run them.")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves `<file>.data` next to the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointError.make(f"{onnx_path}, which TensorRT's ONNX parser rejects ({errors})",
                                   "a graph TensorRT can import",
                                   "For TensorRT < 10.14 export with the 'decomposed' attention emission.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for name, shapes in optimization_profile(spec, axis_ranges).items():
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache_file = Path(timing_cache) if timing_cache is not None else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailableError.make(f"a failed TensorRT build of {onnx_path}", "a serialized engine",
                                           "Read TensorRT's log above; lower the profile maxima or the workspace.")
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    header = EngineHeader(tensorrt_version=trt.__version__, gpu_name=props.name,
                          compute_capability=f"{props.major}.{props.minor}", sdk_version=__version__,
                          precision=spec.precision, graph=spec.name, spec=spec.to_dict(),
                          onnx_sha256=file_sha256(onnx_path), export_id=identity.export_id,
                          weights_sha256=identity.weights_sha256)
    return write_engine_file(output, header, bytes(plan))


def build_engines(directory: str | os.PathLike, *, axis_ranges: dict[str, tuple[int, int, int]] | None = None,
                  ) -> list[Path]:
    """One `<graph>.engine` beside each `<graph>.onnx` of an export directory, sharing one timing cache."""
    exported = read_directory(directory)
    trt = require_tensorrt()
    if exported.emission == "attention23" and attention_emission_for(trt.__version__) == "decomposed":
        raise BackendUnavailableError.make(
            f"graphs exported with the opset-23 Attention op for TensorRT {trt.__version__}",
            f"the 'decomposed' emission below TensorRT {'.'.join(map(str, ATTENTION_OP_MIN_VERSION))}",
            "Re-export with --attention decomposed.")
    cache = Path(directory) / "timing.cache"
    return [build_engine(info.path, info.spec, info.path.with_suffix(".engine"), exported.identity,
                         axis_ranges=axis_ranges, timing_cache=cache) for info in exported.graphs.values()]
