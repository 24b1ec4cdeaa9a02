"""The fast torch path: a static KV cache reused across calls, a lean eager forward, optionally compiled calls.

`FastLM` wraps a `MistralLM` and satisfies the `LanguageModel` protocol of `unipose_sdk.generation`, so the same
greedy loop drives it. It never changes the wrapped model: the plain `MistralLM` (eager, `sdpa_dense`) stays the
reference every test compares against.

Static KV cache, allocated once per batch size and reused by every later call (gpt-fast style). Its length is
rounded up to `cache_step` slots and only ever grows, so compiled graphs see few cache shapes. Reusing it without
clearing is safe: every slot a query may see (the mixed mask is causal in slots, and the left padding lies before
`key_start`) is written earlier in the same call; stale slots are masked, and hold finite values from earlier
calls, so they contribute exact zeros.

Eager calls (`compile=False`, the default on the CPU) of the generation loop run `_LeanForward` instead of
`MistralLM.forward` (anything else, and any call with gradients enabled, runs the plain forward). At batch 1 on
the tiny model the plain forward's decode step was ~300 top-level aten ops (~60 of them no-op dtype casts), each
costing microseconds of dispatch, plus a fused attention call costing ~0.3 ms of setup for one query row: the
overhead, not the arithmetic, was the decode time. The lean forward computes the same function over the same
weights in ~170 ops:
- RoPE cos/sin come from a table [positions, 2 * D] built once with `rope_cos_sin`'s arithmetic (the same values)
  and read with one lookup per call (one view at batch 1), not recomputed (arange, pow, cat, cos, sin) per call.
  The sign of `rotate_half` is folded into the sin half of the table.
- What every layer shares is prepared once per call: the cache write (a plain copy into the slot range when all
  rows write at the same offset, else one scatter index), and the attention mask. On the CPU the mask's few ints
  are read on the host (no device to sync with), so the common cases are decided without tensor ops.
- One-token calls (decode) attend with SDPA over the attended cache slots, the query heads of each KV head as
  query rows of that head (grouped-query attention without repeating K/V), with no mask at all when nothing in
  those slots is masked (batch 1 without padding). The fused C++ kernel re-tiles all keys and allocates scratch
  on every call, which one query row cannot amortise. Multi-token calls up to `SDPA_MAX_SCORES` (the tiny
  model's prefill and pose block) take SDPA with the mask as an additive bias built once per call: the
  reference's own attention (`sdpa_dense`) without rebuilding the mask in every layer. Longer ones take
  `mixed_attention` (the fused kernel by default), which is ahead there.
- `torch.mm` / `torch.addmm` instead of `F.linear` (fewer dispatch layers), the residual adds folded into addmm
  (beta = 1); RMSNorm with the module's float32 arithmetic minus its casts, its constants as 0-dim tensors (aten
  wraps every Python scalar operand into a new tensor per call); no dtype casts where the tensor already has
  the target dtype; the final norm and the LM head only at the positions that get logits.
- On the CPU, when the linear weights are small (`PACK_LIMIT_BYTES`), they are copied once into contiguous
  [in, out] matrices, q/k/v and gate/up packed into one each: MKL multiplies one row by a contiguous [in, out]
  matrix 1.3-3x faster than by the transposed view of [out, in], and one packed matmul replaces three or two.
  The packed q/k weight also carries the q/k columns with their halves swapped, so RoPE is three elementwise
  ops on matmul outputs, and in float32 the copies absorb the RMSNorm weights in front of them (diag(w) W).
  A GPU or a 7B model cannot afford a second copy of the weights (and there the matmuls are bandwidth-bound,
  so packing gains nothing): they use transposed views of the parameters. The copies are checked against the
  parameters (storage and version counter) at every `new_cache` (once per generation) and rebuilt when the
  weights changed.
Numerics: the same operations on the same values except for summation order (matmul layout, attention
kernel) and the folded norm weights (rounded once in the product), so logits agree within float tolerance
(~1e-6) and greedy tokens are the reference's; the tests compare
call by call (decode, padded prefill, pose block at per-row offsets) and token by token.

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
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from unipose_sdk.models.attention import mixed_attention
from unipose_sdk.models.attention_mask import MixedMask, dense_mask
from unipose_sdk.models.config import LLMConfig
from unipose_sdk.models.llm import KVCache, LMOutput, MistralLM, RMSNorm, rope_cos_sin

# Prompts are left-padded to a multiple of this: few prefill graphs to compile (each costs seconds on the tiny model,
# about a minute at 7B), at the price of at most 127 padded rows per prefill.
_DEFAULT_BUCKET = 128
_DEFAULT_CACHE_STEP = 256
# Copy the linear weights into matmul-friendly packed [in, out] matrices only when they take at most this much (CPU).
PACK_LIMIT_BYTES = 128 * 2**20
# Multi-token calls with at most this many scores per head (Tq * Tk) attend with SDPA and a per-call mask bias;
# longer ones with the fused kernel (see _LeanForward._attention_plan).
SDPA_MAX_SCORES = 300 * 300


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
    # packed: ([C, (2 (H + Hkv) + Hkv) D],) with columns q, k, swapped q, swapped k, v (see _LeanForward._qkv);
    # else transposed views (q [C, H D], k [C, Hkv D], v [C, Hkv D])
    qkv_t: tuple[Tensor, ...]
    o_t: Tensor  # [H D, C]
    gate_up_t: tuple[Tensor, ...]  # packed: ([C, 2 I],); else (gate [C, I], up [C, I])
    down_t: Tensor  # [I, C]


class _CallPlan(NamedTuple):
    """What every layer of one call shares, prepared once per call."""

    # (cache layer [B, Hkv, Tmax, D], new [B, Hkv, T, D], or [B, Hkv, D] for one token) -> None
    write: Callable[[Tensor, Tensor], Any]
    attend: Callable[[Tensor, Tensor, Tensor], Tensor]  # (q [N, H, D], k, v [B, Hkv, Tk, D]) -> [N, H * D]


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
        self.on_cpu = self.device.type == "cpu"  # host reads of small int tensors cost no device sync
        if pack is None:
            linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in llm.modules()
                               if isinstance(m, torch.nn.Linear))
            pack = self.on_cpu and linear_bytes <= PACK_LIMIT_BYTES
        self.packed = pack
        # Packed float32 copies also absorb the RMSNorm weights (see _norm); views and half precision cannot.
        self.folded = pack and self.dtype == torch.float32
        with torch.no_grad():
            self.layers = [self._layer_weights(layer) for layer in llm.model.layers]
            self.embed_weight = llm.model.embed_tokens.weight.detach()
            self.final_norm: RMSNorm = llm.model.norm
            self.lm_head_t = self._transposed(llm.lm_head, norm=self.final_norm)[0]
            self.rope_table = self._rope_table(config.max_position_embeddings)
            self.key_ids = torch.arange(config.max_position_embeddings, device=self.device, dtype=torch.int32)

            def scalar(value: float, dtype: torch.dtype = self.dtype) -> Tensor:
                # 0-dim tensors: aten wraps a Python scalar operand into a new tensor (and casts it) on every call.
                return torch.tensor(value, dtype=dtype, device=self.device)

            self._zero, self._lowest, self._minus_inf = scalar(0.0), scalar(torch.finfo(self.dtype).min), scalar(
                float("-inf"))
            self._norm_constants = {id(norm): (scalar(float(norm.weight.shape[0]), torch.float32),
                                               scalar(norm.eps, torch.float32))
                                    for norm in [self.final_norm] + [n for w in self.layers for n in w[:2]]}
        self._fingerprint = self._current_fingerprint()

    def _transposed(self, *modules: torch.nn.Linear, norm: RMSNorm | None = None) -> tuple[Tensor, ...]:
        """The weights [out, in] of `modules` as [in, out] operands of torch.mm.

        Packed: one contiguous copy [in, sum(out)]. MKL's matmul of one row reads a contiguous [in, out] operand
        1.3-3x faster than the transposed view of [out, in] on the tiny model's shapes, and one packed matmul
        replaces several dispatches. Otherwise transposed views: no memory.
        norm: the RMSNorm in front of these matmuls; folded: its weight scales the rows, (x * w) W = x (diag(w) W)."""
        weights = [m.weight.detach() for m in modules]
        if not self.packed:
            return tuple(w.t() for w in weights)
        packed = torch.cat(weights, dim=0).t().contiguous()
        return (packed.mul_(norm.weight.detach().unsqueeze(1)) if norm is not None and self.folded else packed,)

    def _layer_weights(self, layer: Any) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        if self.packed:
            # Extra columns computing rotate_half's halves swapped ([x2, x1] per head) for q and k: RoPE is then
            # three elementwise ops on matmul outputs, no concatenation of halves per layer (+25 % qkv bytes).
            half = self.head_dim // 2

            def swapped(weight: Tensor) -> Tensor:  # [heads * D, C], rows (h, d) -> (h, (d + D/2) mod D)
                per_head = weight.view(-1, self.head_dim, weight.shape[1])
                return torch.cat((per_head[:, half:], per_head[:, :half]), dim=1).view_as(weight)

            q, k, v = attn.q_proj.weight.detach(), attn.k_proj.weight.detach(), attn.v_proj.weight.detach()
            qkv_t = torch.cat((q, k, swapped(q), swapped(k), v), dim=0).t().contiguous()
            if self.folded:
                qkv_t.mul_(layer.input_layernorm.weight.detach().unsqueeze(1))
            qkv = (qkv_t,)
        else:
            qkv = self._transposed(attn.q_proj, attn.k_proj, attn.v_proj)
        return _LayerWeights(layer.input_layernorm, layer.post_attention_layernorm, qkv,
                             self._transposed(attn.o_proj)[0],
                             self._transposed(mlp.gate_proj, mlp.up_proj, norm=layer.post_attention_layernorm),
                             self._transposed(mlp.down_proj)[0])

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
            self.key_ids = torch.arange(count, device=self.device, dtype=torch.int32)

    # ---------------------------------------------------------------- per layer

    def _norm(self, x: Tensor, norm: RMSNorm) -> Tensor:
        """The module's float32 arithmetic without its casts: mean = sum / size as aten computes it, x * x as
        pow(2) computes it, (sum / size) + eps as one addcdiv. (F.rms_norm gives the same values but decomposes
        into twice the ops on the CPU.) Folded: the weight is already in the next matmul's packed copy (5-9 %
        of a tiny-model decode step; the products round differently, float tolerance)."""
        if x.dtype != torch.float32:
            return norm(x)  # half precision: the module's cast order matters
        size, eps = self._norm_constants[id(norm)]
        inverse_rms = torch.addcdiv(eps, (x * x).sum(-1, keepdim=True), size).rsqrt_()
        return x * inverse_rms if self.folded else (x * inverse_rms).mul_(norm.weight)

    def _rope(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """x [N, heads, D] -> x * cos + rotate_half(x) * sin; rotate_half(x) * sin = [x2, x1] * signed_sin."""
        half = self.head_dim // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin

    def _qkv(self, h: Tensor, weights: _LayerWeights, cos: Tensor, signed_sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h [N, C] -> rotated q [N, H, D], rotated k [N, Hkv, D], v [N, Hkv, D] (views where possible)."""
        n, heads, kv_heads, dim = h.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        if self.packed:
            qk_heads = heads + kv_heads
            out = torch.mm(h, weights.qkv_t[0]).view(n, 2 * qk_heads + kv_heads, dim)
            # q and k rotated in one pass: x * cos + [x2, x1] * signed_sin, [x2, x1] from the swapped columns
            qk = out[:, :qk_heads] * cos + out[:, qk_heads : 2 * qk_heads] * signed_sin
            return qk[:, :heads], qk[:, heads:], out[:, 2 * qk_heads :]
        q_t, k_t, v_t = weights.qkv_t
        q = self._rope(torch.mm(h, q_t).view(n, heads, dim), cos, signed_sin)
        k = self._rope(torch.mm(h, k_t).view(n, kv_heads, dim), cos, signed_sin)
        return q, k, torch.mm(h, v_t).view(n, kv_heads, dim)

    def _mlp(self, x: Tensor, h: Tensor, weights: _LayerWeights) -> Tensor:
        """x + down(silu(gate(h)) * up(h)), the residual add folded into the last matmul (beta = 1)."""
        if self.packed:
            gate_up = torch.mm(h, weights.gate_up_t[0])
            size = gate_up.shape[1] // 2
            gate, up = gate_up[:, :size], gate_up[:, size:]
        else:
            gate, up = torch.mm(h, weights.gate_up_t[0]), torch.mm(h, weights.gate_up_t[1])
        return torch.addmm(x, F.silu(gate).mul_(up), weights.down_t)

    # ---------------------------------------------------------------- per call

    def _rows(self, table: Tensor, index: Tensor, n: int) -> Tensor:
        """table[index.flatten()] -> [n, width]; one row on the CPU by a view (a gather costs ~5x more)."""
        if n == 1 and self.on_cpu:
            row = int(index)
            if 0 <= row < table.shape[0]:  # else index_select raises its out-of-range error
                return table.narrow(0, row, 1)
        return torch.index_select(table, 0, index.reshape(n))

    def _plan(self, mask: MixedMask, batch: int, num_tokens: int, num_keys: int) -> _CallPlan:
        # On the CPU the mask's few ints are read once, and the cases below are decided on the host.
        host = [field.tolist() for field in mask.fields()] if self.on_cpu else None
        return _CallPlan(self._writer(mask.query_offset, host, batch, num_tokens),
                         self._one_token_attention(mask, host, num_keys) if num_tokens == 1
                         else self._multi_token_attention(mask, batch, num_tokens, num_keys))

    def _writer(self, query_offset: Tensor, host: list | None, batch: int, num_tokens: int
                ) -> Callable[[Tensor, Tensor], Any]:
        """Token t of row b goes to cache slot offset[b] + t (the write offset is the mask's query offset): one
        scatter per layer with an index built once per call, or, when every row writes at the same known offset
        (prefill, batch 1), a plain copy into the slot range (~5x cheaper than scatter for a long call)."""
        if host is not None and len(set(host[3])) == 1:
            start = host[3][0]
            if num_tokens == 1:
                return lambda cache_layer, new: cache_layer.select(2, start).copy_(new)
            return lambda cache_layer, new: cache_layer.narrow(2, start, num_tokens).copy_(new)
        slots = query_offset.to(torch.long).view(batch, 1, 1, 1)
        if num_tokens > 1:
            slots = slots + torch.arange(num_tokens, device=query_offset.device).view(1, 1, num_tokens, 1)
            index = slots.expand(batch, self.num_kv_heads, num_tokens, self.head_dim)
            return lambda cache_layer, new: cache_layer.scatter_(2, index, new)
        index = slots.expand(batch, self.num_kv_heads, 1, self.head_dim)
        return lambda cache_layer, new: cache_layer.scatter_(2, index, new.unsqueeze(2))

    def _one_token_attention(self, mask: MixedMask, host: list | None, num_keys: int
                             ) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """Decode: SDPA with the G query heads of each KV head as G query rows of that head ([B, Hkv, G, D]: no
        repeated K/V, no GQA expansion), the mask as an additive bias built once per call, and none at all when
        every row sees every attended slot (batch 1 without padding, known on the CPU). 1.5-2.5x cheaper than
        baddbmm / softmax / bmm, and than the fused kernel, which re-tiles every key and allocates scratch on each
        call: one query row cannot amortise that.

        The keys a query at slot `pos` may see are one interval [key_start, limit): limit is pos + 1, or the block's
        end when pos lies inside the block. Masked keys get the lowest finite bias rather than -inf, so a row
        without any key stays finite; it is then zeroed, as the reference does."""
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        groups = heads // kv_heads
        bias, has_key = self._one_token_mask(mask, host, num_keys)

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            batch = k.shape[0]
            out = F.scaled_dot_product_attention(q.view(batch, kv_heads, groups, dim), k, v, attn_mask=bias,
                                                 scale=self.scale)
            if has_key is not None:
                out = out * has_key
            return out.view(batch, heads * dim)

        return attend

    def _one_token_mask(self, mask: MixedMask, host: list | None, num_keys: int
                        ) -> tuple[Tensor | None, Tensor | None]:
        """The additive bias [B, 1, 1, Tk] (None: nothing masked) and the rows seeing any key [B, 1, 1, 1] (None
        when all do)."""
        if host is not None:
            limits = [min(num_keys, max(pos + 1, end) if start <= pos < end else pos + 1)
                      for start, end, pos in zip(host[0], host[1], host[3])]
            if all(ks <= 0 for ks in host[2]) and all(limit == num_keys for limit in limits):
                return None, None
        block_start, block_end, key_start, query_offset = mask.fields()
        batch = query_offset.shape[0]
        after_query = query_offset + 1
        in_block = (query_offset >= block_start) & (query_offset < block_end)
        limit = torch.where(in_block, torch.maximum(after_query, block_end), after_query)
        keys = self.key_ids.narrow(0, 0, num_keys)
        allowed = (keys >= key_start.view(batch, 1)) & (keys < limit.view(batch, 1))  # [B, Tk]
        bias = torch.where(allowed, self._zero, self._lowest).view(batch, 1, 1, num_keys)
        if host is not None and all(limit > max(ks, 0) for limit, ks in zip(limits, host[2])):
            return bias, None
        has_key = limit.clamp(max=num_keys) > key_start.clamp(min=0)
        return bias, has_key.to(bias.dtype).view(batch, 1, 1, 1)

    def _multi_token_attention(self, mask: MixedMask, batch: int, num_tokens: int, num_keys: int
                               ) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """Up to `SDPA_MAX_SCORES` scores per head: SDPA with the mask as an additive bias built once per call (the
        `sdpa_dense` reference's mask and values without rebuilding the mask in every layer); the fused kernel's
        fixed cost per call (re-tiling the keys, scratch, op dispatch) makes it slower there, ahead from ~300 x 300
        on. Longer calls: `mixed_attention` (the fused kernel by default)."""
        heads, dim = self.num_heads, self.head_dim

        def heads_first(q: Tensor) -> Tensor:  # [N, H, D] -> [B, H, T, D]
            return q.view(batch, num_tokens, heads, dim).transpose(1, 2)

        def flatten(out: Tensor) -> Tensor:  # [B, H, T, D] -> [N, H * D]
            return out.transpose(1, 2).reshape(batch * num_tokens, heads * dim)

        if num_tokens * num_keys > SDPA_MAX_SCORES:
            return lambda q, k, v: flatten(mixed_attention(heads_first(q), k, v, mask))
        allowed = dense_mask(mask, num_tokens, num_keys)  # [B, 1, T, Tk]
        has_key = allowed.any(dim=-1, keepdim=True)
        # As sdpa_dense: a query row without any key sees everything, then is zeroed.
        bias = torch.where(allowed | ~has_key, self._zero, self._minus_inf)
        keep = None if self.on_cpu and bool(has_key.all()) else has_key.to(bias.dtype)

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out = F.scaled_dot_product_attention(heads_first(q), k, v, attn_mask=bias, scale=self.scale,
                                                 enable_gqa=True)
            return flatten(out if keep is None else out * keep)

        return attend

    # ---------------------------------------------------------------- the forward

    def __call__(self, inputs: Tensor, positions: Tensor, mask: MixedMask, cache: KVCache, kv_length: int | None,
                 logits_positions: slice | None) -> Tensor | None:
        """inputs: ids [B, T] or embeddings [B, T, C]; the rest as in `MistralLM.forward`. Returns the logits."""
        batch, num_tokens = inputs.shape[:2]
        n = batch * num_tokens
        kv_heads, dim = self.num_kv_heads, self.head_dim
        if inputs.is_floating_point():
            x = (inputs if inputs.dtype == self.dtype else inputs.to(self.dtype)).reshape(n, -1)
        else:
            x = self._rows(self.embed_weight, inputs, n)  # [N, C]
        cos, signed_sin = self._rows(self.rope_table, positions, n).view(n, 2, 1, dim).unbind(1)
        num_keys = cache.max_length if kv_length is None else kv_length
        plan = self._plan(mask, batch, num_tokens, num_keys)

        for layer_index, weights in enumerate(self.layers):
            q, k, v = self._qkv(self._norm(x, weights.input_norm), weights, cos, signed_sin)
            keys, values = cache.k[layer_index], cache.v[layer_index]
            if num_tokens == 1:  # k, v [B, Hkv, D]
                plan.write(keys, k)
                plan.write(values, v)
            else:
                plan.write(keys, k.view(batch, num_tokens, kv_heads, dim).transpose(1, 2))
                plan.write(values, v.view(batch, num_tokens, kv_heads, dim).transpose(1, 2))
            if kv_length is not None:
                keys, values = keys.narrow(2, 0, kv_length), values.narrow(2, 0, kv_length)
            x = torch.addmm(x, plan.attend(q, keys, values), weights.o_t)
            x = self._mlp(x, self._norm(x, weights.post_attention_norm), weights)

        if logits_positions is None:
            return None
        start, stop, step = logits_positions.indices(num_tokens)
        kept = len(range(start, stop, step))
        if kept != num_tokens:  # the final norm and the LM head only where logits are asked for
            x = x.view(batch, num_tokens, -1)[:, logits_positions].reshape(batch * kept, -1)
        logits = torch.mm(self._norm(x, self.final_norm), self.lm_head_t).view(batch, kept, -1)
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
