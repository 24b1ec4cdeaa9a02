"""The torch backend: the single model definition, eager, on CPU or CUDA (the reference every backend matches)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unipose_sdk.generation import LanguageModel
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.runtime.base import Runtime
from unipose_sdk.runtime.fast_vision import FastVisionTowers
from unipose_sdk.runtime.torch_lm import FastLM


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
        """
        self.config = config
        self.device = device
        self.dtype = dtype
        model.eval().requires_grad_(False)
        self._model = model
        model.llm.to(device=device, dtype=dtype)
        model.vision.to(device=device, dtype=dtype)
        model.pose_tokenizer.to(device=device, dtype=torch.float32)
        self._llm = FastLM(model.llm, compile=compile)
        self._towers = FastVisionTowers(model.vision)

    @property
    def llm(self) -> LanguageModel:
        return self._llm

    @torch.inference_mode()
    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor:
        return self._towers(clip_pixels.to(self.device, self.dtype), pose_pixels.to(self.device, self.dtype))

    @torch.inference_mode()
    def encode_poses(self, pose_6d: Tensor) -> Tensor:
        return self._model.pose_tokenizer.encode(pose_6d.to(self.device, torch.float32))

    @torch.inference_mode()
    def decode_poses(self, codes: Tensor) -> Tensor:
        return self._model.pose_tokenizer.decode_6d(codes.to(self.device)).float()

    def pose_codebook(self) -> Tensor | None:
        return self._model.pose_tokenizer.quantizer.codebook.detach().float()  # on the model's device

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
        self._llm = None  # type: ignore[assignment]
        self._towers = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
