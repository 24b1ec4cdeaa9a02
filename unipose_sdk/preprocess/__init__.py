"""Images -> the two pixel views the vision towers read.

- `views`: the definition (image loading, person crops, each view's geometry, `preprocess_batch`), as the official
  pipeline builds the views;
- `fast`: the same views as cropped matrix products (`FastPreprocessor`), what the task classes run.
"""

from unipose_sdk.preprocess.fast import FastPreprocessor, fast_preprocessor, resize_weights
from unipose_sdk.preprocess.views import (
    ImageLike,
    ViewGeometry,
    clip_geometry,
    clip_view,
    crop_person,
    load_image,
    pose_vit_geometry,
    pose_vit_view,
    preprocess_batch,
    resize_bicubic,
    square_crop_box,
)

__all__ = [
    "FastPreprocessor", "ImageLike", "ViewGeometry", "clip_geometry", "clip_view", "crop_person", "fast_preprocessor",
    "load_image", "pose_vit_geometry", "pose_vit_view", "preprocess_batch", "resize_bicubic", "resize_weights",
    "square_crop_box",
]
