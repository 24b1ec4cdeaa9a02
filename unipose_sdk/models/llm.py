"""The UniPose language model: a Mistral decoder in plain PyTorch, with a static KV cache.

Module attribute names are exactly the Hugging Face `MistralForCausalLM` state-dict keys
(`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`,
`lm_head.weight`), and RoPE uses the HF `rotate_half` convention, so HF weights load unchanged.

What differs from a plain causal LM, and why:
- Attention goes through `mixed_attention` with a `MixedMask`: text is causal, the 80 generated pose positions
  form one bidirectional block. Fused kernels plug in behind that one function.
- Every row carries its own RoPE positions and its own cache write offset (= `mask.query_offset`), so a batch
  can be left-padded and rows can be at different points of generation (one row runs its pose step while the
  others wait).
- The forward takes input embeddings as well as ids, so image embeddings and the learned pose-query embeddings
  can be spliced in by the caller; it computes the LM head only at the positions asked for.

Shapes: B batch, T tokens of this call, Tk keys (cache slots), H query heads, Hkv key/value heads, D head dim,
C hidden size, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.models.attention import mixed_attention
from unipose_sdk.models.attention_mask import MixedMask
from unipose_sdk.models.config import LLMConfig

NUM_POSE_QUERIES = 80  # the learned pose queries are the last 80 rows of the embedding table


class KVCache:
    """Static key/value cache, allocated once for (batch, max_length): per layer k, v [B, Hkv, Tmax, D].

    Slots are written per row at `write_offset[b] + t` (scatter along the slot axis), so rows may sit at
    different offsets. Nothing is ever freed or shifted; generation only moves the per-row offsets.
    """

    def __init__(
        self,
        config: LLMConfig,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.batch_size = batch_size
        self.max_length = max_length

    def write(self, layer: int, k: Tensor, v: Tensor, write_offset: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, Hkv, T, D] at slots write_offset[b] + 0..T-1; return this layer's full cache."""
        batch, heads, num_tokens, head_dim = k.shape
        slots = write_offset.to(torch.long).view(batch, 1, 1, 1) + torch.arange(num_tokens, device=k.device).view(
            1, 1, num_tokens, 1
        )
        index = slots.expand(batch, heads, num_tokens, head_dim)
        self.k[layer].scatter_(2, index, k.to(self.k[layer].dtype))
        self.v[layer].scatter_(2, index, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]


class LMOutput(NamedTuple):
    logits: Tensor | None  # [B, T', V] at the selected positions, float32
    hidden: Tensor | None  # [B, T, C] after the final norm, when asked for


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # In float32 like HF, then back to the input dtype before the scale (the order matters in half precision).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin [B, T, D] for per-row positions [B, T], HF layout (the two halves repeat the same frequencies).

    Computed on the fly (no buffer): it is cheap, and a model built on the meta device then loaded needs no
    buffer re-initialisation.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [D/2]
    freqs = positions.float().unsqueeze(-1) * inv_freq  # [B, T, D/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, D]; cos, sin [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: MixedMask,
        cache: KVCache | None,
        layer_index: int,
        kv_length: int | None,
    ) -> Tensor:
        batch, num_tokens, _ = x.shape
        q = self.q_proj(x).view(batch, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(batch, num_tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(batch, num_tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # The write offset is the mask's query offset: query t of row b sits at cache slot offset[b] + t.
            k, v = cache.write(layer_index, k, v, mask.query_offset)  # [B, Hkv, Tmax, D]
            if kv_length is not None:
                # Slots past kv_length hold nothing any query here may see (prefill of a fresh cache).
                k, v = k[:, :, :kv_length], v[:, :, :kv_length]
        out = mixed_attention(q, k, v, mask)  # [B, H, T, D]
        return self.o_proj(out.transpose(1, 2).reshape(batch, num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LLMConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: MixedMask, cache: KVCache | None, kv_length: int | None
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, self.layer_index, kv_length)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

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
        return KVCache(self.config, batch_size, max_length, dtype=dtype or self.dtype, device=self.device)

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
        positions [B, T]: RoPE positions; default 0..T-1 shifted by the query offset.
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
        x = self.embed(input_ids) if input_embeds is None else input_embeds.to(self.dtype)  # [B, T, C]
        batch, num_tokens, _ = x.shape
        if mask is None:
            mask = MixedMask.causal(batch, device=x.device)
        mask = mask.to(x.device)
        if positions is None:
            positions = mask.query_offset.to(torch.long).unsqueeze(1) + torch.arange(num_tokens, device=x.device)
        cos, sin = rope_cos_sin(positions.to(x.device), self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache, kv_length)
        hidden = self.model.norm(x)
        logits = None
        if logits_positions is not None:
            logits = self.lm_head(hidden[:, logits_positions]).float()
        return LMOutput(logits, hidden if return_hidden else None)
