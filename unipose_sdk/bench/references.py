"""The two PyTorch references the benchmark measures the SDK against, as sessions of their own.

Both run the public task classes through the product's pipeline and generation loop (`generation.generate`,
step by step: `one_pass=False`, trailing text decoded), on a copy of the weights that the SDK's fast path never
touches (the fast session loads its own), with the reference vision route: `preprocess_batch` (the views as the
official pipeline builds them) and the `VisionEncoder` module. Only the decoder differs:
- reference 1 (`HFMistral`): transformers' `MistralForCausalLM`, eager attention, a `DynamicCache` and an explicit
  4-D additive float mask, logits at every position, as users of the official code run it;
- reference 2 (`EagerSDK`): this SDK's own model definition as written, not fused, dense masked SDPA.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unipose_sdk.bench.choices import RANDOM_MODELS
from unipose_sdk.generation import LanguageModel
from unipose_sdk.models.attention import use_attention_impl
from unipose_sdk.models.attention_mask import MixedMask, mask_mod
from unipose_sdk.models.llm import LMOutput, MistralLM
from unipose_sdk.preprocess import preprocess_batch
from unipose_sdk.runtime.torch import TorchRuntime
from unipose_sdk.session import UniPose

# ---------------------------------------------------------------------------------------------------------------
# Decoders


class _SlotCache:
    """transformers' DynamicCache plus the cache slot each of its keys stands for, per row ([B, K], -1: stale).

    The generation loop addresses a static cache by slot (`MixedMask.query_offset` is the write offset, and a row
    that waits rewrites its next slots later); a DynamicCache only appends. So every call appends its keys and
    records their slots, and keys a row has since rewritten are marked stale: the mask then gives each query the
    keys a static cache would hold at those slots."""

    def __init__(self, config: Any, batch: int, device: torch.device) -> None:
        from transformers import DynamicCache

        try:
            self.cache = DynamicCache(config=config)
        except TypeError:  # transformers before 4.56
            self.cache = DynamicCache()
        self.slots = torch.empty(batch, 0, dtype=torch.long, device=device)

    def append(self, query_offset: Tensor, num_new: int) -> None:
        offset = query_offset.to(torch.long).unsqueeze(1)
        self.slots = self.slots.masked_fill(self.slots >= offset, -1)  # rewritten from here on
        new = offset + torch.arange(num_new, device=offset.device)
        self.slots = torch.cat([self.slots, new], dim=1)


class HFMistral:
    """Reference 1: transformers' `MistralForCausalLM` (eager attention) holding the same weight tensors as `llm`,
    behind the `LanguageModel` interface that `generation.generate` drives."""

    def __init__(self, llm: MistralLM) -> None:
        from transformers import MistralConfig, MistralForCausalLM
        from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding

        c = llm.config
        hf_config = MistralConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rope_theta=c.rope_theta,
            rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
            tie_word_embeddings=c.tie_word_embeddings, sliding_window=None,
        )
        hf_config._attn_implementation = "eager"
        with torch.device("meta"):
            model = MistralForCausalLM(hf_config)
        # assign=True: the HF modules take the tensors themselves (no copy). The rotary buffer is not in the state
        # dict, so it is rebuilt on the real device.
        model.load_state_dict(llm.state_dict(), strict=True, assign=True)
        with torch.device(llm.device):
            model.model.rotary_emb = MistralRotaryEmbedding(config=hf_config)
        self.model = model.eval()
        # transformers 5.x names the argument `cache` (and warns on the old `past_key_values`); 4.x knows only the old
        self._cache_argument = ("cache" if "cache" in inspect.signature(MistralForCausalLM.forward).parameters
                                else "past_key_values")
        self.config = c
        self.dtype = llm.dtype
        self._device = llm.device

    @property
    def device(self) -> torch.device:
        return self._device

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.model.embed_tokens(input_ids)

    def embed_pose_queries(self, num_queries: int = 80) -> Tensor:
        return self.model.model.embed_tokens.weight[-num_queries:]  # the learned queries: the last rows

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> _SlotCache:
        return _SlotCache(self.model.config, batch_size, self.device)

    def additive_mask(self, mask: MixedMask, cache: _SlotCache, num_new: int) -> Tensor:
        """[B, 1, T, K] float: 0 where the mixed mask lets a new token see a cached key, the dtype's min elsewhere."""
        slots = cache.slots  # [B, K]
        batch = slots.shape[0]
        allowed = mask_mod(mask.to(slots.device))(
            torch.arange(batch, device=slots.device).view(-1, 1, 1), torch.zeros((), device=slots.device),
            torch.arange(num_new, device=slots.device).view(1, -1, 1), slots.clamp(min=0).unsqueeze(1))
        allowed = allowed & (slots >= 0).unsqueeze(1)  # [B, T, K]
        zero = torch.zeros((), dtype=self.dtype, device=slots.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min).unsqueeze(1)

    def __call__(self, input_ids: Tensor | None = None, *, input_embeds: Tensor | None = None,
                 positions: Tensor | None = None, mask: MixedMask | None = None, cache: _SlotCache | None = None,
                 kv_length: int | None = None, logits_positions: slice | None = slice(None)) -> LMOutput:
        x = self.embed(input_ids) if input_embeds is None else input_embeds.to(self.dtype)
        batch, num_new, _ = x.shape
        if mask is None or cache is None or positions is None:
            raise ValueError("the reference runs under generation.generate: pass positions, mask and cache")
        cache.append(mask.query_offset.to(x.device), num_new)
        out = self.model(inputs_embeds=x, attention_mask=self.additive_mask(mask, cache, num_new),
                         position_ids=positions.to(x.device), use_cache=True, **{self._cache_argument: cache.cache})
        logits = out.logits.float()  # every position, as the official code computes them
        return LMOutput(None if logits_positions is None else logits[:, logits_positions], None)


