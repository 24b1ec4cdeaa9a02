"""Image loading and the two pixel views UniPose feeds its vision towers. Torch, numpy and Pillow only.

    load_image(anything)        -> [H, W, 3] float32 RGB in [0, 1]
    clip_view(image, clip_cfg)  -> [3, S, S]   short side -> S (bicubic), centre crop S, CLIP mean/std
    pose_vit_view(image, cfg)   -> [3, H, W]   short side -> resize_size (bicubic), centre crop square,
                                               ImageNet mean/std, then the central `image_width` columns
    preprocess_batch(images, clip_cfg, pose_cfg) -> ([B, 3, S, S], [B, 3, H, W])
    clip_geometry / pose_vit_geometry(h, w, cfg) -> ViewGeometry: each view's resize size and crop box
    crop_person(image, bbox_xyxy)               -> [side, side, 3] HMR-style square crop around a person box

The official pipeline (liyiheng23/UniPose inference.py) builds the CLIP view with Hugging Face's CLIPImageProcessor
on a cv2-decoded uint8 image and the Pose-ViT view with torchvision Resize/CenterCrop on a PIL image; both resize
with PIL's 8-bit BICUBIC. Here the resize is torch's antialiased bicubic (the same a = -0.5 kernel PIL uses, with
PIL's support widening when downscaling), run as PIL does: a horizontal pass, clamp to [0, 1], a vertical pass,
clamp. It stays in float (no 8-bit rounding): within about 1.5/255 of PIL's 8-bit result on white noise, far less
on photographs, and within 1e-4 of PIL's float ("F" mode) resize where nothing clips. Centre-crop offsets follow
each reference: floor((h - S) / 2) for CLIP (Hugging Face), round-half-even for Pose-ViT (torchvision).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from unipose_sdk.errors import InvalidImageError, InvalidInputError, UniPoseFileNotFoundError
from unipose_sdk.fileio import open_regular_file
from unipose_sdk.models.config import CLIPVisionConfig, PoseViTConfig

ImageLike = str | os.PathLike | Image.Image | np.ndarray | Tensor

# Float images may overshoot [0, 1] by rounding (e.g. after someone else's bicubic resize); beyond this they are
# taken to be on another scale (0..255) and rejected rather than silently clipped.
_FLOAT_RANGE_SLACK = 1e-3
_CHANNEL_COUNTS = (1, 3, 4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_image(image: ImageLike) -> Tensor:
    """Any supported image -> contiguous float32 tensor [H, W, 3], RGB, values in [0, 1].

    Accepts a path (str / PathLike), a PIL image, a numpy array or a torch tensor.
    - Arrays / tensors: HxW (grayscale) or 3-D; a 3-D one is channels-last when its last dim is 1, 3 or 4, else
      channels-first when its first dim is (so this function's own output passes through unchanged; only
      images 4 pixels high or less can be ambiguous).
      uint8 is divided by 255, uint16 by 65535, bool maps to {0, 1}; floats must already lie in [0, 1].
    - Grayscale is replicated to RGB; 16-bit images are scaled, not rejected.
    - Alpha is dropped (not composited): the official pipeline reads images with cv2.imread / PIL convert("RGB"),
      which both ignore alpha, and the model was trained on that.
    - Files are decoded with Pillow and turned upright by their EXIF orientation.
    """
    if isinstance(image, (str, os.PathLike)):
        return _from_pil(_open(Path(image)), f"file {os.fspath(image)}")
    if isinstance(image, Image.Image):
        return _from_pil(image, "PIL image")
    if isinstance(image, np.ndarray):
        return _from_array(image, "numpy array")
    if isinstance(image, Tensor):
        return _from_array(image.detach().cpu(), "tensor")
    raise InvalidImageError.make(
        f"an object of type {type(image).__name__}",
        "a file path, a PIL image, a numpy array or a torch tensor",
        "Pass the image in one of those forms.",
    )


def _open(path: Path) -> Image.Image:
    # Opened through fileio: a FIFO or device (also one swapped in after a check) is refused instead of blocking
    # the read forever; a missing file is UniPoseFileNotFoundError, anything else not a regular file InvalidImageError.
    handle = open_regular_file(path, "image file", InvalidImageError, "Name one image file (PNG, JPEG, ...).")
    try:
        with handle, Image.open(handle) as opened:
            opened.load()  # decode now, inside the try: truncated files fail here, not later
            return ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImageError.make(
            f"file {path} that cannot be decoded as an image ({type(error).__name__}: {error})",
            "a readable image file (PNG, JPEG, BMP, TIFF, WebP, ...)",
            "Check that the file is complete and really an image; re-export it if it is corrupt.",
        ) from None


def _from_pil(image: Image.Image, source: str) -> Tensor:
    if image.width == 0 or image.height == 0:
        raise _empty(source, (image.height, image.width))
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise InvalidImageError.make(
                f"{source} in 32-bit integer mode with values in [{values.min()}, {values.max()}]",
                "8- or 16-bit pixel values",
                "Convert the image to 8 or 16 bits per channel.",
            )
        return _from_array((values / 65535.0).astype(np.float32), source)
    if image.mode == "F":
        return _from_array(np.asarray(image), source)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    # RGBA first for palette images with transparency (Pillow warns on a direct RGB conversion); alpha then dropped.
    rgb = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))[..., :3]
    return _from_array(rgb, source)


def _empty(source: str, shape: tuple[int, ...]) -> InvalidImageError:
    return InvalidImageError.make(
        f"an empty {source} of shape {shape}", "an image with at least one pixel", "Check how the image was produced."
    )


def _from_array(array: np.ndarray | Tensor, source: str) -> Tensor:
    shape = tuple(array.shape)
    if len(shape) == 2:
        array = array[..., None]  # [H, W] -> [H, W, 1]
    elif len(shape) == 3 and shape[-1] in _CHANNEL_COUNTS:
        pass
    elif len(shape) == 3 and shape[0] in _CHANNEL_COUNTS:
        array = array.transpose(1, 2, 0) if isinstance(array, np.ndarray) else array.permute(1, 2, 0)
    else:
        raise InvalidImageError.make(
            f"a {source} of shape {shape}",
            "[H, W], [H, W, C] or [C, H, W] with C in (1, 3, 4)",
            "Pass one image at a time (use preprocess_batch for a batch) with 1, 3 or 4 channels.",
        )
    if 0 in shape:
        raise _empty(source, shape)
    pixels = _to_unit_float(array, source)  # [H, W, C]
    channels = pixels.shape[-1]
    if channels == 1:
        pixels = pixels.expand(-1, -1, 3)
    elif channels == 4:
        pixels = pixels[..., :3]  # drop alpha, see load_image
    return pixels.contiguous()


def _to_unit_float(array: np.ndarray | Tensor, source: str) -> Tensor:
    """[H, W, C] of any supported dtype -> float32 tensor in [0, 1]."""
    if isinstance(array, np.ndarray):
        dtype_name = str(array.dtype)
        if array.dtype == np.uint16:  # scale in numpy: not every torch build has a uint16 tensor type
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 65535.0)
        if array.dtype != np.uint8 and array.dtype.kind not in "bf":
            raise _bad_dtype(source, dtype_name)
        if not (array.flags.c_contiguous and array.flags.writeable):  # BGR flips, read-only PIL buffers
            array = np.array(array, order="C", copy=True)
        tensor = torch.from_numpy(array)
    else:
        tensor, dtype_name = array, str(array.dtype).removeprefix("torch.")
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32) / 255.0
    if tensor.dtype == torch.uint16:
        return tensor.to(torch.float32) / 65535.0
    if tensor.dtype == torch.bool:
        return tensor.to(torch.float32)
    if not tensor.is_floating_point():
        raise _bad_dtype(source, dtype_name)
    tensor = tensor.to(torch.float32)
    # One pass for both checks: min / max propagate NaN, and an infinity is its own min or max.
    low_t, high_t = torch.aminmax(tensor)
    low, high = float(low_t), float(high_t)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidImageError.make(
            f"a {source} containing NaN or infinite values", "finite pixel values", "Fix the code that made the image."
        )
    if low < -_FLOAT_RANGE_SLACK or high > 1.0 + _FLOAT_RANGE_SLACK:
        raise InvalidImageError.make(
            f"a float {source} with values in [{low:.4g}, {high:.4g}]",
            "float pixel values in [0, 1]",
            "Divide by 255 if it holds 0..255 values, or pass it as uint8.",
        )
    return tensor if 0.0 <= low and high <= 1.0 else tensor.clamp(0.0, 1.0)


def _bad_dtype(source: str, dtype_name: str) -> InvalidImageError:
    return InvalidImageError.make(
        f"a {source} of dtype {dtype_name}",
        "uint8, uint16, bool or float (in [0, 1]) pixels",
        "Convert it, e.g. array.astype(np.uint8) for 0..255 integers or array / 255.0 for floats.",
    )


# ----------------------------------------------------------------------------------------------------------------
# Resizing and the two views


def resize_bicubic(image_chw: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """[C, H, W] in [0, 1] -> [C, h, w]: PIL-style antialiased bicubic (see the module docstring)."""
    height, width = size_hw
    x = image_chw.unsqueeze(0)  # [1, C, H, W]
    if x.shape[-1] != width:  # horizontal pass first, as Pillow does, clamped like its 8-bit intermediate
        x = F.interpolate(x, size=(x.shape[-2], width), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 1.0)
    if x.shape[-2] != height:
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0.0, 1.0)
    return x[0]


@dataclass(frozen=True)
class ViewGeometry:
    """Where a view's pixels come from: resize the whole image to `resized_hw`, then keep rows [top, top + height)
    and columns [left, left + width). The reference views and the fast path (preprocess/fast.py) both read it,
    so they cannot drift apart."""

    resized_hw: tuple[int, int]
    top: int
    left: int
    height: int
    width: int


def _short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """Short side -> `short`, long side int(short * long / short_before) (both references truncate)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def clip_geometry(height: int, width: int, config: CLIPVisionConfig) -> ViewGeometry:
    """CLIPImageProcessor: short side -> S, centre crop S x S with floor((h - S) / 2) offsets."""
    size = config.image_size
    resized = _short_side_size(height, width, size)
    return ViewGeometry(resized, (resized[0] - size) // 2, (resized[1] - size) // 2, size, size)


def pose_vit_geometry(height: int, width: int, config: PoseViTConfig) -> ViewGeometry:
    """torchvision Resize + CenterCrop (int(round(offset)), Python's round-half-even), then the central
    `image_width` columns of the square (7B: 32 columns off each side, the official [..., 32:-32])."""
    _check_pose_vit_config(config)
    square = config.resize_size
    resized = _short_side_size(height, width, square)
    top = round((resized[0] - square) / 2.0)
    left = round((resized[1] - square) / 2.0)
    margin = (square - config.image_width) // 2
    return ViewGeometry(resized, top, left + margin, config.image_height, config.image_width)


def _normalise(image_chw: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=image_chw.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image_chw.dtype).view(3, 1, 1)
    return (image_chw - mean_t) / std_t


def _view(image_chw: Tensor, geometry: ViewGeometry, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    g = geometry
    resized = resize_bicubic(image_chw, g.resized_hw)
    return _normalise(resized[:, g.top : g.top + g.height, g.left : g.left + g.width], mean, std)


def clip_view(image: ImageLike, config: CLIPVisionConfig) -> Tensor:
    """The CLIP tower's input [3, S, S] (Hugging Face CLIPImageProcessor semantics, S = config.image_size)."""
    return _clip_view_chw(load_image(image).permute(2, 0, 1), config)


def _clip_view_chw(image_chw: Tensor, config: CLIPVisionConfig) -> Tensor:
    geometry = clip_geometry(image_chw.shape[-2], image_chw.shape[-1], config)
    return _view(image_chw, geometry, config.image_mean, config.image_std)


def pose_vit_view(image: ImageLike, config: PoseViTConfig) -> Tensor:
    """The Pose-ViT input [3, image_height, image_width] (torchvision Resize + CenterCrop, then central columns)."""
    _check_pose_vit_config(config)
    return _pose_vit_view_chw(load_image(image).permute(2, 0, 1), config)


def _check_pose_vit_config(config: PoseViTConfig) -> None:
    square = config.resize_size
    if config.image_height != square or config.image_width > square:
        raise ValueError(
            f"Pose-ViT config crops {config.image_height}x{config.image_width} out of a {square} square; the height "
            "must equal resize_size and the width must not exceed it"
        )


def _pose_vit_view_chw(image_chw: Tensor, config: PoseViTConfig) -> Tensor:
    geometry = pose_vit_geometry(image_chw.shape[-2], image_chw.shape[-1], config)
    return _view(image_chw, geometry, config.image_mean, config.image_std)


def preprocess_batch(
    images: ImageLike | Sequence[ImageLike], clip_config: CLIPVisionConfig, pose_config: PoseViTConfig
) -> tuple[Tensor, Tensor]:
    """Images -> (clip_pixels [B, 3, S, S], pose_pixels [B, 3, H, W]); every image goes through both views.

    `images` is a list / tuple of images, one image, or a 4-D array / tensor [B, ...] (split on its first dim).
    An error names the failing image's index.
    """
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 4:
        items: list[ImageLike] = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]  # type: ignore[list-item]
    if not items:
        raise InvalidInputError.make("an empty list of images", "at least one image", "Pass one or more images.")
    _check_pose_vit_config(pose_config)
    clip_views, pose_views = [], []
    for index, item in enumerate(items):
        try:
            rgb_chw = load_image(item).permute(2, 0, 1)  # decode and check once, view twice
        except (InvalidImageError, UniPoseFileNotFoundError) as error:
            raise type(error)(f"image {index} of {len(items)}: {error}") from error
        clip_views.append(_clip_view_chw(rgb_chw, clip_config))
        pose_views.append(_pose_vit_view_chw(rgb_chw, pose_config))
    return torch.stack(clip_views), torch.stack(pose_views)


# ----------------------------------------------------------------------------------------------------------------
# Person crop


def square_crop_box(
    bbox_xyxy: Sequence[float] | np.ndarray | Tensor,
    image_size_hw: tuple[int, int],
    margin: float = 1.2,
    aspect_ratio: float = 0.75,
) -> tuple[int, int, int]:
    """(left, top, side) in pixels of the square crop `crop_person` takes; may reach outside the image.

    HMR2.0 / TokenHMR style: the box is widened to the Pose-ViT's width/height `aspect_ratio` (192 / 256) and the
    square's side is the widened box's longer side, max(box_h, box_w / aspect_ratio), times `margin`; it is
    centred on the box. So the person fits the central columns the Pose-ViT view keeps. TokenHMR's demo uses a
    margin of 1.0 on detector boxes; 1.2 leaves room for boxes that clip limbs.
    """
    height, width = image_size_hw
    box = _parse_box(bbox_xyxy, image_size_hw)
    if not (math.isfinite(margin) and margin > 0) or not (math.isfinite(aspect_ratio) and aspect_ratio > 0):
        raise InvalidInputError.make(
            f"margin {margin} and aspect_ratio {aspect_ratio}", "finite positive numbers", "Use e.g. margin=1.2."
        )
    x1, y1, x2, y2 = box
    side = max(1, round(max(y2 - y1, (x2 - x1) / aspect_ratio) * margin))
    if side > 16 * max(height, width):
        raise InvalidInputError.make(
            f"box {list(box)} giving a {side}-pixel crop of an image of {width}x{height} (WxH)",
            "a person box of roughly the image's scale",
            "Check the box's units (pixels, not another image's coordinates) and the margin.",
        )
    left = round((x1 + x2) / 2 - side / 2)
    top = round((y1 + y2) / 2 - side / 2)
    return left, top, side


def _parse_box(bbox_xyxy: Sequence[float] | np.ndarray | Tensor, image_size_hw: tuple[int, int]) -> list[float]:
    height, width = image_size_hw
    try:
        values = [float(v) for v in np.asarray(bbox_xyxy, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError):
        values = []
    size_text = f"an image of {width}x{height} (WxH)"
    if len(values) != 4:
        raise InvalidInputError.make(
            f"box {bbox_xyxy!r} for {size_text}", "4 numbers x1, y1, x2, y2 in pixels", "Pass one box per call."
        )
    x1, y1, x2, y2 = values
    if not all(math.isfinite(v) for v in values):
        raise InvalidInputError.make(f"box {values} for {size_text}", "finite coordinates", "Drop NaN / inf boxes.")
    if x2 <= x1 or y2 <= y1:
        raise InvalidInputError.make(
            f"box {values} with width {x2 - x1:g} and height {y2 - y1:g} for {size_text}",
            "x2 > x1 and y2 > y1 (x1, y1, x2, y2 order, positive size)",
            "Check the box format: xyxy, not xywh, and not a zero-size detection.",
        )
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise InvalidInputError.make(
            f"box {values} lying outside {size_text}",
            "a box that overlaps the image",
            "Check that the box belongs to this image and is in pixels.",
        )
    return values


def crop_person(
    image: ImageLike,
    bbox_xyxy: Sequence[float] | np.ndarray | Tensor,
    margin: float = 1.2,
    aspect_ratio: float = 0.75,
) -> Tensor:
    """Square crop [side, side, 3] around a person box (pixels, x1 y1 x2 y2), zeros where it leaves the image.

    The crop keeps the image's resolution; pose_vit_view / preprocess_batch resize it afterwards.
    See square_crop_box for the geometry.
    """
    rgb = load_image(image)  # [H, W, 3]
    height, width = rgb.shape[:2]
    left, top, side = square_crop_box(bbox_xyxy, (height, width), margin, aspect_ratio)
    crop = torch.zeros(side, side, 3, dtype=rgb.dtype)
    # Overlap of the square [top, top + side) x [left, left + side) with the image, in both frames.
    src_y0, src_y1 = max(top, 0), min(top + side, height)
    src_x0, src_x1 = max(left, 0), min(left + side, width)
    if src_y1 > src_y0 and src_x1 > src_x0:
        crop[src_y0 - top : src_y1 - top, src_x0 - left : src_x1 - left] = rgb[src_y0:src_y1, src_x0:src_x1]
    return crop
