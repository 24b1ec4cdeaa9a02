"""The Runtime interface: what the task classes need from a backend, with named tensors.

A Runtime owns the model's parts on one device and exposes these:
- `pixel_views(images)`: loaded images ([H, W, 3] float in [0, 1]) -> the two views the towers read;
- `llm`: the decoder, in the form `unipose_sdk.generation` drives (`LanguageModel`: embed, embed_pose_queries,
  new_cache, and a call that runs T new tokens against the KV cache under a MixedMask);
- `encode_images(clip_pixels [B,3,S,S], pose_pixels [B,3,H,W]) -> image_embeds [B, N, C]`;
- `encode_poses(pose_6d [B,22,6]) -> codes [B,80]` and `decode_poses(codes [B,80]) -> pose_6d [B,22,6]`;
- for models with a sentence encoder, `encode_texts` / `encode_sentences` (its LLM rows, and the sentence
  embeddings they come from), and with a text-pose matcher `match_poses(joints_m, sentences) -> scores`.
The torch backend implements it over the single model definition (`runtime/torch.py`); exported backends
implement the same names over their graphs, so the task classes never know which one they run on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from unipose_sdk.generation import LanguageModel
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.preprocess.fast import fast_preprocessor


class Runtime(ABC):
    backend: str  # "torch", "onnxruntime", "tensorrt"
    config: UniPoseConfig
    device: torch.device
    dtype: torch.dtype  # the LLM / vision compute dtype (the pose tokenizer always runs in float32)

    @property
    @abstractmethod
    def llm(self) -> LanguageModel: ...

    @abstractmethod
    def encode_images(self, clip_pixels: Tensor, pose_pixels: Tensor) -> Tensor: ...

    def pixel_views(self, images_hwc: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Loaded images -> (clip_pixels [B, 3, S, S], pose_pixels [B, 3, H, W]) for `encode_images`. Every backend
        shares the matrix-product route (`unipose_sdk.preprocess.fast`); a runtime with an image pipeline of its
        own (e.g. one that resizes on its device) overrides this."""
        return fast_preprocessor(self.config.clip, self.config.pose_vit)(images_hwc)

    @abstractmethod
    def encode_poses(self, pose_6d: Tensor) -> Tensor: ...

    def encode_texts(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Sentence-encoder ids and mask [B, T] int64 -> LLM input rows [B, num_rows, C], for models with a
        `text_encoder` (unipose-tiny v2). A backend whose files carry no sentence encoder says so."""
        from unipose_sdk.errors import BackendUnavailableError

        raise BackendUnavailableError.make(
            f"a {self.backend} runtime asked to run the sentence encoder of {self.config.name!r}",
            "files that hold the sentence encoder", "Re-export the model with this SDK version.")

    def encode_sentences(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """`encode_texts`'s rows and the sentence embeddings [B, H] float32 they were projected from (the text-pose
        matcher reads these); None for the embeddings when this backend's files do not give them."""
        return self.encode_texts(input_ids, attention_mask), None

    @property
    def has_pose_matcher(self) -> bool:
        """Whether `match_poses` can run: the model has a text-pose matcher and this backend's files carry it."""
        return False

    def match_poses(self, joints_m: Tensor, sentences: Tensor) -> Tensor:
        """[N, 22, 3] joints (metres) and [N, H] sentence embeddings, row by row -> [N] matcher scores (cosines)."""
        from unipose_sdk.errors import BackendUnavailableError

        raise BackendUnavailableError.make(
            f"a {self.backend} runtime asked to score poses with the text-pose matcher of {self.config.name!r}",
            "a model with a pose_matcher, in files that hold it",
            "Re-export the model with this SDK version, or decode once (GeneratorOptions(choose_candidates=False)).")

    @abstractmethod
    def decode_poses(self, codes: Tensor) -> Tensor: ...

    def pose_part_missing(self, name: str) -> Exception:
        """The error for a pose-tokenizer graph / engine `name` that a ChatPose export does not hold."""
        from unipose_sdk.errors import UnsupportedTaskError

        return UnsupportedTaskError.make(f"a request for the {name} part of a {self.config.family} export",
                                         "an export with a pose tokenizer", "Use a UniPose model (family 'unipose').")

    def pose_codebook(self) -> Tensor | None:
        """The pose tokenizer's codebook [K, D] float32 on the runtime's device (where the logits are), for
        expected-code pose decoding (config `pose_decoding`); None when this backend's files do not carry it."""
        return None

    def close(self) -> None:
        """Release device memory and sessions; the runtime is unusable afterwards."""

    def describe(self) -> str:
        return f"{self.backend} on {self.device} ({str(self.dtype).replace('torch.', '')})"
