"""The frozen sentence encoder of unipose-tiny v2: a BERT encoder, mean pooling, unit length, and a projector to
a few LLM input rows.

A 1M-parameter LLM trained on the data engine's captions learns their templates, not English. A pretrained
sentence encoder maps "pointing at the ceiling" and "the right arm is raised above the head" to nearby vectors,
so the LLM reads, next to its own tokens of the text, `num_rows` rows that carry what the text means.

    .bert       BertEncoder   keys text_encoder.bert.*         (Hugging Face BertModel names, pooler dropped)
    .projector  Sequential    keys text_encoder.projector.{0,2}.*   384 -> 512 -> num_rows x LLM width

The encoder is frozen (trained weights come from all-MiniLM-L6-v2); only the projector is trained with the LLM.
Its sentence embedding is what sentence-transformers computes for that model: token states of the last layer
averaged over the real tokens, then divided by their L2 norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.models.config import TextEncoderConfig


class BertEmbeddings(nn.Module):
    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # One segment: every token has type 0.
        embeds = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                  + self.token_type_embeddings.weight[0])
        return self.LayerNorm(embeds)


class BertSelfAttention(nn.Module):
    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor, key_bias: Tensor) -> Tensor:
        batch, length, width = hidden.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(hidden)), heads(self.key(hidden)),
                                             heads(self.value(hidden)), attn_mask=key_bias)
        return out.transpose(1, 2).reshape(batch, length, width)


class BertLayer(nn.Module):
    """Post-LayerNorm transformer layer with BERT's module names (attention.self / attention.output / ...)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = BertSelfAttention(config)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention.output.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor, key_bias: Tensor) -> Tensor:
        attended = self.attention.output.dense(self.attention.self(hidden, key_bias))
        hidden = self.attention.output.LayerNorm(attended + hidden)
        expanded = F.gelu(self.intermediate.dense(hidden))  # BERT's exact (erf) GELU
        return self.output.LayerNorm(self.output.dense(expanded) + hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask [B, T] (mask: 1 on real tokens) -> last-layer token states [B, T, H]."""
        hidden = self.embeddings(input_ids)
        # Padding keys get a large negative bias (not -inf: a row of only padding must not produce NaN).
        key_bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.encoder.layer:
            hidden = layer(hidden, key_bias)
        return hidden


class SentenceEncoder(nn.Module):
    """Text ids -> unit-length sentence embedding [B, H] -> `num_rows` LLM input rows [B, num_rows, D]."""

    def __init__(self, config: TextEncoderConfig, llm_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.llm_hidden_size = llm_hidden_size
        self.bert = BertEncoder(config)
        self.projector = nn.Sequential(
            nn.Linear(config.hidden_size, config.projector_hidden_size),
            nn.GELU(),
            nn.Linear(config.projector_hidden_size, config.num_rows * llm_hidden_size),
        )

    def sentence_embedding(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[B, T] ids and mask -> [B, H] float32: masked mean of the last layer, L2-normalised."""
        states = self.bert(input_ids, attention_mask).float()
        weights = attention_mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def project(self, sentence: Tensor) -> Tensor:
        """[B, H] sentence embeddings -> [B, num_rows, D] LLM input rows."""
        rows = self.projector(sentence.to(self.projector[0].weight.dtype))
        return rows.view(sentence.shape[0], self.config.num_rows, self.llm_hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.project(self.sentence_embedding(input_ids, attention_mask))


def init_projector(encoder: SentenceEncoder, std: float = 0.02) -> None:
    """Small random projector output (the LLM's own embedding scale), so a model that has not learned to read the
    rows yet is barely disturbed by them."""
    first, last = encoder.projector[0], encoder.projector[2]
    nn.init.normal_(first.weight, std=1.0 / math.sqrt(first.in_features))
    nn.init.zeros_(first.bias)
    nn.init.normal_(last.weight, std=std / math.sqrt(last.in_features))
    nn.init.zeros_(last.bias)
