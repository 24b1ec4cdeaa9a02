"""The ONNX Runtime backend: the five graphs of an export directory behind the Runtime interface.

    runtime = OnnxRuntimeRuntime("out/tiny-onnx", device="cpu", options=OrtOptions(num_threads=2))
    generation.generate(runtime.llm, prompts, runtime.config.vocab, GenerationConfig(max_new_tokens=32))

Everything is learned from the files (config, precision, tensor names come from the metadata inside them), so
the task classes run unchanged: `Generator.from_pretrained("out/tiny-onnx", backend="onnxruntime")`. Quantized
exports (`unipose export --precision int4 | int8 | mixed`) load the same way: their graphs hold MatMulNBits,
MatMulInteger and GatherBlockQuantized nodes, which the CPU provider runs; the CUDA provider (onnxruntime-gpu)
has MatMulNBits and MatMulInteger kernels and ONNX Runtime places any node it lacks on the CPU provider, but
quantized graphs have not been timed on CUDA in this project.

The language model over the embed and decoder graphs is `runtime/graph_lm.py`'s, shared with TensorRT. On the
CPU provider the KV cache is a list of numpy-backed torch tensors (ONNX Runtime hands back its output buffers,
so nothing is copied on the Python side). On the CUDA provider (onnxruntime-gpu) torch tensors are bound with
IO binding, which lets the cache ping-pong between two device buffer sets. The CUDA path is written against the
documented IO binding API but has not been run in this project's CI (no onnxruntime-gpu there).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import unipose_sdk.formats as formats
from unipose_sdk.errors import BackendUnavailableError, InvalidInputError
from unipose_sdk.export import specs as S
from unipose_sdk.export.artifacts import ExportedModel, read_directory
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.runtime.base import Runtime
from unipose_sdk.runtime.graph_lm import GraphLanguageModel

log = logging.getLogger("unipose_sdk")

_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class OrtOptions:
    """num_threads: intra-op threads of each session (None: torch's CPU thread count, so ONNX Runtime and the
        torch code around it, image preprocessing and sampling, share one thread budget).
    spin_threads: let idle intra-op threads busy-wait for the next run (ONNX Runtime's default). Off here: this
        backend holds five sessions, each with its own pool, and torch has one more; spinning pools keep every
        core busy after each run and steal it from the next session and from torch (measured on 2 cores: the
        vision graph 1.5-2.4x slower with spinning, torch work run next to it 2x slower). Turn it on only for
        a process that runs one session back to back.
    graph_optimization: "disable" | "basic" | "extended" | "all" (ONNX Runtime's GraphOptimizationLevel).
    providers: explicit execution providers (e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"]); None picks
        CUDA for device="cuda", else CPU."""

    num_threads: int | None = None
    graph_optimization: str = "all"
    providers: tuple[str, ...] | None = None
    spin_threads: bool = False

    def __post_init__(self) -> None:
        if self.graph_optimization not in _OPT_LEVELS:
            raise InvalidInputError.make(f"graph_optimization={self.graph_optimization!r}", f"one of {_OPT_LEVELS}",
                                         "Use 'all' unless debugging a graph.")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise InvalidInputError.make(f"num_threads={self.num_threads!r}", "a positive int or None",
                                         "Pass e.g. num_threads=2.")


def _session_options(ort: Any, options: OrtOptions) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    so.intra_op_num_threads = options.num_threads if options.num_threads is not None else torch.get_num_threads()
    so.inter_op_num_threads = 1  # sequential execution: the graphs are chains, a second pool would only idle
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin_threads else "0")
    so.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    return so


def _providers(ort: Any, device: torch.device, options: OrtOptions) -> list[str]:
    if options.providers is not None:
        return list(options.providers)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError.make(
                f"device='cuda' with onnxruntime providers {ort.get_available_providers()}",
                "CUDAExecutionProvider (the onnxruntime-gpu package)",
                'pip install "unipose-sdk[gpu]" (onnxruntime-gpu), or use device="cpu" or backend="torch".')
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _Graph:
    """One InferenceSession with its spec: run(named torch tensors) -> torch tensors."""

    def __init__(self, ort: Any, path: Path, spec: S.GraphSpec, device: torch.device, options: OrtOptions) -> None:
        self.spec = spec
        self.device = device
        self.session = ort.InferenceSession(str(path), sess_options=_session_options(ort, options),
                                            providers=_providers(ort, device, options))
        self.on_gpu = device.type == "cuda"

    def run(self, inputs: dict[str, Tensor], outputs: dict[str, Tensor] | None = None) -> list[Tensor]:
        """CPU: numpy in, numpy out (zero-copy both ways). CUDA: IO binding of torch tensors; `outputs` names
        preallocated device buffers to write into (the KV ping-pong), the others are allocated by ORT."""
        if not self.on_gpu:
            # numpy views of the tensors (no bfloat16 here: the format table keeps bf16 graphs off the CPU).
            feed = {name: t.detach().contiguous().numpy() for name, t in inputs.items()}
            return [torch.from_numpy(np.asarray(a)) for a in self.session.run(self.spec.output_names, feed)]
        binding = self.session.io_binding()
        for name, t in inputs.items():
            t = t.contiguous()
            binding.bind_input(name, "cuda", self.device.index or 0, _np_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        results: dict[str, Tensor] = {}
        for name in self.spec.output_names:
            if outputs is not None and name in outputs:
                buf = outputs[name]
                binding.bind_output(name, "cuda", self.device.index or 0, _np_dtype(buf.dtype), tuple(buf.shape),
                                    buf.data_ptr())
                results[name] = buf
            else:
                binding.bind_output(name, "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        ort_outputs = binding.get_outputs()
        out = []
        for i, name in enumerate(self.spec.output_names):
            out.append(results[name] if name in results else _ortvalue_to_torch(ort_outputs[i]))
        return out


def _np_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
            torch.int32: np.int32}[dtype]


def _ortvalue_to_torch(value: Any) -> Tensor:
    # DLPack keeps the output on the device (no host round trip).
    return torch.utils.dlpack.from_dlpack(value.to_dlpack())


class OnnxRuntimeRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, directory: str | os.PathLike, device: torch.device | str = "cpu",
                 options: OrtOptions | None = None) -> None:
        ort = formats.FORMATS["onnx"].require()
        self.options = options or OrtOptions()
        self.device = torch.device(device)
        self.exported: ExportedModel = read_directory(directory)
        self.config: UniPoseConfig = self.exported.config
        dtype = formats.dtype(self.exported.precision)
        self.dtype = dtype.torch()
        if not formats.FORMATS["onnx"].runs(self.device.type, dtype.name):
            raise BackendUnavailableError.make(
                f"a {dtype.name} export ({directory}) for ONNX Runtime on {self.device.type}",
                f"one of {list(formats.FORMATS['onnx'].devices_dtypes.get(self.device.type, ()))} there",
                "Re-export with --dtype float32, or run the graphs on a GPU (device='cuda').")
        graphs = {name: _Graph(ort, info.path, info.spec, self.device, self.options)
                  for name, info in self.exported.graphs.items()}
        self._graphs = graphs
        self._llm = GraphLanguageModel(self.config.llm, graphs["embed"], graphs["decoder"], self.dtype, self.device,
                                       self.backend)

    @property
    def llm(self) -> GraphLanguageModel:
        return self._llm

    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self._graphs["vision"].run({"clip_pixels": clip_pixels.to(self.device, self.dtype),
                                           "pose_pixels": pose_pixels.to(self.device, self.dtype)})[0]

    def encode_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encode_sentences(input_ids, attention_mask)[0]

    def encode_sentences(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        graph = self._graphs.get("text_encoder")
        if graph is None:
            return super().encode_sentences(input_ids, attention_mask)
        outputs = graph.run({"input_ids": input_ids.to(self.device, torch.long),
                             "attention_mask": attention_mask.to(self.device, torch.long)})
        # Exports before the text-pose matcher give the rows alone.
        return outputs[0], (outputs[1].float() if len(outputs) > 1 else None)

    @property
    def has_pose_matcher(self) -> bool:
        graph = self._graphs.get("text_encoder")
        return "pose_matcher" in self._graphs and graph is not None and len(graph.spec.outputs) > 1

    def match_poses(self, joints_m: Tensor, sentences: Tensor) -> Tensor:
        if not self.has_pose_matcher:
            return super().match_poses(joints_m, sentences)
        return self._graphs["pose_matcher"].run({"joints_m": joints_m.to(self.device, torch.float32),
                                                 "sentence_embedding": sentences.to(self.device, torch.float32)})[0]

    def encode_poses(self, pose_6d: Tensor) -> Tensor:
        return self._pose_graph("pose_encoder").run({"pose_6d": pose_6d.to(self.device, torch.float32)})[0]

    def decode_poses(self, codes: Tensor) -> Tensor:
        return self._pose_graph("pose_decoder").run({"codes": codes.to(self.device, torch.long)})[0].float()

    def _pose_graph(self, name: str) -> _Graph:
        graph = self._graphs.get(name)
        if graph is None:  # a ChatPose export: no pose tokenizer
            raise self.pose_part_missing(name)
        return graph

    def pose_codebook(self) -> Tensor | None:
        codebook = self.exported.pose_codebook
        return None if codebook is None else torch.from_numpy(codebook).to(self.device)  # where the logits are

    def close(self) -> None:
        self._graphs = {}
        self._llm = None  # type: ignore[assignment]

    @property
    def weights(self) -> str:
        """The export's weight precision: float | int8 | int4 | mixed (export/quantize.py)."""
        return self.exported.weights

    def describe(self) -> str:
        providers = self._graphs["decoder"].session.get_providers() if self._graphs else []
        weights = "" if self.exported.weights == "float" else f", {self.exported.weights} weights"
        return f"onnxruntime {providers} on {self.device} ({self.exported.precision}{weights})"
