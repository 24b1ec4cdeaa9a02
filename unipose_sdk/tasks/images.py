"""Image inputs of the task classes: any supported image (and optional person box) -> both model views -> embeds.

Two routes, equal within float rounding (same pose codes end to end):
- the fast one (default, every backend): pixel views from `FastPreprocessor` (resize as cropped matrix products)
  and the runtime's `encode_images` (torch: packed towers; ONNX Runtime: the vision graph);
- `reference=True`: `preprocess.preprocess_batch` and the runtime's `encode_images_reference` (torch: the
  VisionEncoder module itself). The benchmark's reference rows take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidImageError, InvalidInputError, UniPoseFileNotFoundError
from unipose_sdk.models import preprocess
from unipose_sdk.models.config import CLIPVisionConfig, PoseViTConfig
from unipose_sdk.runtime.fast_vision import FastPreprocessor
from unipose_sdk.session import UniPose


@lru_cache(maxsize=8)
def fast_preprocessor(clip: CLIPVisionConfig, pose: PoseViTConfig) -> FastPreprocessor:
    """One preprocessor (and its cache of resize matrices per image size) per model config."""
    return FastPreprocessor(clip, pose)


def images_to_embeds(session: UniPose, images: Sequence[Any], bboxes: Sequence[Any] | None = None,
                     bbox_margin: float = 1.2, *, reference: bool = False) -> Tensor:
    """Load each image (path, PIL, numpy HxWx3, torch), crop the person box when one is given (HMR-style square
    crop with margin), build the CLIP and Pose-ViT views and run the vision encoder: [N, image_tokens, C]."""
    if bboxes is not None and len(bboxes) != len(images):
        raise InvalidInputError.make(f"{len(images)} images and {len(bboxes)} boxes", "one box (or None) per image",
                                     "Pass bbox as a list of the same length as the images.")
    loaded = []
    for i, image in enumerate(images):
        try:
            rgb = preprocess.load_image(image)
        except (InvalidImageError, UniPoseFileNotFoundError) as error:
            raise type(error)(f"image {i} of {len(images)}: {error}") from error
        box = None if bboxes is None else bboxes[i]
        if box is not None:
            rgb = preprocess.crop_person(rgb, box, margin=bbox_margin)
        loaded.append(rgb)
    config = session.config
    runtime = session.runtime
    with torch.inference_mode():
        if reference:
            clip_pixels, pose_pixels = preprocess.preprocess_batch(loaded, config.clip, config.pose_vit)
            return runtime.encode_images_reference(clip_pixels, pose_pixels)
        clip_pixels, pose_pixels = fast_preprocessor(config.clip, config.pose_vit)(loaded)
        return runtime.encode_images(clip_pixels, pose_pixels)
