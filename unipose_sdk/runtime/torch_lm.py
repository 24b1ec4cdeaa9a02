"""The torch runtime's language model: a static KV cache reused across calls, prompt-length buckets, compiled calls.

`FastLM` wraps a `MistralLM` and satisfies the `LanguageModel` protocol of `unipose_sdk.generation`, so the same
greedy loop drives it. Every call runs the model's own forward (models/llm.py), with the attention its router
picks (models/attention.py): on the CPU SDPA for decode steps and for calls up to 300 x 300 scores, the fused C++
kernel for longer prompts; on CUDA SDPA, compiled graphs included. What this module adds is:

- The static KV cache, allocated once per batch size and reused by every later call (gpt-fast style). Its length
  is rounded up to `cache_step` slots and only ever grows, so compiled graphs see few cache shapes. Reusing it
  without clearing is safe: every slot a query may see (the mixed mask is causal in slots, and the left padding
  lies before `key_start`) is written earlier in the same call; stale slots are masked, and hold finite values
  from earlier calls, so they contribute exact zeros.
- Eager calls (`compile=False`, the default on the CPU): the model is fused for inference (`MistralLM.fuse`,
  done in place on the wrapped model), and each new generation's `new_cache` lets the fused copies catch up with
  parameters changed since.
- Compiled calls (`compile=True`): every generation call goes through `torch.compile(fullgraph=True,
  dynamic=False)` of the model's forward, which under tracing uses the parameters (no fused copies) and decides
  the mask with tensor ops only. The shapes the loop produces are few by construction: the decode step [B, 1],
  the pose step [B, 81], and the prefill (or the one-pass prefill + pose block) at bucketed prompt lengths:
  `prompt_length_bucket` makes generation left-pad prompts to a multiple of `bucket` tokens. On CUDA the default
  mode is "reduce-overhead": each graph is captured once and replayed as a CUDA graph, so a decode step is one
  graph launch with no host work. The cache tensors are marked as static addresses, which lets CUDA graphs
  mutate them in place. First calls of a new shape compile (seconds to minutes): `warmup_ms` accumulates that
  time, so a benchmark can report it apart from the steady-state latency. On the CPU, compiling is off by
  default: see benchmarks/results for the measurement behind that choice.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig
from unipose_sdk.models.llm import KVCache, LMOutput, MistralLM

# Prompts are left-padded to a multiple of this: few prefill graphs to compile (each costs seconds on the tiny model,
# about a minute at 7B), at the price of at most 127 padded rows per prefill.
_DEFAULT_BUCKET = 128
_DEFAULT_CACHE_STEP = 256


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each bucketed prefill length and each cache length is its own graph; dynamo's default limit (8) is low."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < limit:
            setattr(dynamo_config, name, limit)


class FastLM:
    """A `LanguageModel` over `llm` with a reused static KV cache, eager (fused model) or compiled calls."""

    def __init__(
        self,
        llm: MistralLM,
        *,
        compile: bool = False,
        mode: str | None = None,
        bucket: int = _DEFAULT_BUCKET,
        cache_step: int = _DEFAULT_CACHE_STEP,
        backend: str = "inductor",
        pack: bool | None = None,
    ) -> None:
        """mode: torch.compile mode; default "reduce-overhead" (CUDA graphs) on CUDA, inductor's default on CPU.
        backend: torch.compile backend ("eager" traces and checks full graphs without generating code: tests).
        pack: eager only: `llm.fuse(pack)`, packed weight copies; None (default): on the CPU when the copies take
            at most PACK_LIMIT_BYTES (models/llm.py)."""
        self.llm = llm
        self.config: LLMConfig = llm.config
        self.compiled = compile
        self.bucket = bucket
        self.cache_step = cache_step
        self.warmup_ms = 0.0  # time spent in first calls of new shapes (compilation, graph capture)
        self._caches: dict[int, KVCache] = {}
        self._seen: set[tuple] = set()
        self._fn: Any = self._forward
        if compile:
            _raise_recompile_limit()
            if mode is None and llm.device.type == "cuda":
                mode = "reduce-overhead"
            self.mode = mode
            self._fn = torch.compile(self._forward, fullgraph=True, dynamic=False, mode=mode, backend=backend)
        else:
            self.mode = None
            llm.fuse(pack)

    # ------------------------------------------------------------------ the LanguageModel protocol

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.llm.embed(input_ids)

    def embed_pose_queries(self, num_queries: int = 80) -> Tensor:
        return self.llm.embed_pose_queries(num_queries)

    def prompt_length_bucket(self, length: int) -> int:
        """Compiled: prompts are left-padded to a multiple of `bucket` (few prefill graphs). Eager: unchanged
        (padding would only add work)."""
        return _round_up(length, self.bucket) if self.compiled else length

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """The batch size's static cache, grown (reallocated) only when a call needs more slots than it has."""
        dtype = dtype or self.llm.dtype
        cache = self._caches.get(batch_size)
        # A cache made inside inference_mode cannot be written outside it (and the other way round): realloc.
        if (cache is None or cache.max_length < max_length or cache.k[0].dtype != dtype
                or cache.k[0].is_inference() != torch.is_inference_mode_enabled()):
            cache = self.llm.new_cache(batch_size, _round_up(max_length, self.cache_step), dtype=dtype)
            if self.compiled:
                for tensor in cache.k + cache.v:
                    # CUDA graphs may mutate only inputs at fixed addresses; dynamo then also skips guarding them.
                    torch._dynamo.mark_static_address(tensor)
            self._caches[batch_size] = cache
        # Once per generation: fused copies catch up with changed parameters; the RoPE table covers the cache
        # before any compiled call reads it.
        self.llm.refresh_fused()
        self.llm.rope_table(cache.max_length)
        return cache

    @property
    def eager(self) -> Any:
        """What runs calls whose shapes do not repeat (a conversation turn's new tokens, `generation.extend`):
        compiled, the model's own forward (no graph compiled for each length); eager, this object itself."""
        return self.llm if self.compiled else self

    def new_private_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """A cache of the caller's own, which no other call reuses: a conversation keeps its history's states in
        it between calls (`generation.PrefixCache`), while task calls keep sharing the batch size's cache."""
        cache = self.llm.new_cache(batch_size, _round_up(max_length, self.cache_step), dtype=dtype or self.llm.dtype)
        if self.compiled:
            for tensor in cache.k + cache.v:
                torch._dynamo.mark_static_address(tensor)
        self.llm.refresh_fused()
        self.llm.rope_table(cache.max_length)
        return cache

    def release_caches(self) -> None:
        self._caches.clear()

    def __call__(
        self,
        input_ids: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        positions: Tensor | None = None,
        mask: MixedMask | None = None,
        cache: KVCache | None = None,
        kv_length: int | None = None,
        logits_positions: slice | None = slice(None),
        return_hidden: bool = False,
    ) -> LMOutput:
        if not self.compiled or return_hidden or cache is None or positions is None or mask is None:
            # Eager, and anything but the generation loop's calls: the model's forward as it is.
            return self.llm(input_ids, input_embeds=input_embeds, positions=positions, mask=mask, cache=cache,
                            kv_length=kv_length, logits_positions=logits_positions, return_hidden=return_hidden)
        if logits_positions is None or logits_positions.step is not None or logits_positions.stop is not None:
            raise ValueError(f"FastLM compiles calls with logits_positions=slice(start, None); got {logits_positions}")
        inputs = input_ids if input_ids is not None else input_embeds.to(self.llm.dtype)  # type: ignore[union-attr]
        if kv_length != inputs.shape[1]:
            # Decode and pose steps attend the whole static cache (masked): a kv_length that grows with every
            # token would make every step a new graph. Only a prefill of a fresh cache (kv_length == T) keeps it.
            kv_length = None
        key = (inputs.dtype.is_floating_point, tuple(inputs.shape), cache.max_length, kv_length,
               logits_positions.start)
        first = key not in self._seen
        start = time.perf_counter()
        if self.mode == "reduce-overhead":
            # Tell CUDA-graph trees that the previous step's outputs are consumed (we cloned what we keep).
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._fn(inputs, positions, mask.block_start, mask.block_end, mask.key_start, mask.query_offset,
                          cache, kv_length, logits_positions.start)
        if self.mode == "reduce-overhead":
            logits = logits.clone()  # the graph's output buffer is overwritten by its next replay
        if first:
            if logits.device.type == "cuda":
                torch.cuda.synchronize(logits.device)
            self.warmup_ms += (time.perf_counter() - start) * 1e3
            self._seen.add(key)
        return LMOutput(logits, None)

    # ------------------------------------------------------------------ the compiled body

    def _forward(self, inputs: Tensor, positions: Tensor, block_start: Tensor, block_end: Tensor,
                 key_start: Tensor, query_offset: Tensor, cache: KVCache, kv_length: int | None,
                 logits_start: int | None) -> Tensor:
        mask = MixedMask(block_start, block_end, key_start, query_offset)
        if inputs.is_floating_point():
            out = self.llm(input_embeds=inputs, positions=positions, mask=mask, cache=cache, kv_length=kv_length,
                           logits_positions=slice(logits_start, None))
        else:
            out = self.llm(inputs, positions=positions, mask=mask, cache=cache, kv_length=kv_length,
                           logits_positions=slice(logits_start, None))
        return out.logits
