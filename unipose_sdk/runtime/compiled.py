"""The fast torch path: a static KV cache reused across calls, a lean eager forward, optionally compiled calls.

`FastLM` wraps a `MistralLM` and satisfies the `LanguageModel` protocol of `unipose_sdk.generation`, so the same
greedy loop drives it. It never changes the wrapped model: the plain `MistralLM` (eager, `sdpa_dense`) stays the
reference every test compares against.

Static KV cache, allocated once per batch size and reused by every later call (gpt-fast style). Its length is
rounded up to `cache_step` slots and only ever grows, so compiled graphs see few cache shapes. Reusing it without
clearing is safe: every slot a query may see (the mixed mask is causal in slots, and the left padding lies before
`key_start`) is written earlier in the same call; stale slots are masked, and hold finite values from earlier
calls, so they contribute exact zeros.

Eager calls (`compile=False`, the default on the CPU) run `_LeanForward` instead of `MistralLM.forward`. At batch 1
on the tiny model a decode step of the plain forward is ~130 aten ops plus ~170 no-op dtype casts, each costing
microseconds of dispatch, and a fused attention call whose setup costs ~0.3 ms for one query row: the overhead,
not the arithmetic, is the decode time. The lean forward computes the same function over the same weights:
- RoPE cos/sin come from a table [positions, 2 * D] built once with the same arithmetic as `rope_cos_sin` (the
  same values) and gathered with one embedding lookup per call; the sign of `rotate_half` is folded into the
  sin half, so rotating q and k together is roll, mul, mul, add.
- What every layer shares (the cache-slot index of the writes, the decode mask) is built once per call.
- A one-token call (decode) attends with baddbmm (scores * scale + mask bias in one op), softmax, bmm over the
  attended cache slots, the query heads of each KV head grouped as rows (grouped-query attention without
  repeating K/V). The fused C++ kernel re-tiles all keys and allocates scratch on every call, which one query row
  cannot amortise. Longer calls (prefill, the pose block) keep `mixed_attention` (the fused kernel).
- `torch.mm` / `torch.addmm` on transposed views of the weights instead of `F.linear` (fewer dispatch layers),
  the residual adds folded into addmm (beta = 1); RMSNorm as `F.rms_norm` in float32 (the same values as the
  module); no dtype casts where the tensor already has the target dtype; the final norm and the LM head only
  at the positions that get logits.
- On the CPU, when the copies are small (`PACK_LIMIT_BYTES`), q/k/v and gate/up are packed into one weight each:
  one mm instead of three and two. Packing copies weights, which a GPU or a 7B model cannot afford (and where the
  matmuls are bandwidth-bound, so packing gains nothing); there the separate weights are used in place. The
  packed copies are checked against the parameters (storage and version counter) at every `new_cache` (once per
  generation) and rebuilt when the weights changed.
Everything but the attention of one-token calls gives bitwise the plain forward's values (tests check it); the
decode attention differs in summation order only (float tolerance, identical greedy tokens).

Compiled calls (`compile=True`): every generation call goes through `torch.compile(fullgraph=True,
dynamic=False)` of the plain forward. The shapes the loop produces are few by construction: the decode step
[B, 1], the pose step [B, 81], and the prefill (or the one-pass prefill + pose block) at bucketed prompt lengths:
`prompt_length_bucket` makes generation left-pad prompts to a multiple of `bucket` tokens. On CUDA the default
mode is "reduce-overhead": each graph is captured once and replayed as a CUDA graph, so a decode step is one
graph launch with no host work. The cache tensors are marked as static addresses, which lets CUDA graphs mutate
them in place. First calls of a new shape compile (seconds to minutes): `warmup_ms` accumulates that time, so a
benchmark can report it apart from the steady-state latency. On the CPU, compiling is off by default: see
benchmarks/results for the measurement behind that choice.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from unipose_sdk.models.attention import mixed_attention
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig
from unipose_sdk.models.llm import KVCache, LMOutput, MistralLM, RMSNorm, rope_cos_sin

# Prompts are left-padded to a multiple of this: few prefill graphs to compile (each costs seconds on the tiny model,
# about a minute at 7B), at the price of at most 127 padded rows per prefill.
_DEFAULT_BUCKET = 128
_DEFAULT_CACHE_STEP = 256
# Copy the linear weights into matmul-friendly packed [in, out] matrices only when they take at most this much (CPU).
PACK_LIMIT_BYTES = 128 * 2**20


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each bucketed prefill length and each cache length is its own graph; dynamo's default limit (8) is low."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < limit:
            setattr(dynamo_config, name, limit)


def _version(tensor: Tensor) -> int:
    """The in-place version counter (bumped by copy_, load_state_dict ...); inference tensors have none."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


