"""The torch backend: the single model definition, eager, on CPU or CUDA (the reference every backend matches)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from unipose_sdk.errors import UnsupportedTaskError
from unipose_sdk.generation import LanguageModel
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.runtime.base import Runtime
from unipose_sdk.runtime.fast_vision import FastVisionTowers
from unipose_sdk.runtime.torch_lm import FastLM

log = logging.getLogger("unipose_sdk")


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(self, model: nn.Module, config: UniPoseConfig, device: torch.device, dtype: torch.dtype,
                 compile: bool = False) -> None:
        """`model` has `.llm` (MistralLM), `.vision` (VisionEncoder) and `.pose_tokenizer` (PoseTokenizer).

        The decoder is served through `FastLM` (runtime/torch_lm.py): the fused model with a static KV cache
        reused across calls, and with `compile` the decode / pose / bucketed prefill calls compiled (CUDA graphs
        on CUDA).

        The LLM and vision towers run in `dtype`; the pose tokenizer stays float32: it is small, and its
        nearest-code search is where low precision would change tokens.

        `encode_images` runs the towers through `FastVisionTowers` (runtime/fast_vision.py: the same weights, fewer
        and larger ops; equal to the module within float rounding).

        A ChatPose model (`config.family == "chatpose"`) has no pose tokenizer (encode_poses / decode_poses raise
        UnsupportedTaskError), runs its CLIP-only vision module as it is, and is never compiled: its poses are read
        from the pose head's outputs (`LMOutput.pose`), which FastLM's compiled calls do not return.
        """
        self.config = config
        self.device = device
        self.dtype = dtype
        model.eval().requires_grad_(False)
        self._model = model
        model.llm.to(device=device, dtype=dtype)
        model.vision.to(device=device, dtype=dtype)
        self.family = config.family
        if self.family == "chatpose":
            if compile:
                log.warning("ChatPose models run eagerly: compile=True is ignored (the pose head's outputs come "
                            "only from the model's own forward)")
            self._llm = FastLM(model.llm, compile=False)
            self._towers = model.vision
            return
        model.pose_tokenizer.to(device=device, dtype=torch.float32)
        if model.text_encoder is not None:
            model.text_encoder.to(device=device, dtype=dtype)
        self._llm = FastLM(model.llm, compile=compile)
        self._towers = FastVisionTowers(model.vision)

    @property
    def llm(self) -> LanguageModel:
        return self._llm

    @torch.inference_mode()
    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self._towers(clip_pixels.to(self.device, self.dtype), pose_pixels.to(self.device, self.dtype))

    @torch.inference_mode()
    def encode_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self._model.text_encoder is None:
            return super().encode_texts(input_ids, attention_mask)
        return self._model.encode_texts(input_ids.to(self.device), attention_mask.to(self.device))

    @torch.inference_mode()
    def encode_sentences(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        encoder = self._model.text_encoder
        if encoder is None:
            return super().encode_sentences(input_ids, attention_mask)
        sentences = encoder.sentence_embedding(input_ids.to(self.device), attention_mask.to(self.device))
        return encoder.project(sentences), sentences

    @property
    def has_pose_matcher(self) -> bool:
        return self._model.pose_matcher is not None

    @torch.inference_mode()
    def match_poses(self, joints_m: Tensor, sentences: Tensor) -> Tensor:
        if self._model.pose_matcher is None:
            return super().match_poses(joints_m, sentences)
        return self._model.pose_matcher(joints_m.to(self.device), sentences.to(self.device))

    @torch.inference_mode()
    def encode_poses(self, pose_6d: Tensor) -> Tensor:
        return self._pose_tokenizer("encode poses").encode(pose_6d.to(self.device, torch.float32))

    @torch.inference_mode()
    def decode_poses(self, codes: Tensor) -> Tensor:
        return self._pose_tokenizer("decode pose codes").decode_6d(codes.to(self.device)).float()

    def pose_codebook(self) -> Tensor | None:
        if self._model.pose_tokenizer is None:
            return None
        return self._model.pose_tokenizer.quantizer.codebook.detach().float()  # on the model's device

    def _pose_tokenizer(self, what: str) -> nn.Module:
        tokenizer = self._model.pose_tokenizer
        if tokenizer is None:
            raise UnsupportedTaskError.make(f"a request to {what} for a {self.config.family} model",
                                            "a model with a pose tokenizer", "Use a UniPose model (family 'unipose').")
        return tokenizer

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
        self._llm = None  # type: ignore[assignment]
        self._towers = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
