"""Image loading, the CLIP and Pose-ViT views, batching and the person crop.

References: Pillow's own BICUBIC resize (8-bit and float "F" mode), transformers' CLIPImageProcessorPil (the PIL
path of the processor the official UniPose code calls), and a Pillow re-statement of torchvision's
Resize(int) + CenterCrop + Normalize (torchvision is not installed here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unipose_sdk.errors import InvalidImageError, InvalidInputError, UniPoseFileNotFoundError
from unipose_sdk.models.config import get_preset
from unipose_sdk.preprocess import (
    clip_view,
    crop_person,
    load_image,
    pose_vit_view,
    preprocess_batch,
    resize_bicubic,
    square_crop_box,
)

SEVEN_B = get_preset("unipose-7b")
TINY = get_preset("unipose-tiny")
RNG = np.random.default_rng(7)


def _photo_like(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: smooth gradients plus a few hard-edged blocks, like a photograph's mix of both."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 7.0 + y / 11.0)], axis=-1)
    image[height // 4 : height // 2, width // 3 : width // 2] = (0.9, 0.1, 0.2)
    image[height // 2 :, : width // 5] = (0.05, 0.6, 0.95)
    return (image * 255).round().clip(0, 255).astype(np.uint8)


def _noise(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# load_image: accepted forms


def test_uint8_array_is_scaled_exactly() -> None:
    array = _noise(5, 7)
    got = load_image(array)
    assert got.dtype == torch.float32 and got.shape == (5, 7, 3) and got.is_contiguous()
    torch.testing.assert_close(got, torch.from_numpy(array).float() / 255, rtol=0, atol=0)


def test_float_array_and_tensor_layouts() -> None:
    hwc = RNG.random((6, 9, 3), dtype=np.float32)
    expected = torch.from_numpy(hwc)
    torch.testing.assert_close(load_image(hwc), expected)
    torch.testing.assert_close(load_image(torch.from_numpy(hwc)), expected)
    torch.testing.assert_close(load_image(torch.from_numpy(hwc).permute(2, 0, 1)), expected)  # CHW tensor
    torch.testing.assert_close(load_image(np.ascontiguousarray(hwc.transpose(2, 0, 1))), expected)  # CHW array
    torch.testing.assert_close(load_image(hwc[:, :, ::-1]), expected.flip(-1))  # negative strides (BGR flip)
    torch.testing.assert_close(load_image(hwc.astype(np.float64)), expected)
    torch.testing.assert_close(load_image(torch.from_numpy(hwc).half()), expected, atol=1e-3, rtol=0)


def test_uint8_tensor_chw_and_hwc() -> None:
    array = _noise(4, 6)
    expected = torch.from_numpy(array).float() / 255
    torch.testing.assert_close(load_image(torch.from_numpy(array)), expected)
    torch.testing.assert_close(load_image(torch.from_numpy(array).permute(2, 0, 1)), expected)


def test_output_passes_through_unchanged_even_when_height_is_3() -> None:
    image = load_image(RNG.random((3, 5, 3), dtype=np.float32))  # [3, 5, 3] could read as CHW
    assert torch.equal(load_image(image), image)


def test_grayscale_is_replicated() -> None:
    gray = RNG.integers(0, 256, size=(5, 6), dtype=np.uint8)
    got = load_image(gray)
    assert got.shape == (5, 6, 3)
    for channel in range(3):
        torch.testing.assert_close(got[..., channel], torch.from_numpy(gray).float() / 255)
    torch.testing.assert_close(load_image(gray[..., None]), got)
    torch.testing.assert_close(load_image(Image.fromarray(gray, mode="L")), got)
    torch.testing.assert_close(load_image(torch.from_numpy(gray)[None]), got)  # [1, H, W] tensor


def test_alpha_is_dropped_not_composited() -> None:
    rgba = _noise(4, 4)
    rgba = np.concatenate([rgba, np.zeros((4, 4, 1), np.uint8)], axis=-1)  # fully transparent
    expected = torch.from_numpy(rgba[..., :3]).float() / 255
    torch.testing.assert_close(load_image(rgba), expected)
    torch.testing.assert_close(load_image(Image.fromarray(rgba, mode="RGBA")), expected)
    gray_alpha = Image.fromarray(rgba[..., :2].copy(), mode="LA")
    torch.testing.assert_close(load_image(gray_alpha)[..., 1], expected[..., 0])


def test_sixteen_bit_images_are_scaled() -> None:
    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    expected = torch.from_numpy(deep.astype(np.float32) / 65535).unsqueeze(-1).expand(-1, -1, 3)
    torch.testing.assert_close(load_image(deep), expected)
    torch.testing.assert_close(load_image(np.stack([deep] * 3, -1)), expected)
    torch.testing.assert_close(load_image(Image.fromarray(deep)), expected)  # PIL mode I;16
    torch.testing.assert_close(load_image(Image.fromarray(deep.astype(np.int32))), expected)  # PIL mode I
    if hasattr(torch, "uint16"):
        torch.testing.assert_close(load_image(torch.from_numpy(deep.astype(np.int32)).to(torch.uint16)), expected)


def test_other_pil_modes() -> None:
    rgb = Image.fromarray(_photo_like(6, 8))
    expected = load_image(rgb)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    torch.testing.assert_close(load_image(palette), load_image(palette.convert("RGB")))
    palette.info["transparency"] = 0
    torch.testing.assert_close(load_image(palette), load_image(palette.convert("RGBA").convert("RGB")))
    assert load_image(rgb.convert("CMYK")).shape == (6, 8, 3)
    assert set(load_image(rgb.convert("1")).unique().tolist()) <= {0.0, 1.0}
    floats = Image.fromarray(RNG.random((6, 8), dtype=np.float32), mode="F")
    torch.testing.assert_close(load_image(floats)[..., 0], torch.from_numpy(np.array(floats)))
    assert torch.equal(load_image(np.ones((2, 2), dtype=bool)), torch.ones(2, 2, 3))
    torch.testing.assert_close(expected, torch.from_numpy(np.array(rgb)).float() / 255)


def test_float_slightly_outside_unit_range_is_clamped() -> None:
    got = load_image(np.array([[-5e-4, 1.0 + 5e-4]], dtype=np.float32))
    assert float(got.min()) == 0.0 and float(got.max()) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# load_image: files


def test_png_round_trip_and_str_or_path(tmp_path: Path) -> None:
    array = _noise(9, 11)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    expected = torch.from_numpy(array).float() / 255
    torch.testing.assert_close(load_image(path), expected, rtol=0, atol=0)
    torch.testing.assert_close(load_image(str(path)), expected, rtol=0, atol=0)


def test_sixteen_bit_png_file(tmp_path: Path) -> None:
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    torch.testing.assert_close(load_image(path)[..., 2], torch.from_numpy(deep.astype(np.float32) / 65535))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = _photo_like(20, 30)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.shape == (30, 20, 3)
    torch.testing.assert_close(loaded, load_image(np.rot90(array, k=-1)))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(UniPoseFileNotFoundError, match="nope.jpg") as info:
        load_image(missing)
    assert isinstance(info.value, FileNotFoundError)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + bytes(40)])
def test_corrupt_files_name_the_file_and_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(InvalidImageError, match=r"broken\.png.*cannot be decoded .*Error"):
        load_image(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.fromarray(_noise(64, 64)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InvalidImageError, match=r"cut\.jpg"):
        load_image(path)


# ---------------------------------------------------------------------------------------------------------------
# load_image: rejected inputs


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((4, 0), np.uint8), "empty"),
        (np.zeros(5, np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((5, 5, 2), np.uint8), "shape"),
        (torch.zeros(2, 5, 5), "shape"),
        (np.full((2, 2, 3), np.nan, np.float32), "NaN"),
        (torch.tensor([[0.5, float("inf")]]), "NaN or infinite"),
        (torch.tensor([[0.5, -float("inf")]]), "NaN or infinite"),
        (torch.tensor([[0.2, float("nan"), 0.7]]), "NaN or infinite"),  # one NaN among valid pixels
        (np.full((2, 2, 3), 200.0, np.float32), "Divide by 255"),
        (np.zeros((2, 2, 3), np.int64), "dtype int64"),
        (np.zeros((2, 2, 3), np.complex64), "dtype complex64"),
        (torch.zeros(2, 2, 3, dtype=torch.int32), "dtype int32"),
        (Image.new("RGB", (0, 0)), "empty"),
        (Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)), "32-bit"),
        ([[0, 1], [1, 0]], "type list"),
        (3, "type int"),
    ],
)
def test_rejected_inputs(bad: object, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match):
        load_image(bad)  # type: ignore[arg-type]


def test_float_pixels_within_the_slack_are_clamped_and_in_range_ones_kept() -> None:
    inside = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    assert torch.equal(load_image(inside)[..., 0], inside)
    rounded = torch.tensor([[-5e-4, 0.5], [1.0004, 1.0]])  # someone else's bicubic overshoot
    assert torch.equal(load_image(rounded)[..., 0], rounded.clamp(0.0, 1.0))


# ---------------------------------------------------------------------------------------------------------------
# Resize against Pillow


@pytest.mark.parametrize("src_hw, dst_hw", [((97, 131), (64, 86)), ((50, 37), (336, 248)), ((301, 200), (256, 170))])
def test_resize_matches_pil_float_mode(src_hw: tuple, dst_hw: tuple) -> None:
    gray = _photo_like(*src_hw)[..., 0].astype(np.float32) / 255 * 0.6 + 0.2  # no clipping in either
    reference = np.asarray(Image.fromarray(gray, mode="F").resize(dst_hw[::-1], Image.Resampling.BICUBIC))
    got = resize_bicubic(torch.from_numpy(gray)[None], dst_hw)[0]
    np.testing.assert_allclose(got.numpy(), reference, atol=1e-4)


@pytest.mark.parametrize("src_hw, dst_hw", [((97, 131), (64, 86)), ((50, 37), (336, 248)), ((400, 611), (336, 513))])
def test_resize_matches_pil_8bit_within_rounding(src_hw: tuple, dst_hw: tuple) -> None:
    # Pillow rounds to 8 bits after each pass; we stay in float: at most ~1.5 grey levels apart.
    for array in [_noise(*src_hw), _photo_like(*src_hw)]:
        reference = np.asarray(Image.fromarray(array).resize(dst_hw[::-1], Image.Resampling.BICUBIC)).astype(float)
        got = resize_bicubic(load_image(array).permute(2, 0, 1), dst_hw).permute(1, 2, 0).numpy() * 255
        assert np.abs(got - reference).max() <= 1.5
        assert np.abs(np.round(got) - reference).mean() < 0.25


def test_resize_to_same_size_is_identity() -> None:
    image = torch.rand(3, 7, 9)
    assert torch.equal(resize_bicubic(image, (7, 9)), image)


# ---------------------------------------------------------------------------------------------------------------
# The two views


@pytest.mark.parametrize("hw", [(480, 641), (700, 336), (123, 77), (336, 336)])
def test_clip_view_matches_hugging_face_pil_processor(hw: tuple) -> None:
    transformers = pytest.importorskip("transformers")
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    config = SEVEN_B.clip
    processor = processor_cls(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )
    array = _photo_like(*hw)
    expected = processor(images=array, return_tensors="pt")["pixel_values"][0]
    got = clip_view(array, config)
    assert got.shape == expected.shape == (3, 336, 336)
    difference = (got - expected).abs()
    assert float(difference.max()) < 1.5 / 255 / min(config.image_std)  # at most ~1.5 grey levels
    assert float(difference.mean()) < 0.5 / 255 / min(config.image_std)


def _torchvision_style_pose_view(array: np.ndarray, square: int, width: int) -> torch.Tensor:
    """Resize(square, BICUBIC) + CenterCrop(square) + ToTensor + Normalize, then [..., m:m+width], with Pillow."""
    image = Image.fromarray(array)
    w, h = image.size
    size = (square, int(square * h / w)) if w <= h else (int(square * w / h), square)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - square) / 2.0), round((size[1] - square) / 2.0)
    image = image.crop((left, top, left + square, top + square))
    pixels = torch.from_numpy(np.array(image)).float().permute(2, 0, 1) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    margin = (square - width) // 2
    return ((pixels - mean) / std)[:, :, margin : margin + width]


@pytest.mark.parametrize("preset, hw", [(SEVEN_B, (480, 641)), (SEVEN_B, (913, 300)), (TINY, (97, 55))])
def test_pose_vit_view_matches_torchvision_style_reference(preset: object, hw: tuple) -> None:
    config = preset.pose_vit  # type: ignore[attr-defined]
    array = _photo_like(*hw)
    got = pose_vit_view(array, config)
    expected = _torchvision_style_pose_view(array, config.resize_size, config.image_width)
    assert got.shape == expected.shape == (3, config.image_height, config.image_width)
    assert float((got - expected).abs().max()) < 1.5 / 255 / 0.224


def test_crop_offsets_follow_each_reference() -> None:
    # Short side already at size (no resampling) and 3 spare columns: Hugging Face floors the offset (1),
    # torchvision rounds half to even (round(1.5) = 2).
    columns = np.tile(np.arange(259, dtype=np.float32) / 258, (256, 1))  # pixel value encodes its column
    clip_config = dataclasses.replace(
        SEVEN_B.clip, image_size=256, patch_size=16, image_mean=(0, 0, 0), image_std=(1, 1, 1)
    )
    pose_config = dataclasses.replace(SEVEN_B.pose_vit, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    clip_pixels = clip_view(columns, clip_config)
    pose_pixels = pose_vit_view(columns, pose_config)
    assert round(float(clip_pixels[0, 0, 0]) * 258) == 1
    assert round(float(pose_pixels[0, 0, 0]) * 258) == 2 + 32  # crop offset plus the central-column margin


def test_pose_vit_view_rejects_inconsistent_config() -> None:
    with pytest.raises(ValueError, match="resize_size"):
        pose_vit_view(_noise(10, 10), dataclasses.replace(TINY.pose_vit, resize_size=96))


# ---------------------------------------------------------------------------------------------------------------
# Batches


def test_preprocess_batch_mixes_input_kinds(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    first = _photo_like(150, 100)
    Image.fromarray(first).save(path)
    second = torch.rand(3, 90, 120)
    clip_pixels, pose_pixels = preprocess_batch([path, second, Image.fromarray(first)], TINY.clip, TINY.pose_vit)
    assert clip_pixels.shape == (3, 3, 112, 112) and pose_pixels.shape == (3, 3, 128, 96)
    torch.testing.assert_close(clip_pixels[1], clip_view(second, TINY.clip))
    torch.testing.assert_close(pose_pixels[1], pose_vit_view(second, TINY.pose_vit))
    torch.testing.assert_close(clip_pixels[0], clip_pixels[2])


def test_preprocess_batch_single_image_and_4d_stack() -> None:
    single_clip, single_pose = preprocess_batch(_noise(40, 30), TINY.clip, TINY.pose_vit)
    assert single_clip.shape == (1, 3, 112, 112) and single_pose.shape == (1, 3, 128, 96)
    stack = torch.rand(2, 3, 50, 60)
    clip_pixels, _ = preprocess_batch(stack, TINY.clip, TINY.pose_vit)
    torch.testing.assert_close(clip_pixels[1], clip_view(stack[1], TINY.clip))


def test_preprocess_batch_errors_name_the_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="empty list"):
        preprocess_batch([], TINY.clip, TINY.pose_vit)
    with pytest.raises(InvalidImageError, match="image 1 of 2: .*NaN"):
        preprocess_batch([_noise(8, 8), np.full((8, 8), np.nan)], TINY.clip, TINY.pose_vit)
    with pytest.raises(UniPoseFileNotFoundError, match="image 0 of 1: .*missing.png"):
        preprocess_batch([tmp_path / "missing.png"], TINY.clip, TINY.pose_vit)


# ---------------------------------------------------------------------------------------------------------------
# Person crop


def test_crop_inside_the_image_copies_pixels() -> None:
    array = _noise(400, 300)
    box = [100, 50, 160, 250]  # 60 wide, 200 high: height decides, side = 200 * 1.2 = 240
    left, top, side = square_crop_box(box, (400, 300))
    assert (left, top, side) == (130 - 120, 150 - 120, 240)
    crop = crop_person(array, box)
    assert crop.shape == (240, 240, 3)
    torch.testing.assert_close(crop, load_image(array)[30:270, 10:250])


def test_wide_box_is_widened_to_the_pose_vit_aspect() -> None:
    # 150 wide, 60 high: the crop must be 150 / 0.75 = 200 high so the box fills the 192/256 central columns.
    assert square_crop_box([0, 0, 150, 60], (500, 500), margin=1.0)[2] == 200


def test_crop_leaving_the_image_is_zero_padded() -> None:
    array = np.full((100, 80, 3), 255, np.uint8)
    crop = crop_person(array, [-10, 20, 20, 70], margin=1.0)  # side max(50, 30 / 0.75) = 50, left -20, top 20
    assert crop.shape == (50, 50, 3)
    assert torch.equal(crop[:, :20], torch.zeros(50, 20, 3))
    assert torch.equal(crop[:, 20:], torch.ones(50, 30, 3))


@pytest.mark.parametrize(
    "box, match",
    [
        ([10, 10, 10, 50], "width 0"),
        ([10, 10, 50, 10], "height 0"),
        ([50, 10, 10, 40], "width -40"),
        ([10, float("nan"), 20, 40], "finite"),
        ([200, 10, 260, 50], "outside"),
        ([-60, 10, -5, 50], "outside"),
        ([10, 120, 20, 150], "outside"),
        ([1, 2, 3], "4 numbers"),
        ("abcd", "4 numbers"),
        ([0, 0, 1e7, 1e7], "crop of an image"),
    ],
)
def test_bad_boxes_name_the_box_and_image_size(box: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match) as info:
        crop_person(np.zeros((100, 80, 3), np.uint8), box)  # type: ignore[arg-type]
    assert "80x100" in str(info.value)


@pytest.mark.parametrize("margin, aspect", [(0.0, 0.75), (float("nan"), 0.75), (1.2, -1.0)])
def test_bad_margin_or_aspect(margin: float, aspect: float) -> None:
    with pytest.raises(InvalidInputError, match="margin"):
        crop_person(np.zeros((100, 80, 3), np.uint8), [10, 10, 40, 60], margin=margin, aspect_ratio=aspect)


def test_crop_accepts_array_and_tensor_boxes() -> None:
    array = _noise(60, 60)
    expected = crop_person(array, [10, 10, 30, 50])
    torch.testing.assert_close(crop_person(array, np.array([10, 10, 30, 50])), expected)
    torch.testing.assert_close(crop_person(array, torch.tensor([10.0, 10.0, 30.0, 50.0])), expected)
