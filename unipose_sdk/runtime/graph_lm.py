"""One language model over exported graphs, shared by the ONNX Runtime and TensorRT backends.

`GraphLanguageModel` drives the embed and decoder graphs of an export (their tensor names are in
export/specs.py) behind the LanguageModel protocol that `unipose_sdk.generation` uses, whatever runs them: a
backend hands it two objects with `run(inputs, outputs=None)` and `on_gpu` (an ONNX Runtime session, a
TensorRT engine).

The KV cache. The decoder graph takes the past k/v of every layer and returns the full updated cache (see
export/specs.py for why). Off the GPU each call feeds the cache and keeps the returned arrays as the new cache
(nothing is copied on the Python side). On the GPU the cache lives on the device as torch tensors: two buffer
sets are ping-ponged (past from one, present written into the other), so a decode step allocates nothing and
never leaves the device.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig
from unipose_sdk.models.llm import NUM_POSE_QUERIES, LMOutput


class Graph(Protocol):
    """One exported graph as a backend runs it: named torch tensors in, the spec's outputs in order out;
    `outputs` names preallocated device buffers to write into (the KV ping-pong)."""

    on_gpu: bool

    def run(self, inputs: dict[str, Tensor], outputs: dict[str, Tensor] | None = None) -> list[Tensor]: ...


class GraphKVCache:
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


class GraphLanguageModel:
    """The embed and decoder graphs in the shape `unipose_sdk.generation` drives (the LanguageModel protocol)."""

    def __init__(self, config: LLMConfig, embed: Graph, decoder: Graph, dtype: torch.dtype, device: torch.device,
                 backend: str) -> None:
        self.config = config
        self.backend = backend
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

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> GraphKVCache:
        return GraphKVCache(self.config, batch_size, max_length, dtype or self.dtype, self._device)

    def __call__(self, input_ids: Tensor | None = None, *, input_embeds: Tensor | None = None,
                 positions: Tensor | None = None, mask: MixedMask | None = None, cache: GraphKVCache | None = None,
                 kv_length: int | None = None, logits_positions: slice | None = slice(None),
                 return_hidden: bool = False) -> LMOutput:
        """Same contract as MistralLM.forward (see models/llm.py); hidden states are not exported."""
        if return_hidden:
            raise InvalidInputError.make(f"return_hidden=True on the {self.backend} backend",
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
        # ChatPose's decoder graph returns the pose head's outputs after the logits (export/specs.py).
        pose = outputs[1] if self.config.pose_head_outputs else None
        first_kv = 2 if pose is not None else 1
        logits, present_k, present_v = outputs[0], outputs[first_kv:first_kv + layers], outputs[first_kv + layers:]
        if sliced:
            for i in range(layers):
                cache.k[i][:, :, :kv_length] = present_k[i]
                cache.v[i][:, :, :kv_length] = present_v[i]
        else:
            if targets is not None:
                cache.spare = (cache.k, cache.v)  # the old past becomes the next call's output buffers
            cache.k, cache.v = list(present_k), list(present_v)
        if logits_positions is None:
            return LMOutput(None, None)
        return LMOutput(logits.float(), None, None if pose is None else pose.float())
