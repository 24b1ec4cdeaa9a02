"""Estimator: image -> 3D pose."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.options import EstimatorOptions
from unipose_sdk.results import EstimateResult, describe_input
from unipose_sdk.tasks.base import TaskBase, as_batch, check_image_paths, split_batch
from unipose_sdk.tasks.images import images_to_embeds
from unipose_sdk.tasks.pipeline import answer
from unipose_sdk.text.prompts import Task

_SINGLE_IMAGE_TYPES = (str, np.ndarray, torch.Tensor)


def _is_box(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, torch.Tensor)) and len(value) == 4 and all(
        isinstance(v, (int, float, np.number)) or (isinstance(v, torch.Tensor) and v.ndim == 0) for v in value)


def _checked_box(box: Any, what: str) -> Any:
    if not _is_box(box) or not all(math.isfinite(float(v)) for v in box):
        raise InvalidInputError.make(f"{what}={box!r}", "four numbers (x1, y1, x2, y2) in pixels, all finite",
                                     "Pass the person box as a 4-tuple, or None for the whole image.")
    return box


class Estimator(TaskBase):
    """Estimate the 3D pose of the person in an image (optionally inside a person box, x1 y1 x2 y2 pixels)."""

    options_class = EstimatorOptions

    def estimate(self, image: Any, bbox: Any = None) -> EstimateResult | list[EstimateResult]:
        """image: path, PIL image, numpy HxWx3, torch tensor, or a list of them (one batch).
        bbox: None, one box (x1, y1, x2, y2) for a single image, or a list with a box (or None) per image.

        Raises:
            InvalidImageError: an image that cannot be read or converted (the message names which).
            UniPoseFileNotFoundError: an image path that does not exist.
            InvalidInputError: a box that is not four finite numbers or lies outside its image, boxes that do
                not match the images one to one, an empty list, or a call after `close()`.
        """
        images, single = as_batch(image, _SINGLE_IMAGE_TYPES)
        check_image_paths(images)
        if bbox is None:
            boxes = None
        elif single:
            boxes = [_checked_box(bbox, "bbox")]
        else:
            if not isinstance(bbox, (list, tuple)) or len(bbox) != len(images):
                raise InvalidInputError.make(f"bbox={bbox!r} for {len(images)} images",
                                             "a list with one box (or None) per image",
                                             "Pass bbox=[box_or_None, ...] in the order of the images.")
            boxes = [None if b is None else _checked_box(b, f"bbox {i}") for i, b in enumerate(bbox)]
        with self._call() as session:
            config = self.options.generation_config(session.config.vocab)
            prompts = lambda: [session.prompts.build_task(Task.POSE_ESTIMATION) for _ in images]  # noqa: E731
            answers = answer(
                session, prompts, config,
                encode_images=lambda: images_to_embeds(session, images, boxes, self.options.bbox_margin),
            )
        results = [EstimateResult(**a.measurements(), run=session.run_info(), text=a.text, pose=a.pose,
                                  pose_codes=a.codes,
                                  input={"task": "estimate", "image": describe_input(images[i]),
                                         **({"bbox": [float(v) for v in boxes[i]]} if boxes and boxes[i] is not None
                                            else {})})
                   for i, a in enumerate(answers)]
        return split_batch(results, single)
