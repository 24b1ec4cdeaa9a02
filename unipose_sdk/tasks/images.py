"""Image inputs of the task classes: any supported image (and optional person box) -> both model views."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models import preprocess
from unipose_sdk.session import UniPose


def images_to_embeds(session: UniPose, images: Sequence[Any], bboxes: Sequence[Any] | None = None,
                     bbox_margin: float = 1.2) -> Tensor:
    """Load each image (path, PIL, numpy HxWx3, torch), crop the person box when one is given (HMR-style square
    crop with margin), build the CLIP and Pose-ViT views and run the vision encoder: [N, image_tokens, C]."""
    if bboxes is not None and len(bboxes) != len(images):
        raise InvalidInputError.make(f"{len(images)} images and {len(bboxes)} boxes", "one box (or None) per image",
                                     "Pass bbox as a list of the same length as the images.")
    loaded = []
    for i, image in enumerate(images):
        rgb = preprocess.load_image(image)
        box = None if bboxes is None else bboxes[i]
        if box is not None:
            rgb = preprocess.crop_person(rgb, box, margin=bbox_margin)
        loaded.append(rgb)
    config = session.config
    clip_pixels, pose_pixels = preprocess.preprocess_batch(loaded, config.clip, config.pose_vit)
    with torch.inference_mode():
        return session.encode_images(clip_pixels, pose_pixels)
