"""The TensorRT backend: the engines of an export directory behind the Runtime interface, on torch CUDA tensors.

    unipose export --model M --format engine --dtype float16 -o DIR
    Generator.from_pretrained(DIR, backend="tensorrt", device="cuda")

Each `<graph>.engine` starts with the SDK's JSON header (read by export/artifacts.py); an engine built with
another TensorRT version, on another GPU or from the graphs of another export is refused with the rebuild
command. Tensors are torch CUDA tensors bound by address (`set_input_shape` / `set_tensor_address` /
`execute_async_v3` on torch's current stream), and the decoder's KV cache is ping-ponged between two buffer sets
exactly as under ONNX Runtime's IO binding (`runtime/graph_lm.py`'s GraphLanguageModel drives both). Calls
whose shapes repeat (decode steps: [B, 1] against the whole cache) are captured once into a CUDA graph and replayed.

Written against the TensorRT 10 Python API; TensorRT cannot be installed on this project's CI or GPU machines,
so only the pure parts (headers, profiles, version checks) are tested there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import unipose_sdk.formats as formats
from unipose_sdk.errors import BackendUnavailableError, CheckpointError
from unipose_sdk.export import specs as S
from unipose_sdk.export.artifacts import (
    REBUILD_HINT,
    ExportedModel,
    check_compatible,
    check_engine_identity,
    read_directory,
    read_engine_header,
)
from unipose_sdk.runtime.base import Runtime
from unipose_sdk.runtime.graph_lm import GraphLanguageModel

log = logging.getLogger("unipose_sdk")


class _Engine:
    """One deserialized engine and its execution context; run(named torch tensors) -> torch tensors."""

    on_gpu = True

    def __init__(self, trt: Any, runtime: Any, path: Path, device: torch.device, use_cuda_graphs: bool,
                 exported: ExportedModel) -> None:
        header, offset = read_engine_header(path)
        props = torch.cuda.get_device_properties(device)
        check_compatible(header, trt.__version__, props.name, f"{props.major}.{props.minor}", path)
        check_engine_identity(header, exported, path)
        self.spec = S.GraphSpec.from_dict(header.spec)
        with path.open("rb") as handle:
            handle.seek(offset)
            self.engine = runtime.deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise CheckpointError.make(f"engine {path} that TensorRT cannot deserialize", "a valid engine",
                                       REBUILD_HINT + ".")
        self.context = self.engine.create_execution_context()
        self.device = device
        self.precision = header.precision
        self.use_cuda_graphs = use_cuda_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, Tensor], list[Tensor]]] = {}

    def _dtype(self, tensor: S.TensorSpec) -> torch.dtype:
        return getattr(torch, S.resolve_dtype(tensor, self.precision))  # spec dtype names are torch's

    def _launch(self, inputs: dict[str, Tensor], outputs: dict[str, Tensor] | None) -> list[Tensor]:
        stream = torch.cuda.current_stream(self.device)
        for tensor in self.spec.inputs:
            t = inputs[tensor.name]
            self.context.set_input_shape(tensor.name, tuple(t.shape))
            self.context.set_tensor_address(tensor.name, t.data_ptr())
        results = []
        for tensor in self.spec.outputs:
            buf = (outputs or {}).get(tensor.name)
            if buf is None:
                shape = tuple(self.context.get_tensor_shape(tensor.name))
                buf = torch.empty(shape, dtype=self._dtype(tensor), device=self.device)
            self.context.set_tensor_address(tensor.name, buf.data_ptr())
            results.append(buf)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendUnavailableError.make(f"a failed TensorRT launch of graph {self.spec.name}",
                                               "execute_async_v3 to succeed", "Check TensorRT's log above.")
        return results

    def run(self, inputs: dict[str, Tensor], outputs: dict[str, Tensor] | None = None) -> list[Tensor]:
        inputs = {n: t.to(self.device, self._dtype(s)).contiguous() for s in self.spec.inputs
                  for n, t in inputs.items() if n == s.name}
        if not self.use_cuda_graphs or outputs is None:
            return self._launch(inputs, outputs)
        # Static shapes and output buffers (the KV ping-pong alternates between two sets): capture once per
        # (shapes, buffers) and replay with the inputs copied into the captured ones.
        key = tuple((n, tuple(t.shape)) for n, t in inputs.items()) + tuple(
            (n, b.data_ptr()) for n, b in sorted(outputs.items()))
        if key not in self._graphs:
            static = {n: t.clone() for n, t in inputs.items()}
            self._launch(static, outputs)  # warm-up outside capture (TensorRT allocates lazily)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                results = self._launch(static, outputs)
            self._graphs[key] = (graph, static, results)
        graph, static, results = self._graphs[key]
        for name, t in inputs.items():
            static[name].copy_(t)
        graph.replay()
        return results


def check_engines(root: Path, graphs: Iterable[str]) -> tuple[str, ...]:
    """The graphs of the export at `root` (the ONNX files it holds: a ChatPose export has no pose tokenizer, a
    model with a sentence encoder adds its graph), each of which needs its engine; refused, naming the missing
    engines, before TensorRT loads anything."""
    names = tuple(graphs)
    missing = [n for n in names if not (root / f"{n}.engine").is_file()]
    if missing:
        raise CheckpointError.make(f"export directory {root} without engines for {missing}",
                                   "one <graph>.engine per exported graph",
                                   f"Build them: unipose export --model M --format engine -o {root}")
    return names


class TensorRTRuntime(Runtime):
    backend = "tensorrt"

    def __init__(self, directory: str | os.PathLike, device: torch.device | str = "cuda",
                 use_cuda_graphs: bool = True) -> None:
        trt = formats.FORMATS["engine"].require()
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailableError.make(f"backend='tensorrt' on device {str(device)!r}",
                                               "a CUDA device", "Use device='cuda', or backend='onnxruntime' on CPU.")
        root = Path(directory)
        self.exported = read_directory(root)  # the ONNX metadata: config, precision, identity, random flag
        self.config = self.exported.config
        self.dtype = formats.torch_dtype(self.exported.precision)
        names = check_engines(root, self.exported.graphs)
        logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(logger)
        self._engines = {n: _Engine(trt, self._trt_runtime, root / f"{n}.engine", self.device, use_cuda_graphs,
                                    self.exported) for n in names}
        self._llm = GraphLanguageModel(self.config.llm, self._engines["embed"], self._engines["decoder"],
                                       self.dtype, self.device, self.backend)

    @property
    def llm(self) -> GraphLanguageModel:
        return self._llm

    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self._engines["vision"].run({"clip_pixels": clip_pixels, "pose_pixels": pose_pixels})[0]

    def encode_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        engine = self._engines.get(S.TEXT_ENCODER_GRAPH)
        if engine is None:
            return super().encode_texts(input_ids, attention_mask)
        return engine.run({"input_ids": input_ids.to(self.device, torch.long),
                           "attention_mask": attention_mask.to(self.device, torch.long)})[0]

    def encode_poses(self, pose_6d: Tensor) -> Tensor:
        return self._pose_engine("pose_encoder").run({"pose_6d": pose_6d})[0]

    def decode_poses(self, codes: Tensor) -> Tensor:
        return self._pose_engine("pose_decoder").run({"codes": codes})[0].float()

    def _pose_engine(self, name: str) -> _Engine:
        engine = self._engines.get(name)
        if engine is None:  # a ChatPose export: no pose tokenizer
            raise self.pose_part_missing(name)
        return engine

    def pose_codebook(self) -> Tensor | None:
        codebook = self.exported.pose_codebook
        return None if codebook is None else torch.from_numpy(codebook).to(self.device)  # where the logits are

    def close(self) -> None:
        self._engines = {}
        self._llm = None  # type: ignore[assignment]
        torch.cuda.empty_cache()
