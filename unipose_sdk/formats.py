"""The format table: what the SDK loads, runs and exports, and the one table of dtype names.

    format   backend       on disk                                                   devices     module
    torch    torch         SDK model directory (config.json + model.safetensors)     cpu, cuda   runtime/torch.py
                           or the embedded unipose-tiny
    onnx     onnxruntime   `unipose export` directory: <graph>.onnx for each graph   cpu, cuda   runtime/onnxruntime.py
    engine   tensorrt      the same directory with <graph>.engine beside each graph  cuda        runtime/tensorrt.py

`backend="auto"` picks, among the formats a directory holds, the first of `AUTO_ORDER[device]` whose runtime
package is installed. A directory holds one kind of weights, except that an engine directory also holds the
ONNX graphs its engines were built from; so on CUDA an engine directory runs on TensorRT when it is installed
(its engines were compiled for this GPU; an ordering by TensorRT's purpose, not measured here, where TensorRT
cannot be installed) and on ONNX Runtime otherwise (the fallback is named in every result), and on the CPU,
where engines cannot run, on ONNX Runtime.

Dtypes have one name each ("float32", "float16", "bfloat16": the options, the CLI's --dtype, config.json) and
one short name ("fp32", "fp16", "bf16": the precision recorded in exported graphs and engine headers); both
are accepted wherever a dtype is read. This module imports neither torch nor the ONNX stack.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipose_sdk.errors import BackendUnavailableError, InvalidInputError, ModelNotFoundError

EMBEDDED_MODEL = "unipose-tiny"


# ------------------------------------------------------------------------------------------- dtypes
@dataclass(frozen=True)
class DType:
    name: str  # "float16": the torch attribute, the option / CLI value, config.json's "dtype"
    short: str  # "fp16": the export precision in graph metadata and engine headers
    itemsize: int  # bytes per element

    def torch(self) -> Any:
        import torch

        return getattr(torch, self.name)


DTYPES: dict[str, DType] = {d.name: d for d in (DType("float32", "fp32", 4), DType("float16", "fp16", 2),
                                                DType("bfloat16", "bf16", 2))}
DTYPE_NAMES = tuple(DTYPES)
PRECISIONS = tuple(d.short for d in DTYPES.values())  # export precision names, in table order
_BY_ANY_NAME = {**DTYPES, **{d.short: d for d in DTYPES.values()}}


def dtype(value: Any, what: str = "dtype") -> DType:
    """The table row of a dtype given by name ("float16"), short name ("fp16") or torch.dtype; anything else
    raises InvalidInputError naming `what` (the option or flag it came from)."""
    if isinstance(value, DType):
        return value
    if type(value).__module__ == "torch":  # a torch.dtype, matched by name so torch need not be imported
        key = str(value).removeprefix("torch.")
    elif isinstance(value, str):
        key = value.lower()
    else:
        key = None
    if key in _BY_ANY_NAME:
        return _BY_ANY_NAME[key]
    shown = f"{what}={value}" if type(value).__module__ == "torch" else f"{what}={value!r}"
    raise InvalidInputError.make(shown, f"one of {list(DTYPE_NAMES)} (or {list(PRECISIONS)}) or the torch dtype",
                                 "Pass float32 for the CPU, float16 or bfloat16 for GPUs.")


def torch_dtype(value: Any, what: str = "dtype") -> Any:
    """The torch.dtype of a dtype name, short name or torch.dtype (imports torch)."""
    return dtype(value, what).torch()


# ------------------------------------------------------------------------------------------- weight precisions
# How the weights of an export are stored, on top of its float dtype (export/quantize.py says which graph gets
# which scheme): "float" (the dtype itself), "int8" (int8 weights everywhere it pays), "int4" (int4 weights
# everywhere it pays), "mixed" (int4 language model, int8 vision towers). The pose tokenizer is always float.
WEIGHT_PRECISIONS = ("float", "int8", "int4", "mixed")


def weight_precision(value: Any, what: str = "precision") -> str:
    """`value` when it names a weight precision (case-insensitive), else InvalidInputError naming `what`."""
    key = value.lower() if isinstance(value, str) else None
    if key in WEIGHT_PRECISIONS:
        return key
    raise InvalidInputError.make(
        f"{what}={value!r}", f"one of {list(WEIGHT_PRECISIONS)}",
        "Pass --precision int4 for the smallest, fastest decoding on a CPU or a Jetson, int8 for the fastest "
        "prompt and pose block, mixed for int4 language model + int8 vision towers, float for the unquantized "
        "graphs (the float dtype itself is --dtype).")


# ------------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class Format:
    name: str  # the table key, `unipose export --format NAME`
    backend: str  # the `backend=` value that runs it
    suffix: str  # the suffix of its weight files
    marker_files: tuple[str, ...]  # a directory holds this format when all of these are in it ...
    devices_dtypes: dict[str, tuple[str, ...]]  # device type -> the dtypes its runtime runs there
    package: str | None  # import name of the runtime package (None: torch itself)
    install: str  # how to get that package
    exportable: bool  # written by `unipose export`

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.devices_dtypes)

    def held_by(self, directory: Path) -> bool:
        """... or when any file with its suffix is (a partial export is still recognised, so its reader can name
        the missing files instead of calling it "not a model directory")."""
        if all((directory / f).is_file() for f in self.marker_files):
            return True
        return any(p.suffix == self.suffix for p in directory.iterdir() if p.is_file())

    def installed(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def require(self) -> Any:
        """The runtime package (imported), or BackendUnavailableError with the install command."""
        if self.package is None:
            import torch

            return torch
        try:
            return importlib.import_module(self.package)
        except ImportError:
            raise BackendUnavailableError.make(
                f"a request that needs {self.package} (the {self.name} format), which is not installed",
                f"the {self.package} package", self.install) from None

    def runs(self, device: str, dtype_name: str | None = None) -> bool:
        return device in self.devices_dtypes and (dtype_name is None or dtype_name in self.devices_dtypes[device])


_ALL = DTYPE_NAMES
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("torch", "torch", ".safetensors", ("config.json", "model.safetensors"),
           {"cpu": _ALL, "cuda": _ALL}, None, "Install torch.", False),
    # ONNX Runtime's CPU provider has no bfloat16 kernels.
    Format("onnx", "onnxruntime", ".onnx", ("decoder.onnx",), {"cpu": ("float32", "float16"), "cuda": _ALL},
           "onnxruntime", 'Install it with pip install "unipose-sdk[onnx]" (or onnxruntime-gpu for CUDA).', True),
    Format("engine", "tensorrt", ".engine", ("decoder.engine", "decoder.onnx"), {"cuda": _ALL}, "tensorrt",
           'pip install "unipose-sdk[trt]" (on Jetson, use the TensorRT that ships with JetPack).', True),
)}
BACKENDS = tuple(f.backend for f in FORMATS.values())
EXPORT_FORMATS = tuple(f.name for f in FORMATS.values() if f.exportable)
# backend="auto": preference per device, fastest first (see the module docstring).
AUTO_ORDER = {"cuda": ("engine", "onnx", "torch"), "cpu": ("onnx", "torch")}


def format_of_backend(backend: str) -> Format:
    for fmt in FORMATS.values():
        if fmt.backend == backend:
            return fmt
    raise InvalidInputError.make(f"backend={backend!r}", f"one of {['auto', *BACKENDS]}", "Pass a valid backend.")


def is_embedded(model: Any) -> bool:
    return model is None or str(model) == EMBEDDED_MODEL


@dataclass(frozen=True)
class Source:
    """Where a model comes from and the format that will run it. `path` is None for the embedded model;
    `note` says why auto took a slower format than the directory offers (None when it did not)."""

    format: Format
    path: Path | None
    note: str | None = None

    @property
    def name(self) -> str:
        return EMBEDDED_MODEL if self.path is None else str(self.path)


def existing_directory(model: str | os.PathLike) -> Path:
    path = Path(model)
    if not path.is_dir():
        raise ModelNotFoundError.make(
            f"model={str(model)!r}, which is not an existing directory",
            "a model directory (SDK format: config.json + model.safetensors + tokenizer.json, or a directory "
            "written by `unipose export`)",
            f"Check the path, write one with `unipose convert` or `unipose export`, or pass model=None for the "
            f"embedded {EMBEDDED_MODEL}.")
    return path


def formats_in(directory: str | os.PathLike) -> list[Format]:
    """The formats a directory holds, in table order."""
    path = Path(directory)
    return [f for f in FORMATS.values() if path.is_dir() and f.held_by(path)]


def resolve_source(model: str | os.PathLike | None, backend: str = "auto", device: str = "cpu") -> Source:
    """The format that runs `model` (None / "unipose-tiny" or a directory) for `backend` on `device`; the torch
    format's weights are then loaded by `unipose_sdk.loading.load_torch_model`."""
    if is_embedded(model):
        if backend not in ("auto", "torch"):
            raise BackendUnavailableError.make(
                f"backend={backend!r} with the embedded {EMBEDDED_MODEL}",
                "a directory written by `unipose export` for that backend",
                f"Export first: unipose export --model {EMBEDDED_MODEL} -o DIR, then pass model=DIR; "
                "or use backend='torch'.")
        return Source(FORMATS["torch"], None)
    path = existing_directory(model)  # type: ignore[arg-type]
    held = formats_in(path)
    if backend != "auto":
        fmt = format_of_backend(backend)
        if fmt not in held:
            what = "a directory written by `unipose export`" if fmt.exportable else "an SDK model directory"
            files = " + ".join(fmt.marker_files)
            raise BackendUnavailableError.make(
                f"backend={backend!r} with model={str(model)!r} (holds {[f.name for f in held] or 'no model'})",
                f"{what} ({files})",
                f"Export first: unipose export --model M{' --format engine' if fmt.name == 'engine' else ''} -o DIR, "
                "then pass model=DIR; or use backend='auto'.")
        return Source(fmt, path)
    candidates = [f for f in (FORMATS[n] for n in AUTO_ORDER.get(device, ("torch",))) if f in held]
    if not candidates:  # nothing recognisable: the SDK-directory reader says what is missing
        return Source(FORMATS["torch"], path)
    for fmt in candidates:
        if fmt.installed():
            skipped = candidates[:candidates.index(fmt)]
            note = None if not skipped else (
                f"backend='auto' ran {fmt.backend}: {', '.join(f.backend for f in skipped)} for this directory is not "
                f"installed ({', '.join(str(f.package) for f in skipped)})")
            return Source(fmt, path, note)
    return Source(candidates[0], path)  # its runtime raises the install hint


def runnable_formats(model: str | os.PathLike | None, device: str) -> list[Format]:
    """Every format `model` can run as on `device` with the packages installed here, fastest first (the
    benchmark's backend rows for a model)."""
    held = [FORMATS["torch"]] if is_embedded(model) else formats_in(existing_directory(model))  # type: ignore[arg-type]
    return [FORMATS[n] for n in AUTO_ORDER.get(device, ("torch",))
            if FORMATS[n] in held and FORMATS[n].installed()]
