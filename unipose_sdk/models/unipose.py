"""UniPoseModel: the three parts composed, plus splicing projected image embeddings into the token embeddings.

    .llm             MistralLM        keys llm.model.* / llm.lm_head.*       (HF MistralForCausalLM under `llm.`)
    .vision          VisionEncoder    keys vision.clip.vision_model.*, vision.pose_vit.*, vision.projector.{0,2}.*
    .pose_tokenizer  PoseTokenizer    keys pose_tokenizer.encoder.*, .decoder.*, .quantizer.codebook

These prefixed keys are the SDK's own weights format (`model.safetensors`, see checkpoint/sdk_format.py); every
foreign layout is mapped onto them in `unipose_sdk.checkpoint` only.

Big models are built on the meta device (no memory, no random init) and then receive their tensors with
`load_state_dict(..., assign=True)`, so memory-mapped safetensors are used in place instead of being copied
into freshly initialised parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from unipose_sdk.checkpoint.common import check_state_dict
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.models.llm import MistralLM
from unipose_sdk.models.pose_tokenizer import PoseTokenizer
from unipose_sdk.models.vision import VisionEncoder
from unipose_sdk.text.prompts import PromptInputs

# Initialisers a meta-device build skips: they would do nothing there, and the first call of one on meta makes torch
# import its compiler stack (seconds). Hugging Face's `no_init_weights` patches the same functions.
_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def _skip_init(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


class UniPoseModel(nn.Module):
    def __init__(self, config: UniPoseConfig) -> None:
        super().__init__()
        self.config = config
        self.llm = MistralLM(config.llm)
        self.vision = VisionEncoder.from_config(config)
        self.pose_tokenizer = PoseTokenizer(config.pose_tokenizer)

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: UniPoseConfig, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> UniPoseModel:
        """Build the model; `device="meta"` allocates nothing (for loading with assign=True, or for counting)."""
        target = torch.device(device or "cpu")
        with torch.device(target), _skip_init(target.type == "meta"):
            model = cls(config)
        if dtype is not None:
            model.to(dtype=dtype)
        return model

    @classmethod
    def from_state_dict(cls, config: UniPoseConfig, state_dict: Mapping[str, Tensor], source: str,
                        device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                        pose_tokenizer_dtype: torch.dtype = torch.float32) -> UniPoseModel:
        """Meta-device build + strict assign-load. Floating tensors are cast to `dtype` (if given) except the pose
        tokenizer's, which stay `pose_tokenizer_dtype` (small, and its nearest-code search is precision sensitive).
        Tensors already in the right dtype and device are used as they are (no copy of memory-mapped files)."""
        model = cls.from_config(config, device="meta")
        check_state_dict(model, state_dict, source)  # before any conversion: the error lists the file's keys

        def convert(key: str, tensor: Tensor) -> Tensor:
            target = pose_tokenizer_dtype if key.startswith("pose_tokenizer.") else dtype
            if tensor.is_floating_point() and target is not None and tensor.dtype != target:
                tensor = tensor.to(target)
            return tensor.to(device)

        converted = {k: convert(k, v) for k, v in state_dict.items()}
        with torch.no_grad():
            model.load_state_dict(converted, strict=True, assign=True)
        model._materialize_buffers(torch.device(device))
        return model.eval()

    def _materialize_buffers(self, device: torch.device) -> None:
        """Non-persistent buffers are not in any state dict, so after a meta build they are still on meta.
        The only ones are the pose quantizer's EMA statistics (training state): zero them, mark it initialised."""
        for module in self.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_meta:
                    module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
        self.pose_tokenizer.quantizer.initialized.fill_(True)

    # ---- inputs ---------------------------------------------------------------------------------------
    @property
    def image_tokens(self) -> int:
        return self.config.image_tokens

    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        """clip_pixels [B, 3, S, S], pose_pixels [B, 3, H, W] (two views of the same B images) -> [B, N, D]."""
        return self.vision(clip_pixels, pose_pixels)

    def build_inputs_embeds(self, prompt_inputs: PromptInputs, image_embeds: Tensor | None = None) -> Tensor:
        """Token embeddings [B, T, D] with image k's N projected embeddings in the k-th image's slots.

        `image_embeds` [num_images, N, D], numbered row by row in prompt order (as PromptInputs numbers them).
        Left-padding positions get zero vectors, as the official batching does (they are masked anyway).
        """
        llm_param = self.llm.lm_head.weight
        input_ids = prompt_inputs.input_ids.to(llm_param.device)
        embeds = self.llm.embed(input_ids)  # [B, T, D]
        wanted = prompt_inputs.num_images
        if wanted == 0:
            if image_embeds is not None and image_embeds.numel() > 0:
                raise InvalidInputError.make(
                    f"{image_embeds.shape[0]} image embeddings for prompts without <image>",
                    "no images", "Add <image> to the prompt or drop the images.")
        else:
            expected = (wanted, prompt_inputs.image_tokens, embeds.shape[-1])
            if image_embeds is None or tuple(image_embeds.shape) != expected:
                got = None if image_embeds is None else tuple(image_embeds.shape)
                raise InvalidInputError.make(
                    f"image embeddings of shape {got}", f"{expected} (images x tokens per image x LLM width)",
                    "Encode exactly one image per <image> placeholder with encode_images, in prompt order.")
            mask = prompt_inputs.image_mask.to(embeds.device).unsqueeze(-1)  # [B, T, 1]
            embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
        padding = ~prompt_inputs.attention_mask.to(embeds.device).unsqueeze(-1)
        return embeds.masked_fill(padding, 0.0)

    # ---- sizes ----------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameter elements per part (works on the meta device)."""
        def count(module: nn.Module) -> int:
            return sum(math.prod(p.shape) for p in module.parameters())

        return {
            "llm": count(self.llm),
            "clip": count(self.vision.clip),
            "pose_vit": count(self.vision.pose_vit),
            "projector": count(self.vision.projector),
            "pose_tokenizer": count(self.pose_tokenizer) + math.prod(self.pose_tokenizer.quantizer.codebook.shape),
        }

    @classmethod
    def from_pretrained(cls, directory: str, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> UniPoseModel:
        """Load an SDK-format directory (see checkpoint/sdk_format.py); the tokenizer is in `load_model`."""
        from unipose_sdk.checkpoint.sdk_format import load_model

        return load_model(directory, device=device, dtype=dtype).model