# ---------------------------------------------------------------------------------------------------------------
# The lean eager forward


class _LayerWeights(NamedTuple):
    input_norm: RMSNorm
    post_attention_norm: RMSNorm
    qkv_t: tuple[Tensor, ...]  # (packed [C, (H + 2 Hkv) D],) or (q [C, H D], k [C, Hkv D], v [C, Hkv D]) views
    o_t: Tensor  # [H D, C]
    gate_up_t: tuple[Tensor, ...]  # (packed [C, 2 I],) or (gate [C, I], up [C, I])
    down_t: Tensor  # [I, C]


class _LeanForward:
    """`MistralLM.forward` for calls with a cache, with the per-op overhead taken out (module docstring).

    Built from the model's current parameters; `is_current()` says whether they are still the ones it holds.
    """

    def __init__(self, llm: MistralLM, pack: bool | None = None) -> None:
        config = llm.config
        self.llm = llm
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5  # what mixed_attention uses by default
        self.dtype = llm.dtype
        self.device = llm.device
        layers = llm.model.layers
        if pack is None:
            linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in llm.modules()
                               if isinstance(m, torch.nn.Linear))
            pack = self.device.type == "cpu" and linear_bytes <= PACK_LIMIT_BYTES
        self.packed = pack
        with torch.no_grad():
            self.layers = [self._layer_weights(layer, pack) for layer in layers]
            self.embed_weight = llm.model.embed_tokens.weight.detach()
            self.lm_head_t = self._transposed(pack, llm.lm_head)[0]
            self.final_norm: RMSNorm = llm.model.norm
            self.rope_table = self._rope_table(config.max_position_embeddings)
            # allowed / masked key as additive bias (the lowest finite value: see _decode_mask)
            self._bias_values = (torch.zeros((), dtype=self.dtype, device=self.device),
                                 torch.tensor(torch.finfo(self.dtype).min, dtype=self.dtype, device=self.device))
            self.key_ids = torch.arange(config.max_position_embeddings, device=self.device, dtype=torch.int32)
            self._norm_constants = {
                id(norm): (torch.tensor(float(norm.weight.shape[0]), device=self.device),
                           torch.tensor(norm.eps, device=self.device))
                for norm in [self.final_norm] + [n for w in self.layers for n in w[:2]]
            }
        self._fingerprint = self._current_fingerprint()

    @staticmethod
    def _transposed(pack: bool, *modules: torch.nn.Linear) -> tuple[Tensor, ...]:
        """The weights [out, in] of `modules` as [in, out] operands of torch.mm.

        pack: one contiguous copy [in, sum(out)]. MKL's skinny matmul reads a contiguous [in, out] operand 1.3-3x
        faster than the transposed view of [out, in] on the tiny model's shapes (one query row), and one packed
        matmul replaces several dispatches. Otherwise: transposed views, no memory."""
        weights = [m.weight.detach() for m in modules]
        if pack:
            return (torch.cat(weights, dim=0).t().contiguous(),)
        return tuple(w.t() for w in weights)

    @classmethod
    def _layer_weights(cls, layer: Any, pack: bool) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        return _LayerWeights(layer.input_layernorm, layer.post_attention_layernorm,
                             cls._transposed(pack, attn.q_proj, attn.k_proj, attn.v_proj),
                             cls._transposed(pack, attn.o_proj)[0],
                             cls._transposed(pack, mlp.gate_proj, mlp.up_proj), cls._transposed(pack, mlp.down_proj)[0])

    def _rope_table(self, length: int) -> Tensor:
        """[length, 2 * D]: cos, then sin with the sign of rotate_half folded in (-sin on the first half)."""
        config = self.llm.config
        positions = torch.arange(length, device=self.device).unsqueeze(0)
        cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_theta, self.dtype)  # [1, length, D]
        half = config.head_dim // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return torch.cat((cos[0], signed_sin[0]), dim=-1).contiguous()

    def _current_fingerprint(self) -> tuple:
        return tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in self.llm.parameters())

    def is_current(self) -> bool:
        """Whether the model's parameters are still the tensors (and values) this was built from."""
        return self._current_fingerprint() == self._fingerprint

    def ensure_positions(self, count: int) -> None:
        """Make the RoPE table and the key-slot ids cover 0..count-1 (generation's positions never exceed the
        row's cache slot, so the cache length is enough)."""
        if self.rope_table.shape[0] < count:
            self.rope_table = self._rope_table(count)
        if self.key_ids.shape[0] < count:
            # allowed / masked key as additive bias (the lowest finite value: see _decode_mask)
            self._bias_values = (torch.zeros((), dtype=self.dtype, device=self.device),
                                 torch.tensor(torch.finfo(self.dtype).min, dtype=self.dtype, device=self.device))
            self.key_ids = torch.arange(count, device=self.device, dtype=torch.int32)

    # ---------------------------------------------------------------- pieces

    def _norm(self, x: Tensor, norm: RMSNorm) -> Tensor:
        """The module's float32 arithmetic (x * x is what pow(2) computes) without its casts, the temporaries
        updated in place. (F.rms_norm gives the same values but decomposes into twice the ops on the CPU.)"""
        if x.dtype != torch.float32:
            return norm(x)  # half precision: the module's cast order matters
        # mean = sum / size, as aten's mean computes it; 0-dim tensors instead of Python scalars, which aten
        # wraps into tensors and casts on every call.
        size, eps = self._norm_constants[id(norm)]
        inverse_rms = (x * x).sum(-1, keepdim=True).div_(size).add_(eps).rsqrt_()
        return (x * inverse_rms).mul_(norm.weight)

    def _rope(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """x [N, heads, D] -> x * cos + rotate_half(x) * sin; rotate_half(x) * sin = [x2, x1] * signed_sin."""
        half = self.head_dim // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin

    def _qkv(self, h: Tensor, weights: _LayerWeights, cos: Tensor, signed_sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h [N, C] -> rotated q [N, H, D], rotated k [N, Hkv, D], v [N, Hkv, D] (views where possible)."""
        n, heads, kv_heads, dim = h.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        if len(weights.qkv_t) == 1:
            qkv = torch.mm(h, weights.qkv_t[0]).view(n, heads + 2 * kv_heads, dim)
            qk = self._rope(qkv[:, : heads + kv_heads], cos, signed_sin)  # q and k rotated in one pass
            return qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
        q_t, k_t, v_t = weights.qkv_t
        q = self._rope(torch.mm(h, q_t).view(n, heads, dim), cos, signed_sin)
        k = self._rope(torch.mm(h, k_t).view(n, kv_heads, dim), cos, signed_sin)
        return q, k, torch.mm(h, v_t).view(n, kv_heads, dim)

    def _mlp(self, x: Tensor, h: Tensor, weights: _LayerWeights) -> Tensor:
        """x + down(silu(gate(h)) * up(h)), the residual add folded into the last matmul."""
        if len(weights.gate_up_t) == 1:
            gate_up = torch.mm(h, weights.gate_up_t[0])
            size = gate_up.shape[1] // 2
            gate, up = gate_up[:, :size], gate_up[:, size:]
        else:
            gate, up = torch.mm(h, weights.gate_up_t[0]), torch.mm(h, weights.gate_up_t[1])
        return torch.addmm(x, F.silu(gate).mul_(up), weights.down_t)

    def _decode_mask(self, mask: MixedMask, num_keys: int) -> tuple[Tensor, Tensor | None]:
        """For one query per row: the additive bias [B * Hkv or 1, 1, Tk] and the rows that see any key [B*Hkv, 1, 1]
        (None when all do, known without a device sync only on the CPU).

        The allowed keys of a query at slot `pos` are one interval [key_start, limit): limit is pos + 1, or the
        block's end when pos lies inside the block (the whole block and everything before it). Masked keys get the
        lowest finite value rather than -inf, so a row without any key stays finite; it is zeroed like the
        reference does."""
        block_start, block_end, key_start, query_offset = mask.fields()
        batch = query_offset.shape[0]
        after_query = query_offset + 1
        in_block = (query_offset >= block_start) & (query_offset < block_end)
        limit = torch.where(in_block, torch.maximum(after_query, block_end), after_query)
        keys = self.key_ids.narrow(0, 0, num_keys)
        allowed = (keys >= key_start.view(batch, 1)) & (keys < limit.view(batch, 1))  # [B, Tk]
        bias = torch.where(allowed, *self._bias_values).view(batch, 1, num_keys)
        kv_heads = self.num_kv_heads
        if batch > 1 and kv_heads > 1:
            bias = bias.repeat_interleave(kv_heads, dim=0)
        has_key = limit.clamp(max=num_keys) > key_start.clamp(min=0)
        if has_key.device.type == "cpu" and bool(has_key.all()):
            return bias, None
        return bias, has_key.to(bias.dtype).repeat_interleave(kv_heads).view(batch * kv_heads, 1, 1)

    def _decode_attention(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, has_key: Tensor | None) -> Tensor:
        """q [B, H, D] (one query per row), k, v [B, Hkv, Tk, D] -> [B, H * D]."""
        batch, kv_heads, num_keys, dim = k.shape
        groups = self.num_heads // kv_heads
        q = q.reshape(batch * kv_heads, groups, dim)  # the query heads of one KV head are its rows
        scores = torch.baddbmm(bias, q, k.reshape(batch * kv_heads, num_keys, dim).transpose(1, 2), alpha=self.scale)
        out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(batch * kv_heads, num_keys, dim))
        if has_key is not None:
            out = out * has_key
        return out.view(batch, self.num_heads * dim)

    # ---------------------------------------------------------------- the forward

    def __call__(self, inputs: Tensor, positions: Tensor, mask: MixedMask, cache: KVCache, kv_length: int | None,
                 logits_positions: slice | None) -> Tensor | None:
        """inputs: ids [B, T] or embeddings [B, T, C]; the rest as in `MistralLM.forward`. Returns the logits."""
        if inputs.is_floating_point():
            x = inputs if inputs.dtype == self.dtype else inputs.to(self.dtype)
        else:
            x = F.embedding(inputs, self.embed_weight)
        batch, num_tokens, hidden_size = x.shape
        n = batch * num_tokens
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        x = x.reshape(n, hidden_size)
        cos, signed_sin = F.embedding(positions.reshape(n), self.rope_table).view(n, 2, 1, dim).unbind(1)
        num_keys = cache.max_length if kv_length is None else kv_length

        # Shared by every layer: where this call's keys and values go, and for one token the mask as a bias.
        # The write offset is the mask's query offset: token t of row b goes to cache slot offset[b] + t.
        slots = mask.query_offset.to(torch.long).view(batch, 1, 1, 1)
        if num_tokens > 1:
            slots = slots + torch.arange(num_tokens, device=x.device).view(1, 1, num_tokens, 1)
        index = slots.expand(batch, kv_heads, num_tokens, dim)
        if num_tokens == 1:
            bias, has_key = self._decode_mask(mask, num_keys)

        for layer_index, weights in enumerate(self.layers):
            q, k, v = self._qkv(self._norm(x, weights.input_norm), weights, cos, signed_sin)
            keys, values = cache.k[layer_index], cache.v[layer_index]
            keys.scatter_(2, index, k.view(batch, num_tokens, kv_heads, dim).transpose(1, 2))
            values.scatter_(2, index, v.view(batch, num_tokens, kv_heads, dim).transpose(1, 2))
            if kv_length is not None:
                keys, values = keys.narrow(2, 0, kv_length), values.narrow(2, 0, kv_length)
            if num_tokens == 1:
                attended = self._decode_attention(q, keys, values, bias, has_key)
            else:
                q = q.view(batch, num_tokens, heads, dim).transpose(1, 2)
                attended = mixed_attention(q, keys, values, mask).transpose(1, 2).reshape(n, heads * dim)
            x = torch.addmm(x, attended, weights.o_t)
            x = self._mlp(x, self._norm(x, weights.post_attention_norm), weights)

        if logits_positions is None:
            return None
        hidden = x.view(batch, num_tokens, hidden_size)[:, logits_positions]
        kept = hidden.shape[1]
        hidden = self._norm(hidden.reshape(batch * kept, hidden_size), self.final_norm)
        logits = torch.mm(hidden, self.lm_head_t).view(batch, kept, -1)
        return logits if logits.dtype == torch.float32 else logits.float()


# ---------------------------------------------------------------------------------------------------------------
# FastLM

class FastLM:
    """A `LanguageModel` over `llm` with a reused static KV cache, a lean eager forward or compiled calls."""

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
        pack: eager only: pack q/k/v and gate/up weights into one copy each; None (default): on the CPU when the
            copies take at most PACK_LIMIT_BYTES (module docstring)."""
        self.llm = llm
        self.config: LLMConfig = llm.config
        self.compiled = compile
        self.bucket = bucket
        self.cache_step = cache_step
        self.warmup_ms = 0.0  # time spent in first calls of new shapes (compilation, graph capture)
        self._caches: dict[int, KVCache] = {}
        self._seen: set[tuple] = set()
        self._fn: Any = self._forward
        self._pack = pack
        self._lean: _LeanForward | None = None  # built on first use, rebuilt when the weights change
        if compile:
            _raise_recompile_limit()
            if mode is None and llm.device.type == "cuda":
                mode = "reduce-overhead"
            self.mode = mode
            self._fn = torch.compile(self._forward, fullgraph=True, dynamic=False, mode=mode, backend=backend)
        else:
            self.mode = None

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
        if not self.compiled:
            # Once per generation: catch weights loaded or moved since the lean forward copied / viewed them.
            self.lean_forward().ensure_positions(cache.max_length)
        return cache

    def release_caches(self) -> None:
        self._caches.clear()

    def lean_forward(self) -> _LeanForward:
        """The eager forward over the model's current weights (rebuilt when they changed since it was built)."""
        if self._lean is None or not self._lean.is_current():
            self._lean = _LeanForward(self.llm, self._pack)
        return self._lean

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
        if return_hidden or cache is None or positions is None or mask is None:
            # Anything but the generation loop's calls runs the plain forward.
            return self.llm(input_ids, input_embeds=input_embeds, positions=positions, mask=mask, cache=cache,
                            kv_length=kv_length, logits_positions=logits_positions, return_hidden=return_hidden)
        if not self.compiled and not torch.is_grad_enabled():  # the lean forward holds detached weights
            return self._call_lean(input_ids, input_embeds, positions, mask, cache, kv_length, logits_positions)
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

    def _call_lean(self, input_ids: Tensor | None, input_embeds: Tensor | None, positions: Tensor, mask: MixedMask,
                   cache: KVCache, kv_length: int | None, logits_positions: slice | None) -> LMOutput:
        if (input_ids is None) == (input_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] and input_embeds [B, T, C]")
        lean = self._lean if self._lean is not None else self.lean_forward()
        if cache.k[0].dtype != lean.dtype or cache.k[0].device != lean.device:
            # A cache in another dtype (the plain forward casts every write): not worth a second lean path.
            return self.llm(input_ids, input_embeds=input_embeds, positions=positions, mask=mask, cache=cache,
                            kv_length=kv_length, logits_positions=logits_positions)
        # Generation's positions never exceed the row's cache slot (left padding only lowers them).
        lean.ensure_positions(cache.max_length)
        inputs = input_ids if input_ids is not None else input_embeds
        return LMOutput(lean(inputs, positions, mask, cache, kv_length, logits_positions), None)

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
