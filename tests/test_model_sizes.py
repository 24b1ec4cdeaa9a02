"""UniPoseModel: exact parameter counts of the 7B configuration (meta device), splicing image embeddings."""

from __future__ import annotations

import pytest
import torch

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel, splice_image_embeds
from unipose_sdk.text.prompts import PromptBuilder, PromptInputs
from unipose_sdk.text.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def model_7b() -> UniPoseModel:
    return UniPoseModel.from_config(get_preset("unipose-7b"), device="meta")


def test_7b_parameter_counts(model_7b: UniPoseModel) -> None:
    counts = model_7b.parameter_counts()
    # LLM: embed + lm_head 2 * 34132 * 4096 = 279_609_344; per layer q/o 2 * 4096^2 + k/v 2 * 4096 * 1024
    # = 41_943_040, SwiGLU 3 * 4096 * 14336 = 176_160_768, two RMSNorms 8_192 -> 218_112_000; x32 layers
    # = 6_979_584_000; final norm 4_096.  Total 7_259_197_440 (Mistral-7B's 7_241_732_096 at 32000 ids
    # + 2 * 2132 * 4096 for UniPose's added rows).
    assert counts["llm"] == 279_609_344 + 32 * 218_112_000 + 4_096 == 7_259_197_440
    # Projector: 2304 * 4096 + 4096 + 4096 * 4096 + 4096.
    assert counts["projector"] == 2304 * 4096 + 4096 + 4096 * 4096 + 4096 == 26_222_592
    # Pose-ViT (ViT-H/16 on 256x192): patch conv 1280 * 3 * 16 * 16 + 1280 = 984_320; pos_embed (1 + 16 * 12) * 1280
    # = 247_040; per block 2 LayerNorms 5_120 + qkv 1280 * 3840 + 3840 + proj 1280^2 + 1280 + fc1 1280 * 5120 + 5120
    # + fc2 5120 * 1280 + 1280 = 19_677_440, x32 = 629_678_080; last_norm 2_560.
    assert counts["pose_vit"] == 984_320 + 247_040 + 32 * 19_677_440 + 2_560 == 630_912_000
    # CLIP ViT-L/14 at 336: class embedding 1024 + patch conv 1024 * 3 * 14 * 14 (no bias) 602_112 + positions
    # 577 * 1024 = 590_848; pre/post LayerNorm 2 * 2048; per layer 2 LayerNorms 4096 + q/k/v/o 4 * (1024^2 + 1024)
    # + fc1 1024 * 4096 + 4096 + fc2 4096 * 1024 + 1024 = 12_596_224, x24 = 302_309_376.
    assert counts["clip"] == 1024 + 602_112 + 590_848 + 2 * 2048 + 24 * 12_596_224 == 303_507_456


def test_7b_shapes_and_layout(model_7b: UniPoseModel) -> None:
    sd = model_7b.state_dict()
    assert sd["llm.model.embed_tokens.weight"].shape == (34132, 4096)
    assert sd["llm.lm_head.weight"].shape == (34132, 4096)
    assert sd["llm.model.layers.31.self_attn.k_proj.weight"].shape == (1024, 4096)
    assert sd["vision.projector.0.weight"].shape == (4096, 2304)
    assert sd["vision.projector.2.weight"].shape == (4096, 4096)
    assert sd["vision.pose_vit.pos_embed"].shape == (1, 193, 1280)
    assert sd["vision.clip.vision_model.embeddings.position_embedding.weight"].shape == (577, 1024)
    assert sd["pose_tokenizer.quantizer.codebook"].shape == (2048, 256)
    assert all(t.is_meta for t in sd.values())
    assert model_7b.image_tokens == 576


def _inputs_embeds(model: UniPoseModel, batch: PromptInputs, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
    return model.build_inputs_embeds(batch.input_ids, image_embeds, *batch.image_places, batch.attention_mask)


def test_build_inputs_embeds_splices_images_in_order() -> None:
    config = get_preset("unipose-tiny")
    model = UniPoseModel.from_config(config).eval()
    tokenizer = build_tiny_tokenizer(["Output the difference between image and image."] * 5, 1024)
    builder = PromptBuilder(tokenizer, model.image_tokens, config.max_text_tokens)
    rows = [builder.build_task("text2pose", caption="the man kneels"), builder.build_task("image_difference"),
            builder.build_task("image2pose")]
    batch = builder.batch(rows)
    n, width = model.image_tokens, config.llm.hidden_size
    clip_pixels = torch.randn(3, 3, config.clip.image_size, config.clip.image_size)
    pose_pixels = torch.randn(3, 3, config.pose_vit.image_height, config.pose_vit.image_width)
    with torch.no_grad():
        image_embeds = model.encode_images(clip_pixels, pose_pixels)
        assert image_embeds.shape == (3, n, width)
        embeds = _inputs_embeds(model, batch, image_embeds)
        token_embeds = model.llm.embed(batch.input_ids)
    assert embeds.shape == (3, batch.input_ids.shape[1], width)
    # image k of the batch (row by row, prompt order) sits in the k-th image's slots
    placed = [(1, batch.image_starts[1][0]), (1, batch.image_starts[1][1]), (2, batch.image_starts[2][0])]
    for k, (row, start) in enumerate(placed):
        assert torch.equal(embeds[row, start:start + n], image_embeds[k])
    text = batch.attention_mask & ~batch.image_mask
    assert torch.equal(embeds[text], token_embeds[text])
    assert not embeds[~batch.attention_mask].any()  # left padding is zero
    with pytest.raises(InvalidInputError, match="one image per <image>"):
        _inputs_embeds(model, batch, image_embeds[:2])
    text_only = builder.batch(rows[:1])
    assert _inputs_embeds(model, text_only).shape[0] == 1
    with pytest.raises(InvalidInputError, match="without <image>"):
        _inputs_embeds(model, text_only, image_embeds)


def test_splice_image_embeds_places_each_image_and_keeps_gradients() -> None:
    """The one splice (inference rows, batches and training): image k fills row rows[k] from starts[k], everything
    else is the token embedding, gradients reach both inputs, and bad slots are refused before any copy."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 12, 4, generator=generator, requires_grad=True)
    images = torch.randn(3, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    rows, starts = [0, 1, 1], [2, 0, 7]
    out = splice_image_embeds(tokens, images, rows, starts)
    expected = tokens.detach().clone()
    for k, (row, start) in enumerate(zip(rows, starts)):
        expected[row, start:start + 3] = images[k].detach().float()  # cast to the tokens' dtype
    assert out.dtype == tokens.dtype and torch.equal(out.detach(), expected)
    out.sum().backward()
    assert images.grad is not None and torch.equal(images.grad, torch.ones_like(images))
    assert int((tokens.grad == 0).all(-1).sum()) == 9  # the image slots take no gradient to the tokens
    assert splice_image_embeds(tokens, None, [], []) is tokens  # no image slots: the tokens as they are
    with pytest.raises(InvalidInputError, match=r"image slots starting at \[10\]"):
        splice_image_embeds(tokens, images[:1], [0], [10])
    with pytest.raises(InvalidInputError, match="one image per <image>"):
        splice_image_embeds(tokens, images[:2], rows, starts)
