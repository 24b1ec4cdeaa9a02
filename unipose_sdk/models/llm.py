"""The language model: a Mistral decoder in plain PyTorch, with a static KV cache.

The same module is ChatPose's LLaMA decoder: LLaMA-2 differs from Mistral only in settings (`LLMConfig`: as many
KV heads as query heads, RoPE theta 1e4, its sizes), not in structure or key names (`LlamaForCausalLM` keys are
`MistralForCausalLM`'s). ChatPose adds a pose head (`PoseHead`, keys `pose_head.{0,2}.*`) that regresses pose
parameters from the final-norm hidden state; it runs at the positions that get logits (`LMOutput.pose`).

Module attribute names are exactly the Hugging Face `MistralForCausalLM` state-dict keys
(`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`,
`lm_head.weight`), and RoPE uses the HF `rotate_half` convention, so HF weights load unchanged.

What differs from a plain causal LM, and why:
- Attention follows a `MixedMask`: text is causal, the 80 generated pose positions form one bidirectional block.
- Every row carries its own RoPE positions and its own cache write offset (= `mask.query_offset`), so a batch
  can be left-padded and rows can be at different points of generation (one row runs its pose step while the
  others wait).
- The forward takes input embeddings as well as ids, so image embeddings and the learned pose-query embeddings
  can be spliced in by the caller; it computes the LM head only at the positions asked for.

The inference speed-ups live here too, in the one definition (as in gpt-fast):
- RoPE cos/sin come from a table held by the model, computed with `rope_cos_sin` on first use for the needed
  length (a model built on the meta device and loaded later has nothing to re-initialise) and read by one lookup
  per call.
- `MistralLM.forward` prepares what every layer shares once per call (`CallPlan`): the RoPE rows, the cache write
  (a plain copy into the slot range when every row writes at the same offset, else one scatter), and the
  attention that `models.attention.resolve_attention_impl` picks, with its mask built once. On the CPU the
  mask's few ints are read on the host (no device to sync with), so the common cases cost no tensor ops. By
  default the CPU attends with SDPA (decode steps without a mask when nothing is masked; prefill and pose steps
  with a per-call bias) and takes the fused C++ kernel for calls above 300 x 300 scores; CUDA attends with SDPA
  everywhere (see models/attention.py).
- `fuse()` rewrites the model for inference (gradients off), as ultralytics' `Model.fuse()` does. On the CPU, when
  the linear weights are small (`PACK_LIMIT_BYTES`), it copies them once into contiguous [in, out] matrices:
  MKL multiplies a row by a contiguous [in, out] matrix 1.3-3x faster than by the transposed view of [out, in],
  and q/k/v and gate/up are packed into one matrix each, so one matmul replaces three or two. The packed q/k/v
  also carries the q and k columns with their halves swapped, which makes RoPE three elementwise ops on the
  matmul output, and in float32 the copies absorb the RMSNorm weight in front of them ((x * w) W = x (diag(w) W));
  the residual adds go into the matmuls (addmm). A GPU or a 7B model keeps its parameters (a second copy does
  not fit, and there the matmuls are bandwidth-bound, so packing gains nothing). Fused copies are rebuilt when
  the parameters change (see `fuse`). The state dict never changes, and an unfused model is the reference:
  fused results differ only by summation order and the once-rounded folded norm weights (float tolerance).

Shapes: B batch, T tokens of this call, N = B * T, Tk keys (cache slots), H query heads, Hkv key/value heads,
D head dim, C hidden size, V vocabulary. Inside the model a call's tokens are rows: x [N, C], q [N, H, D].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.models.attention import PreparedAttention, prepare_attention
from unipose_sdk.models.attention_mask import HostMask, MixedMask
from unipose_sdk.models.config import LLMConfig

NUM_POSE_QUERIES = 80  # the learned pose queries are the last 80 rows of the embedding table
# fuse() packs the linear weights into [in, out] copies (CPU only) when they take at most this much.
PACK_LIMIT_BYTES = 128 * 2**20


def mask_on_host(mask: MixedMask) -> HostMask | None:
    """The mask's ints, read once per call where that costs no device sync: on the CPU, outside tracing
    (torch.compile and export trace values they must not read)."""
    if mask.key_start.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return mask.to_host()


def lookup_rows(table: Tensor, index: Tensor, on_host: bool) -> Tensor:
    """table[index.flatten()] -> [N, width]; one row read on the host is a view (a gather costs ~5x more)."""
    if on_host and index.numel() == 1:
        row = int(index)
        if 0 <= row < table.shape[0]:  # else index_select raises its out-of-range error
            return table.narrow(0, row, 1)
    return torch.index_select(table, 0, index.reshape(-1))


# (layer, k, v [N, Hkv, D]) -> that layer's keys and values this call attends [B, Hkv, Tk, D]
CacheWrite = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


class KVCache:
    """Static key/value cache, allocated once for (batch, max_length): per layer k, v [B, Hkv, Tmax, D].

    Slots are written per row at `write_offset[b] + t`, so rows may sit at different offsets. Nothing is ever
    freed or shifted; generation only moves the per-row offsets. An out-of-place cache (`in_place=False`, for
    export) replaces every layer's tensors by updated ones instead of mutating them, so they can be graph outputs.
    """

    def __init__(self, config: LLMConfig, batch_size: int, max_length: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.batch_size = batch_size
        self.max_length = max_length
        self.in_place = True

    @classmethod
    def from_tensors(cls, keys: list[Tensor], values: list[Tensor], in_place: bool = True) -> KVCache:
        """A cache over existing per-layer tensors [B, Hkv, Tmax, D]."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.in_place = list(keys), list(values), in_place
        cache.batch_size, cache.max_length = keys[0].shape[0], keys[0].shape[2]
        return cache

    def writer(self, write_offset: Tensor, num_tokens: int, kv_length: int | None = None,
               host_offsets: list[int] | None = None) -> CacheWrite:
        """How one call stores its T tokens, decided once for all layers: token t of row b goes to slot
        write_offset[b] + t. The returned function stores a layer's k, v [N, Hkv, D] (N = B * T) and returns
        that layer's first kv_length slots (default all).

        host_offsets: write_offset's values when readable without a device sync. When every row writes at the
        same slot, a plain copy into the slot range replaces the scatter (~5x cheaper for a long call).
        """
        keys, values = self.k, self.v
        batch, heads, _, dim = keys[0].shape
        dtype, in_place = keys[0].dtype, self.in_place

        def heads_first(new: Tensor) -> Tensor:  # [N, Hkv, D] -> [B, Hkv, T, D]
            return new.view(batch, num_tokens, heads, dim).transpose(1, 2)

        if in_place and host_offsets is not None and len(set(host_offsets)) == 1:
            start = host_offsets[0]

            def store(layer: int, k: Tensor, v: Tensor) -> None:
                if num_tokens == 1:  # a decode step: k, v [B, Hkv, D] are already one slot of every row
                    keys[layer].select(2, start).copy_(k)
                    values[layer].select(2, start).copy_(v)
                else:
                    keys[layer].narrow(2, start, num_tokens).copy_(heads_first(k))
                    values[layer].narrow(2, start, num_tokens).copy_(heads_first(v))
        else:
            slots = write_offset.to(torch.long).view(-1, 1, 1, 1) + torch.arange(
                num_tokens, device=write_offset.device).view(1, 1, num_tokens, 1)
            index = slots.expand(batch, heads, num_tokens, dim)

            def store(layer: int, k: Tensor, v: Tensor) -> None:
                if in_place:
                    keys[layer].scatter_(2, index, heads_first(k))
                    values[layer].scatter_(2, index, heads_first(v))
                else:
                    keys[layer] = keys[layer].scatter(2, index, heads_first(k))
                    values[layer] = values[layer].scatter(2, index, heads_first(v))

        def write(layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            if k.dtype != dtype:
                k, v = k.to(dtype), v.to(dtype)
            store(layer, k, v)
            if kv_length is None:
                return keys[layer], values[layer]
            return keys[layer].narrow(2, 0, kv_length), values[layer].narrow(2, 0, kv_length)

        return write


class CallPlan(NamedTuple):
    """What every layer of one forward call shares, prepared once by `MistralLM.forward`."""

    cos: Tensor  # [N, 1, D] RoPE rows of this call's tokens
    signed_sin: Tensor  # [N, 1, D] sin with rotate_half's sign folded in (see apply_rope)
    write: CacheWrite  # stores a layer's k, v; returns the keys and values it attends
    attend: PreparedAttention  # (q [N, H, D], k, v [B, Hkv, Tk, D]) -> [N, H * D]
    fused: bool  # run the weights fuse() prepared


class LMOutput(NamedTuple):
    logits: Tensor | None  # [B, T', V] at the selected positions, float32
    hidden: Tensor | None  # [B, T, C] after the final norm, when asked for
    # ChatPose: the pose head's outputs [B, T', P] (float32) at the same positions as the logits; None without
    # a head (UniPose) or without logits.
    pose: Tensor | None = None


class PoseHead(nn.Sequential):
    """ChatPose's `text_hidden_fcs[0]`: Linear(C, C) - ReLU - Linear(C, P) on the final-norm hidden state (its
    trailing Dropout(0.0) is the identity and holds no weights). P = 144: 24 joints x 6D in HMR2.0's layout
    (`models.unipose.chatpose_rotmat` turns them into rotation matrices)."""

    def __init__(self, hidden_size: int, outputs: int) -> None:
        super().__init__(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, outputs))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        # Set by fuse() when the weight is folded into the next matmul's fused copy: (size, eps) as 0-dim float32
        # tensors (aten wraps a Python scalar operand into a new tensor on every call).
        self.folded_constants: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor, fused: bool = False) -> Tensor:
        if fused and self.folded_constants is not None:
            # The float32 arithmetic below without its casts (sum / size + eps is the mean aten computes) and
            # without the weight, which the next matmul applies.
            size, eps = self.folded_constants
            return x * torch.addcdiv(eps, (x * x).sum(-1, keepdim=True), size).rsqrt_()
        # In float32 like HF, then back to the input dtype before the scale (the order matters in half precision).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin [B, T, D] for per-row positions [B, T], HF layout (the two halves repeat the same frequencies)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [D/2]
    freqs = positions.float().unsqueeze(-1) * inv_freq  # [B, T, D/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def swap_halves(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((second, first), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """HF's x * cos + rotate_half(x) * sin, with rotate_half(x) * sin = swap_halves(x) * signed_sin, where
    signed_sin = [-sin, sin] per half. x [N, heads, D]; cos, signed_sin [N, 1, D]."""
    return x * cos + swap_halves(x) * signed_sin


class Attention(nn.Module):
    def __init__(self, config: LLMConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        # Set by fuse(): [C, (2 (H + Hkv) + Hkv) D] with columns q, k, swapped q, swapped k, v; o [H D, C].
        self.fused_qkv: Tensor | None = None
        self.fused_o: Tensor | None = None

    def forward(self, x: Tensor, h: Tensor, plan: CallPlan) -> Tensor:
        """x [N, C] the residual stream, h [N, C] its normed copy -> x + attention(h)."""
        n, heads, kv_heads, dim = h.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        if plan.fused:
            qk_heads = heads + kv_heads
            qkv = torch.mm(h, self.fused_qkv).view(n, 2 * qk_heads + kv_heads, dim)
            # RoPE of q and k in one pass: x * cos + swapped x * signed_sin, swapped x from the swapped columns.
            qk = qkv[:, :qk_heads] * plan.cos + qkv[:, qk_heads : 2 * qk_heads] * plan.signed_sin
            q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, 2 * qk_heads :]
        else:
            q = apply_rope(self.q_proj(h).view(n, heads, dim), plan.cos, plan.signed_sin)
            k = apply_rope(self.k_proj(h).view(n, kv_heads, dim), plan.cos, plan.signed_sin)
            v = self.v_proj(h).view(n, kv_heads, dim)
        keys, values = plan.write(self.layer_index, k, v)  # [B, Hkv, Tk, D]
        out = plan.attend(q, keys, values)  # [N, H * D]
        return torch.addmm(x, out, self.fused_o) if plan.fused else x + self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        # Set by fuse(): gate and up packed [C, 2 I]; down [I, C].
        self.fused_gate_up: Tensor | None = None
        self.fused_down: Tensor | None = None

    def forward(self, x: Tensor, h: Tensor, fused: bool = False) -> Tensor:
        """x [N, C] the residual stream, h [N, C] its normed copy -> x + mlp(h)."""
        if fused:
            gate_up = torch.mm(h, self.fused_gate_up)
            size = gate_up.shape[1] // 2
            return torch.addmm(x, F.silu(gate_up[:, :size]).mul_(gate_up[:, size:]), self.fused_down)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class DecoderLayer(nn.Module):
    def __init__(self, config: LLMConfig, layer_index: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_index)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # A plain tuple for the per-token path (see MistralLM.__init__).
        self._blocks = (self.input_layernorm, self.self_attn, self.post_attention_layernorm, self.mlp)

    def forward(self, x: Tensor, plan: CallPlan) -> Tensor:
        input_norm, attention, post_norm, mlp = self._blocks
        x = attention.forward(x, input_norm.forward(x, plan.fused), plan)
        return mlp.forward(x, post_norm.forward(x, plan.fused), plan.fused)


class MistralBackbone(nn.Module):
    """The `model.` part of the HF state dict: embeddings, decoder layers, final norm."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MistralLM(nn.Module):
    """Mistral decoder + LM head, keyed like `transformers.MistralForCausalLM`."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MistralBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.pose_head = PoseHead(config.hidden_size, config.pose_head_outputs) if config.pose_head_outputs else None
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # The per-token path reads the decoder's blocks from plain tuples (here and in DecoderLayer):
        # nn.Module.__getattr__ costs ~0.7 us per submodule lookup, ~25 lookups per token.
        self._blocks = (self.model.embed_tokens, tuple(self.model.layers), self.model.norm)
        self._rope_table: Tensor | None = None  # [positions, 2 D]: cos, signed sin (see rope_table)
        self.fused_lm_head: Tensor | None = None  # [C, V], set by fuse()
        # fuse()'s state: None (unfused), else whether it packed and the parameters it packed from.
        self._fusion: tuple[bool, tuple] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module._drop_fused_copies())

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def embed(self, input_ids: Tensor) -> Tensor:
        """ids [B, T] -> embeddings [B, T, C]."""
        return self.model.embed_tokens(input_ids)

    def embed_pose_queries(self, num_queries: int = NUM_POSE_QUERIES) -> Tensor:
        """The learned pose-generation queries: the LAST `num_queries` embedding rows -> [num_queries, C]."""
        return self.model.embed_tokens.weight[-num_queries:]

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """A fresh cache; also the once-per-generation point where fused copies catch up with the parameters."""
        self.refresh_fused()
        self.rope_table(max_length)
        return KVCache(self.config, batch_size, max_length, dtype=dtype or self.dtype, device=self.device)

    def rope_table(self, num_positions: int) -> Tensor:
        """[P, 2 D] with P >= num_positions: row p holds cos and signed sin of position p (see apply_rope), in the
        model's dtype and on its device. Computed on first use, again for more positions; dropped when the model
        is moved, cast or loaded."""
        if not isinstance(num_positions, int):  # symbolic (export traces a dynamic cache length): the context
            num_positions = 0
        table = self._rope_table
        if table is None or table.shape[0] < num_positions:
            config, device = self.config, self.device
            positions = torch.arange(max(num_positions, config.max_position_embeddings), device=device)
            cos, sin = rope_cos_sin(positions.unsqueeze(0), config.head_dim, config.rope_theta, self.dtype)
            half = config.head_dim // 2
            table = torch.cat((cos[0], -sin[0, :, :half], sin[0, :, half:]), dim=-1)
            self._rope_table = table
        return table

    # ------------------------------------------------------------------------------------------------ fuse
    def fuse(self, pack: bool | None = None) -> MistralLM:
        """Rewrite the model for inference (module docstring); returns self.

        pack: copy the linear weights into packed [in, out] matrices; None: on the CPU when they take at most
        PACK_LIMIT_BYTES. Calls with gradients enabled and traced calls (torch.compile, export) keep using the
        parameters. The copies are dropped when weights are loaded or the model is moved or cast, and rebuilt at
        the next `new_cache` (once per generation), which also catches parameters edited in place.
        """
        if pack is None:
            linear_bytes = sum(m.weight.numel() * m.weight.element_size() for m in self.modules()
                               if isinstance(m, nn.Linear))
            pack = self.device.type == "cpu" and linear_bytes <= PACK_LIMIT_BYTES
        self._drop_fused_copies()
        if pack:
            with torch.no_grad():
                self._pack()
        self._fusion = (pack, self._parameter_fingerprint())
        return self

    def unfuse(self) -> MistralLM:
        """Back to the plain parameters only (the reference); returns self."""
        self._drop_fused_copies()
        self._fusion = None
        return self

    @property
    def is_fused(self) -> bool:
        """Whether calls without gradients run fused (packed) weights."""
        return self.fused_lm_head is not None

    def refresh_fused(self) -> None:
        """Rebuild the fused copies when the parameters changed since fuse() (no-op for an unfused model)."""
        if self._fusion is not None:
            packed, fingerprint = self._fusion
            if packed and (not self.is_fused or fingerprint != self._parameter_fingerprint()):
                self.fuse(pack=True)

    def _pack(self) -> None:
        fold = self.dtype == torch.float32  # half precision keeps its cast order in RMSNorm: no folding

        def packed(*weights: Tensor, norm: RMSNorm | None = None) -> Tensor:
            matrix = torch.cat([w.detach() for w in weights], dim=0).t().contiguous()  # [in, sum(out)]
            if norm is not None and fold:
                matrix.mul_(norm.weight.detach().unsqueeze(1))  # diag(w) W: the norm's weight, applied here
                norm.folded_constants = (torch.tensor(float(norm.weight.shape[0]), device=self.device),
                                         torch.tensor(norm.eps, device=self.device))
            return matrix

        half = self.config.head_dim // 2

        def swapped(weight: Tensor) -> Tensor:  # [heads * D, C]: rows (h, d) -> (h, (d + D/2) mod D)
            per_head = weight.view(-1, self.config.head_dim, weight.shape[1])
            return torch.cat((per_head[:, half:], per_head[:, :half]), dim=1).view_as(weight)

        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k = attn.q_proj.weight, attn.k_proj.weight
            attn.fused_qkv = packed(q, k, swapped(q), swapped(k), attn.v_proj.weight, norm=layer.input_layernorm)
            attn.fused_o = packed(attn.o_proj.weight)
            mlp.fused_gate_up = packed(mlp.gate_proj.weight, mlp.up_proj.weight, norm=layer.post_attention_layernorm)
            mlp.fused_down = packed(mlp.down_proj.weight)
        # The pose head reads the final-norm hidden state itself, so with a head the norm keeps its weight.
        self.fused_lm_head = packed(self.lm_head.weight, norm=None if self.pose_head is not None else self.model.norm)

    def _drop_fused_copies(self) -> None:
        self._rope_table = None
        for module in self.modules():
            for name in ("fused_qkv", "fused_o", "fused_gate_up", "fused_down", "fused_lm_head"):
                if getattr(module, name, None) is not None:
                    setattr(module, name, None)
            if isinstance(module, RMSNorm):
                module.folded_constants = None

    def _parameter_fingerprint(self) -> tuple:
        def version(tensor: Tensor) -> int:  # bumped by copy_, load_state_dict ...; inference tensors have none
            try:
                return tensor._version
            except RuntimeError:
                return -1

        return tuple((p.data_ptr(), version(p), p.dtype, p.device) for p in self.parameters())

    def _apply(self, fn: Any, recurse: bool = True) -> MistralLM:
        self._drop_fused_copies()  # .to() / .half() / .cuda(): the copies and the RoPE table would be stale
        return super()._apply(fn, recurse)

    # --------------------------------------------------------------------------------------------- forward
    def forward(
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
        """Run the decoder over T new tokens of every row.

        input_ids [B, T] or input_embeds [B, T, C] (exactly one).
        positions [B, T]: RoPE positions, below max(max_position_embeddings, keys attended); default 0..T-1
            shifted by the query offset.
        mask: the mixed mask in cache-slot coordinates; default purely causal from slot 0.
            `mask.query_offset` [B] is also the cache WRITE offset: token t of row b is stored at slot
            query_offset[b] + t. Without a cache, keys are this call's tokens and query_offset must be 0.
        kv_length: attend only the first kv_length cache slots (e.g. the prompt length at prefill); default all.
        logits_positions: which of the T positions get logits (slice(-1, None) for the next token,
            slice(1, 81) for the pose queries of a pose step); None computes no logits.
        return_hidden: also return the final-norm hidden states [B, T, C] of all T positions.
        """
        if (input_ids is None) == (input_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] and input_embeds [B, T, C]")
        embed_tokens, layers, final_norm = self._blocks
        embedding = embed_tokens.weight
        device, dtype = embedding.device, embedding.dtype
        batch, num_tokens = (input_ids if input_embeds is None else input_embeds).shape[:2]
        hidden_size = embedding.shape[1]
        if mask is None:
            mask = MixedMask.causal(batch, device=device)
        elif mask.query_offset.device != device:
            mask = mask.to(device)
        host = mask_on_host(mask)
        if input_embeds is None:
            x = lookup_rows(embedding, input_ids, host is not None)  # [N, C]
        else:
            x = input_embeds.reshape(batch * num_tokens, hidden_size)
            if x.dtype != dtype:
                x = x.to(dtype)
        plan = self._plan(mask, host, positions, batch, num_tokens, cache, kv_length, device, dtype)

        # The decoder's own blocks (layers, attention, MLP, norms) are called through .forward: nn.Module.__call__
        # (hook dispatch) costs about a microsecond, ~25 calls per token, a tenth of a tiny-model decode step on
        # the CPU. Hooks on MistralLM itself and on the nn.Linear leaves still fire.
        for layer in layers:
            x = layer.forward(x, plan)

        hidden = None
        if return_hidden:
            hidden = final_norm.forward(x).view(batch, num_tokens, hidden_size)
        if logits_positions is None:
            return LMOutput(None, hidden)
        if hidden is not None:
            normed = hidden[:, logits_positions]
            logits = self.lm_head(normed)
        else:
            # The kept rows' count is read off the sliced view: torch.compile (Dynamo in torch 2.11) cannot trace
            # slice.indices, and the CUDA path compiles this forward.
            rows = x.view(batch, num_tokens, hidden_size)[:, logits_positions]
            kept = rows.shape[1]
            if kept != num_tokens:  # the final norm and the LM head only where logits are asked for
                x = rows.reshape(batch * kept, hidden_size)
            x = final_norm.forward(x, plan.fused)
            normed = x.view(batch, kept, hidden_size)
            logits = (torch.mm(x, self.fused_lm_head) if plan.fused else self.lm_head(x)).view(batch, kept, -1)
        pose = None if self.pose_head is None else self.pose_head(normed).float()
        return LMOutput(logits if logits.dtype == torch.float32 else logits.float(), hidden, pose)

    def _plan(self, mask: MixedMask, host: HostMask | None, positions: Tensor | None, batch: int, num_tokens: int,
              cache: KVCache | None, kv_length: int | None, device: torch.device, dtype: torch.dtype) -> CallPlan:
        config = self.config
        num_keys = num_tokens if cache is None else cache.max_length if kv_length is None else kv_length
        if positions is None:
            positions = mask.query_offset.to(torch.long).unsqueeze(1) + torch.arange(num_tokens, device=device)
        elif positions.device != device:
            positions = positions.to(device)
        rope = lookup_rows(self.rope_table(num_keys), positions, host is not None)  # [N, 2 D]
        cos, signed_sin = rope.view(batch * num_tokens, 2, 1, config.head_dim).unbind(1)
        if cache is None:  # the keys are this call's tokens
            def write(layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
                return (k.view(batch, num_tokens, -1, config.head_dim).transpose(1, 2),
                        v.view(batch, num_tokens, -1, config.head_dim).transpose(1, 2))
        else:  # kv_length: later slots hold nothing a query here may see
            write = cache.writer(mask.query_offset, num_tokens, kv_length, None if host is None else host[3])
        attend = prepare_attention(mask, num_tokens, num_keys, config.head_dim**-0.5, dtype, host)
        # The fused copies are detached, and traced graphs (torch.compile, export) take the parameters.
        fused = self.fused_lm_head is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        return CallPlan(cos, signed_sin, write, attend, fused)
