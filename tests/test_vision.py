"""Vision side: CLIP parity with Hugging Face, Pose-ViT against an explicit reference, fusion, key layouts, sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import CLIPVisionConfig, PoseViTConfig, ProjectorConfig, get_preset
from unipose_sdk.models.vision import (
    CLIPVisionTower,
    PoseViT,
    Projector,
    VisionEncoder,
    count_parameters,
    fuse_vision_features,
)

TINY = get_preset("unipose-tiny")


def _randomise(module: torch.nn.Module) -> None:
    """Random weights everywhere (zero-initialised embeddings and LayerNorm affines included) so parity bites."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.1 if is_norm_scale else 0.2) + (1.0 if is_norm_scale else 0.0))


# ---------------------------------------------------------------------------------------------------------------
# CLIP


def _hf_clip(config: CLIPVisionConfig):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.CLIPVisionConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.hidden_act,
        attn_implementation="sdpa",  # eager runs softmax in float32 even for float64 models
    )
    return transformers.CLIPVisionModel(hf_config).eval()


def _to_hf_keys(ours: dict, hf_keys: set) -> dict:
    """Our keys are the on-disk `vision_model.*` ones; transformers >= 5 dropped that prefix from the module."""
    if all(k in hf_keys for k in ours):
        return ours
    return {k.removeprefix("vision_model."): v for k, v in ours.items()}


@pytest.mark.parametrize("select_layer", [-2, -1, 1])
def test_clip_matches_hugging_face_hidden_states(select_layer: int) -> None:
    config = dataclasses.replace(TINY.clip, select_layer=select_layer)
    ours = CLIPVisionTower(config).eval()
    _randomise(ours)
    hf = _hf_clip(config)
    hf.load_state_dict(_to_hf_keys(ours.state_dict(), set(hf.state_dict())), strict=True)

    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        # float64: any difference left is a real one, not rounding (activations reach ~50 with random weights).
        expected = hf.double()(pixel_values=pixels.double(), output_hidden_states=True).hidden_states
        got = ours.double()(pixels.double())
    assert got.shape == (2, config.num_patches, config.hidden_size)
    torch.testing.assert_close(got, expected[select_layer][:, 1:], atol=1e-9, rtol=1e-9)


def test_clip_float32_close_to_hugging_face() -> None:
    ours = CLIPVisionTower(TINY.clip).eval()
    _randomise(ours)
    hf = _hf_clip(TINY.clip)
    hf.load_state_dict(_to_hf_keys(ours.state_dict(), set(hf.state_dict())), strict=True)
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = ours(pixels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6 * float(expected.abs().max()) * 10, rtol=1e-5)


def test_clip_keys_are_the_hugging_face_checkpoint_keys() -> None:
    config = TINY.clip
    keys = set(CLIPVisionTower(config).state_dict())
    hf_keys = set(_hf_clip(config).state_dict())
    assert {k.removeprefix("vision_model.") for k in keys} == {k.removeprefix("vision_model.") for k in hf_keys}
    assert all(k.startswith("vision_model.") for k in keys)
    for key in [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.encoder.layers.3.self_attn.out_proj.bias",
        "vision_model.encoder.layers.0.mlp.fc2.weight",
        "vision_model.post_layernorm.bias",
    ]:
        assert key in keys
    assert "vision_model.embeddings.patch_embedding.bias" not in keys  # CLIP's patch conv has no bias
    assert not any("position_ids" in k for k in keys)  # an arange, not a weight


def test_clip_gelu_activation_is_honoured() -> None:
    quick = CLIPVisionTower(TINY.clip).eval()
    exact = CLIPVisionTower(dataclasses.replace(TINY.clip, hidden_act="gelu")).eval()
    _randomise(quick)
    exact.load_state_dict(quick.state_dict())
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert not torch.allclose(quick(pixels), exact(pixels), atol=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"select_layer": 5}, "select_layer"),
        ({"select_layer": -6}, "select_layer"),
        ({"image_size": 100}, "multiple of patch_size"),
        ({"num_attention_heads": 3}, "num_attention_heads"),
    ],
)
def test_clip_rejects_bad_configs(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CLIPVisionTower(dataclasses.replace(TINY.clip, **change))


# ---------------------------------------------------------------------------------------------------------------
# Pose-ViT

# The TokenHMR checkpoint's backbone keys (prefix `backbone.` stripped), read off the HMR2.0 / TokenHMR ViT.
_POSE_VIT_BLOCK_KEYS = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
]


def test_pose_vit_keys_and_shapes_match_the_tokenhmr_backbone() -> None:
    with torch.device("meta"):
        model = PoseViT(get_preset("unipose-7b").pose_vit)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "last_norm.weight", "last_norm.bias"}
    expected |= {f"blocks.{i}.{k}" for i in range(32) for k in _POSE_VIT_BLOCK_KEYS}
    assert set(shapes) == expected
    assert shapes["pos_embed"] == (1, 16 * 12 + 1, 1280)  # pretrained with a CLS slot
    assert shapes["patch_embed.proj.weight"] == (1280, 3, 16, 16)
    assert shapes["blocks.0.attn.qkv.weight"] == (3840, 1280)
    assert shapes["blocks.31.mlp.fc1.weight"] == (5120, 1280)
    assert model.patch_embed.proj.padding == (2, 2)


