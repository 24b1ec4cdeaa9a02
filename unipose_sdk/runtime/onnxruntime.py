"""The ONNX Runtime backend: the five graphs of an export directory behind the Runtime interface.

    runtime = OnnxRuntimeRuntime("out/tiny-onnx", device="cpu", options=OrtOptions(num_threads=2))
    generation.generate(runtime.llm, prompts, runtime.config.vocab, max_new_tokens=32)

Everything is learned from the files (config, precision, tensor names come from the metadata inside them), so
the task classes run unchanged: `Generator.from_pretrained("out/tiny-onnx", backend="onnxruntime")`.

The KV cache. The decoder graph takes the past k/v of every layer and returns the full updated cache (see
export/specs.py for why). On the CPU provider the cache is a list of numpy-backed torch tensors; each call feeds
them and keeps the returned arrays as the new cache (ONNX Runtime hands back its output buffers, so nothing is
copied on the Python side). On the CUDA provider (onnxruntime-gpu) the cache lives on the GPU as torch tensors
bound with IO binding: two buffer sets are ping-ponged (past from one, present into the other), so a decode step
allocates nothing and never leaves the device. The CUDA path is written against the documented IO binding API
but has not been run in this project's CI (no onnxruntime-gpu there).
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

from unipose_sdk.errors import BackendUnavailableError, InvalidInputError
from unipose_sdk.export import specs as S
from unipose_sdk.export.validate import ExportedModel, read_directory, require_onnxruntime, to_numpy
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig, UniPoseConfig
from unipose_sdk.models.llm import NUM_POSE_QUERIES, LMOutput
from unipose_sdk.runtime.base import Runtime

log = logging.getLogger("unipose_sdk")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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
            feed = {name: to_numpy(t.contiguous()) for name, t in inputs.items()}
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


class OrtKVCache:
    """Per layer k, v [B, Hkv, Tmax, D] as torch tensors (CPU: numpy-backed; CUDA: device buffers)."""

    def __init__(self, config: LLMConfig, batch_size: int, max_length: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        # The second buffer set of the CUDA ping-pong, allocated on first use.
        self.spare: tuple[list[Tensor], list[Tensor]] | None = None
        self.batch_size = batch_size
        self.max_length = max_length


class OrtLanguageModel:
    """The decoder and embedding graphs in the shape `unipose_sdk.generation` drives (the LanguageModel protocol)."""

    def __init__(self, config: LLMConfig, embed: _Graph, decoder: _Graph, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.config = config
        self._embed = embed
        self._decoder = decoder
        self.dtype = dtype
        self._device = device
        self._pose_queries: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self._device

    def embed(self, input_ids: Tensor) -> Tensor:
        """ids [B, T] -> embeddings [B, T, C] (the embed graph)."""
        return self._embed.run({"input_ids": input_ids.to(self._device, torch.long)})[0]

    def embed_pose_queries(self, num_queries: int = NUM_POSE_QUERIES) -> Tensor:
        """The last `num_queries` rows of the embedding table [num_queries, C], looked up once and kept."""
        if self._pose_queries is None or self._pose_queries.shape[0] != num_queries:
            ids = torch.arange(self.config.vocab_size - num_queries, self.config.vocab_size).unsqueeze(0)
            self._pose_queries = self.embed(ids)[0]
        return self._pose_queries

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> OrtKVCache:
        return OrtKVCache(self.config, batch_size, max_length, dtype or self.dtype, self._device)

    def __call__(self, input_ids: Tensor | None = None, *, input_embeds: Tensor | None = None,
                 positions: Tensor | None = None, mask: MixedMask | None = None, cache: OrtKVCache | None = None,
                 kv_length: int | None = None, logits_positions: slice | None = slice(None),
                 return_hidden: bool = False) -> LMOutput:
        """Same contract as MistralLM.forward (see models/llm.py); hidden states are not exported."""
        if return_hidden:
            raise InvalidInputError.make("return_hidden=True on the onnxruntime backend",
                                         "return_hidden=False (the decoder graph returns logits only)",
                                         "Use backend='torch' to read hidden states.")
        if (input_ids is None) == (input_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] and input_embeds [B, T, C]")
        x = self.embed(input_ids) if input_embeds is None else input_embeds.to(self._device, self.dtype)
        batch, num_tokens, _ = x.shape
        mask = (mask if mask is not None else MixedMask.causal(batch)).to(self._device)
        if positions is None:
            positions = mask.query_offset.to(torch.long).unsqueeze(1) + torch.arange(num_tokens, device=self._device)
        fresh = cache is None
        if fresh:  # no cache: the keys are this call's tokens (query_offset must be 0)
            cache = self.new_cache(batch, num_tokens)
        wanted = torch.arange(num_tokens)[logits_positions if logits_positions is not None else slice(-1, None)]
        layers = self.config.num_hidden_layers
        # kv_length: attend only the first kv_length slots (prefill of a fresh cache): feed that slice and copy the
        # updated slice back; otherwise the whole cache goes in and the returned cache replaces it.
        sliced = kv_length is not None and kv_length < cache.max_length
        past_k = [k[:, :, :kv_length] for k in cache.k] if sliced else cache.k
        past_v = [v[:, :, :kv_length] for v in cache.v] if sliced else cache.v
        feed = {"input_embeds": x, "positions": positions.to(self._device, torch.long),
                "block_start": mask.block_start, "block_end": mask.block_end, "key_start": mask.key_start,
                "query_offset": mask.query_offset, "logits_index": wanted.to(self._device)}
        feed.update({f"past_key_{i}": t for i, t in enumerate(past_k)})
        feed.update({f"past_value_{i}": t for i, t in enumerate(past_v)})
        targets = None
        if self._decoder.on_gpu and not sliced:
            if cache.spare is None:
                cache.spare = ([torch.empty_like(k) for k in cache.k], [torch.empty_like(v) for v in cache.v])
            targets = {f"present_key_{i}": cache.spare[0][i] for i in range(layers)}
            targets.update({f"present_value_{i}": cache.spare[1][i] for i in range(layers)})
        outputs = self._decoder.run(feed, targets)
        logits, present_k, present_v = outputs[0], outputs[1:1 + layers], outputs[1 + layers:]
        if sliced:
            for i in range(layers):
                cache.k[i][:, :, :kv_length] = present_k[i]
                cache.v[i][:, :, :kv_length] = present_v[i]
        else:
            if targets is not None:
                cache.spare = (cache.k, cache.v)  # the old past becomes the next call's output buffers
            cache.k, cache.v = list(present_k), list(present_v)
        return LMOutput(logits.float() if logits_positions is not None else None, None)


class OnnxRuntimeRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, directory: str | os.PathLike, device: torch.device | str = "cpu",
                 options: OrtOptions | None = None) -> None:
        ort = require_onnxruntime()
        self.options = options or OrtOptions()
        self.device = torch.device(device)
        self.exported: ExportedModel = read_directory(directory)
        self.config: UniPoseConfig = self.exported.config
        self.dtype = _DTYPES[self.exported.precision]
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            raise BackendUnavailableError.make(
                f"a bf16 export ({directory}) on the CPU", "an fp32 export for ONNX Runtime on the CPU",
                "Re-export with --precision fp32, or run the bf16 graphs on a GPU (device='cuda').")
        graphs = {name: _Graph(ort, info.path, info.spec, self.device, self.options)
                  for name, info in self.exported.graphs.items()}
        self._graphs = graphs
        self._llm = OrtLanguageModel(self.config.llm, graphs["embed"], graphs["decoder"], self.dtype, self.device)

    @property
    def llm(self) -> OrtLanguageModel:
        return self._llm

    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self._graphs["vision"].run({"clip_pixels": clip_pixels.to(self.device, self.dtype),
                                           "pose_pixels": pose_pixels.to(self.device, self.dtype)})[0]

    def encode_poses(self, pose_6d: Tensor) -> Tensor:
        return self._graphs["pose_encoder"].run({"pose_6d": pose_6d.to(self.device, torch.float32)})[0]

    def decode_poses(self, codes: Tensor) -> Tensor:
        return self._graphs["pose_decoder"].run({"codes": codes.to(self.device, torch.long)})[0].float()

    def pose_codebook(self) -> Tensor | None:
        codebook = self.exported.pose_codebook
        return None if codebook is None else torch.from_numpy(codebook).to(self.device)  # where the logits are

    def close(self) -> None:
        self._graphs = {}
        self._llm = None  # type: ignore[assignment]

    def describe(self) -> str:
        providers = self._graphs["decoder"].session.get_providers() if self._graphs else []
        return f"onnxruntime {providers} on {self.device} ({self.exported.precision})"