class EagerSDK:
    """Reference 2: this SDK's `MistralLM` as written (never fused), every attention call the dense masked SDPA."""

    def __init__(self, llm: MistralLM) -> None:
        self.llm = llm
        self.config = llm.config

    @property
    def device(self) -> torch.device:
        return self.llm.device

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.llm.embed(input_ids)

    def embed_pose_queries(self, num_queries: int = 80) -> Tensor:
        return self.llm.embed_pose_queries(num_queries)

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> Any:
        return self.llm.new_cache(batch_size, max_length, dtype)

    def __call__(self, input_ids: Tensor | None = None, **kwargs: Any) -> LMOutput:
        with use_attention_impl("sdpa_dense"):
            return self.llm(input_ids, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Runtime and sessions


class ReferenceRuntime(TorchRuntime):
    """The model's modules as defined: reference views, the `VisionEncoder` module, `llm` for the decoder.

    The pose tokenizer's methods are the torch runtime's own. The torch runtime's constructor is not called: it
    would fuse the model and pack the vision towers, which is what the references are measured against."""

    def __init__(self, model: nn.Module, config: Any, llm: LanguageModel, name: str) -> None:
        self._model = model
        self.config = config
        self.device = model.llm.device
        self.dtype = model.llm.dtype
        self._llm = llm
        self._towers = None
        self.name = name

    def pixel_views(self, images_hwc: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return preprocess_batch(list(images_hwc), self.config.clip, self.config.pose_vit)

    @torch.inference_mode()
    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self._model.vision(clip_pixels.to(self.device, self.dtype), pose_pixels.to(self.device, self.dtype))

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({str(self.dtype).replace('torch.', '')})"


@dataclass
class LoadedParts:
    model: nn.Module  # UniPoseModel: .llm, .vision, .pose_tokenizer
    config: Any
    tokenizer: Any
    is_random: bool
    note: str  # where the weights come from, for the report
    sentence_tokenizer: Any = None  # a model with a sentence encoder (unipose-tiny v2): its tokenizer


def load_parts(model: str, device: torch.device, dtype: torch.dtype) -> LoadedParts:
    """A fresh copy of the model's modules (never shared with a fast session, whose runtime may rewrite its own).

    model: "unipose-tiny" (the embedded model), a preset of RANDOM_MODELS (its configuration with random weights:
    latency does not depend on their values) or an SDK model directory."""
    if model in RANDOM_MODELS:
        return _random_preset(model, device, dtype)
    from unipose_sdk.formats import is_embedded
    from unipose_sdk.loading import load_torch_model

    loaded = load_torch_model(model, device, dtype)
    name = "embedded unipose-tiny" if is_embedded(model) else f"model directory {Path(model).name}"
    note = name + (" (RANDOM placeholder weights)" if loaded.is_random else "")
    loaded.model.eval().requires_grad_(False)
    loaded.model.llm.to(device=device, dtype=dtype)
    loaded.model.vision.to(device=device, dtype=dtype)
    if loaded.model.pose_tokenizer is not None:  # a ChatPose model has none
        loaded.model.pose_tokenizer.to(device=device, dtype=torch.float32)
    return LoadedParts(loaded.model, loaded.config, loaded.tokenizer, loaded.is_random, note,
                       loaded.sentence_tokenizer)


def _random_preset(name: str, device: torch.device, dtype: torch.dtype) -> LoadedParts:
    from unipose_sdk.models.config import get_preset
    from unipose_sdk.models.unipose import UniPoseModel
    from unipose_sdk.text.prompts import CHATPOSE_SYSTEM, CHATPOSE_TEMPLATES, TASK_TEMPLATES
    from unipose_sdk.text.tokenizer import build_tiny_tokenizer

    config = get_preset(name)
    torch.manual_seed(0)  # every copy gets the same weights, so the same-output check stays meaningful
    net = UniPoseModel.from_config(config, device=device, dtype=dtype)
    with torch.no_grad():
        for p in net.parameters():  # small values keep the random 7B's activations finite in bf16
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    net.eval().requires_grad_(False)
    if net.pose_tokenizer is not None:
        net.pose_tokenizer.to(dtype=torch.float32)
    corpus = [t for pair in TASK_TEMPLATES.values() for t in pair] * 4 + ["a person squatting with arms raised"] * 4
    corpus += [*CHATPOSE_TEMPLATES.values(), CHATPOSE_SYSTEM] * 4
    tokenizer = build_tiny_tokenizer(corpus, config.vocab.text_vocab_size, config.vocab)
    return LoadedParts(net, config, tokenizer, True,
                       f"{name} configuration with RANDOM weights (latency only: it does not depend on weight values); "
                       "the text tokenizer is a small BPE padded to the model's layout (prompt lengths differ slightly "
                       "from the official one)")


def reference_sessions(parts: LoadedParts) -> Iterator[tuple[str, str, UniPose]]:
    """(name, label, session) of reference 1 and reference 2, both over `parts` (the HF model takes its tensors)."""
    llm = parts.model.llm
    chatpose = parts.config.family == "chatpose"
    for name, label, decoder in (
        ("ref-hf-eager", "reference 1: transformers Mistral eager, DynamicCache, 4-D mask, step by step; reference "
                         "vision (preprocess_batch + VisionEncoder module)", None if chatpose else HFMistral(llm)),
        ("ref-sdk-eager", "reference 2: SDK model as defined (not fused), dense masked SDPA, step by step; reference "
                          "vision", EagerSDK(llm)),
    ):
        if decoder is None:  # transformers' Mistral has no ChatPose pose head, so it cannot answer pose tasks
            continue
        runtime = ReferenceRuntime(parts.model, parts.config, decoder, name)
        yield name, label, UniPose(runtime, parts.tokenizer, name, parts.is_random,
                                   sentence_tokenizer=parts.sentence_tokenizer)