def _reference_pose_vit(state: dict, config: PoseViTConfig, pixels: torch.Tensor) -> torch.Tensor:
    """The backbone written out with explicit matmuls and softmax, straight from the original's equations."""
    x = F.conv2d(
        pixels,
        state["patch_embed.proj.weight"],
        state["patch_embed.proj.bias"],
        stride=config.patch_size,
        padding=config.patch_padding,
    )
    batch, width, h, w = x.shape
    x = x.flatten(2).transpose(1, 2) + state["pos_embed"][:, 1:] + state["pos_embed"][:, :1]
    heads = config.num_heads

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, (width,), state[f"{name}.weight"], state[f"{name}.bias"], config.layer_norm_eps)

    for i in range(config.depth):
        p = f"blocks.{i}."
        qkv = ln(x, p + "norm1") @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]
        qkv = qkv.reshape(batch, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (width // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, h * w, width)
        x = x + out @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        hidden = F.gelu(ln(x, p + "norm2") @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"])
        x = x + hidden @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"]
    x = ln(x, "last_norm")
    return x.permute(0, 2, 1).reshape(batch, width, h, w)


def test_pose_vit_matches_explicit_reference() -> None:
    config = TINY.pose_vit
    model = PoseViT(config).eval()
    _randomise(model)
    pixels = torch.randn(2, 3, config.image_height, config.image_width)
    with torch.no_grad():
        got = model(pixels)
        expected = _reference_pose_vit(model.state_dict(), config, pixels)
    assert got.shape == (2, config.embed_dim, 8, 6)  # channels first
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_pose_vit_adds_the_cls_position_row_to_every_patch() -> None:
    config = dataclasses.replace(TINY.pose_vit, depth=0)  # embed + last_norm only
    model = PoseViT(config).eval()
    _randomise(model)
    pixels = torch.randn(1, 3, config.image_height, config.image_width)
    with torch.no_grad():
        before = model(pixels)
        model.pos_embed[:, 0] += 1.0  # a constant shift on every token: LayerNorm removes it
        assert torch.allclose(model(pixels), before, atol=1e-5)
        model.pos_embed[:, 0, 0] += 5.0  # a shift of one channel on every token changes every token
        changed = (model(pixels) - before).abs().amax(dim=1)  # [1, h, w]
        assert bool((changed > 1e-3).all())


def test_pose_vit_rejects_inconsistent_grid() -> None:
    with pytest.raises(ValueError, match="grid"):
        PoseViT(dataclasses.replace(TINY.pose_vit, patch_padding=8))
    with pytest.raises(ValueError, match="num_heads"):
        PoseViT(dataclasses.replace(TINY.pose_vit, num_heads=3))


# ---------------------------------------------------------------------------------------------------------------
# Fusion, projector, encoder


def test_fusion_pads_with_zeros_resizes_and_puts_clip_first() -> None:
    clip = torch.randn(2, 64, 5)
    pose_map = torch.randn(2, 3, 8, 6)
    fused = fuse_vision_features(clip, pose_map, grid_size=8)
    assert fused.shape == (2, 64, 8)
    assert torch.equal(fused[..., :5], clip)
    # 8x6 -> pad one zero column each side -> 8x8 -> resize to 8x8 is the identity with align_corners=True.
    pose_tokens = fused[..., 5:].transpose(1, 2).reshape(2, 3, 8, 8)
    assert torch.equal(pose_tokens[..., 0], torch.zeros(2, 3, 8))
    assert torch.equal(pose_tokens[..., -1], torch.zeros(2, 3, 8))
    torch.testing.assert_close(pose_tokens[..., 1:-1], pose_map)


def test_fusion_7b_geometry_matches_official_pad_then_resize() -> None:
    clip = torch.randn(1, 576, 4)
    pose_map = torch.randn(1, 2, 16, 12)
    fused = fuse_vision_features(clip, pose_map, grid_size=24)
    expected = F.interpolate(F.pad(pose_map, (2, 2)), size=(24, 24), mode="bilinear", align_corners=True)
    torch.testing.assert_close(fused[..., 4:], expected.flatten(2).transpose(1, 2))
    # align_corners=True keeps the corners: top-left is the zero pad, the first real column maps inside.
    assert fused[0, 0, 4:].abs().max() == 0


def test_fusion_pads_rows_when_the_map_is_wide() -> None:
    fused = fuse_vision_features(torch.zeros(1, 16, 1), torch.ones(1, 1, 2, 4), grid_size=4)
    rows = fused[0, :, 1].reshape(4, 4)
    assert torch.equal(rows[0], torch.zeros(4)) and torch.equal(rows[-1], torch.zeros(4))
    assert torch.equal(rows[1:3], torch.ones(2, 4))


def test_projector_keys_and_function() -> None:
    projector = Projector(ProjectorConfig(input_size=6, hidden_size=5, output_size=4))
    assert list(projector.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = torch.randn(3, 6)
    expected = F.linear(
        F.gelu(F.linear(x, projector[0].weight, projector[0].bias)), projector[2].weight, projector[2].bias
    )
    torch.testing.assert_close(projector(x), expected)


@pytest.fixture(scope="module")
def tiny_encoder() -> VisionEncoder:
    torch.manual_seed(1)
    encoder = VisionEncoder.from_config(TINY).eval()
    _randomise(encoder)
    return encoder


def test_encoder_end_to_end_equals_its_parts(tiny_encoder: VisionEncoder) -> None:
    encoder = tiny_encoder
    clip_pixels = torch.randn(2, 3, 112, 112)
    pose_pixels = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        out = encoder(clip_pixels, pose_pixels)
        fused = fuse_vision_features(encoder.clip(clip_pixels), encoder.pose_vit(pose_pixels), 8)
        expected = encoder.projector(fused)
    assert out.shape == (2, encoder.num_image_tokens, TINY.llm.hidden_size)
    torch.testing.assert_close(out, expected)
    # Images are independent: the batch is not mixed.
    with torch.no_grad():
        single = encoder(clip_pixels[1:], pose_pixels[1:])
    torch.testing.assert_close(single[0], out[1], atol=1e-5, rtol=1e-4)


def test_encoder_state_dict_prefixes(tiny_encoder: VisionEncoder) -> None:
    prefixes = {k.split(".")[0] for k in tiny_encoder.state_dict()}
    assert prefixes == {"clip", "pose_vit", "projector"}


@pytest.mark.parametrize(
    "clip_shape, pose_shape, match",
    [
        ((1, 3, 224, 224), (1, 3, 128, 96), "CLIP pixels"),
        ((1, 1, 112, 112), (1, 3, 128, 96), "CLIP pixels"),
        ((3, 112, 112), (1, 3, 128, 96), "CLIP pixels"),
        ((1, 3, 112, 112), (1, 3, 128, 128), "Pose-ViT pixels"),
        ((2, 3, 112, 112), (1, 3, 128, 96), "one view of each kind"),
    ],
)
def test_encoder_rejects_wrong_pixel_shapes(
    tiny_encoder: VisionEncoder, clip_shape: tuple, pose_shape: tuple, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        tiny_encoder(torch.zeros(clip_shape), torch.zeros(pose_shape))


def test_encoder_rejects_mismatched_projector() -> None:
    with pytest.raises(ValueError, match="projector input_size"):
        VisionEncoder(TINY.clip, TINY.pose_vit, ProjectorConfig(input_size=100, hidden_size=8, output_size=8))


def test_7b_parameter_counts_on_meta_device() -> None:
    config = get_preset("unipose-7b")
    with torch.device("meta"):
        encoder = VisionEncoder.from_config(config)
    # CLIP ViT-L/14-336 vision: class 1024 + patch 3*14*14*1024 (no bias) + positions 577*1024 + pre-LN 2*1024
    # + 24 layers * (q,k,v,out 4*(1024*1024+1024) + fc1 1024*4096+4096 + fc2 4096*1024+1024 + 2 LN 4*1024)
    # + post-LN 2*1024 = 303,507,456.
    clip_layer = 4 * (1024 * 1024 + 1024) + (1024 * 4096 + 4096) + (4096 * 1024 + 1024) + 4 * 1024
    clip_total = 1024 + 3 * 14 * 14 * 1024 + 577 * 1024 + 2 * 1024 + 24 * clip_layer + 2 * 1024
    assert clip_total == 303_507_456
    assert count_parameters(encoder.clip) == clip_total
    # ViT-H/16: patch conv 1280*3*16*16+1280 + pos 193*1280 + 32 blocks * (qkv 1280*3840+3840 + proj 1280^2+1280
    # + fc1 1280*5120+5120 + fc2 5120*1280+1280 + 2 LN 4*1280) + last LN 2*1280 = 630,912,000.
    block = (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + (1280 * 5120 + 5120) + (5120 * 1280 + 1280) + 4 * 1280
    pose_total = 1280 * 3 * 16 * 16 + 1280 + 193 * 1280 + 32 * block + 2 * 1280
    assert pose_total == 630_912_000
    assert count_parameters(encoder.pose_vit) == pose_total
    projector_total = 2304 * 4096 + 4096 + 4096 * 4096 + 4096
    assert projector_total == 26_222_592
    assert count_parameters(encoder.projector) == projector_total


def test_encoder_in_bfloat16_accepts_float32_pixels(tiny_encoder: VisionEncoder) -> None:
    clip_pixels, pose_pixels = torch.randn(1, 3, 112, 112), torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        reference = tiny_encoder(clip_pixels, pose_pixels)
        half = VisionEncoder.from_config(TINY).eval()
        half.load_state_dict(tiny_encoder.state_dict())
        out = half.to(torch.bfloat16)(clip_pixels, pose_pixels)
    assert out.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; through 8 residual blocks the error stays a small share of the scale.
    assert float((out.float() - reference).abs().max()) < 0.1 * float(reference.abs().max())
