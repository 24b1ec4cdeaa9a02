"""Image inputs of the task classes: any supported image (and optional person box) -> both model views -> embeds.

Loading and cropping are `unipose_sdk.preprocess`'s; the views come from the runtime's `pixel_views` (every
backend: `FastPreprocessor`, resize as cropped matrix products) and the embeddings from its `encode_images`
(torch: packed towers; ONNX Runtime / TensorRT: the vision graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.errors import InvalidImageError, InvalidInputError, UniPoseFileNotFoundError
from unipose_sdk.preprocess import crop_person, load_image
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
        try:
            rgb = load_image(image)
        except (InvalidImageError, UniPoseFileNotFoundError) as error:
            raise type(error)(f"image {i} of {len(images)}: {error}") from error
        box = None if bboxes is None else bboxes[i]
        if box is not None:
            rgb = crop_person(rgb, box, margin=bbox_margin)
        loaded.append(rgb)
    runtime = session.runtime
    with torch.inference_mode():
        return runtime.encode_images(*runtime.pixel_views(loaded))
