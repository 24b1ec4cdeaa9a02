"""Stage 2, the vision side of unipose-tiny: pretrain both towers on renders, then serve frozen image features.

Both towers see exactly what they see at inference: each render goes through `preprocess_batch` (the CLIP view
and the Pose-ViT view cut from ONE image, as the task classes do with a user's image).

* Pose-ViT: regression of the 22 joints from its feature map, 2D (the render's pixel positions, normalised) and
  3D (root-relative metres), through a linear head used only here. This is the pose-specific prior the real
  model gets from TokenHMR.
* CLIP-like tower: contrastive (symmetric InfoNCE) against a tiny caption encoder of our own (mean of token
  embeddings of the caption + a linear map), on render / caption pairs with captions drawn fresh every step,
  so its patch tokens carry the facts a caption states. Alone, this objective never left chance level on the
  first CPU run (loss stuck at ln(batch) for 500 steps): with random captions that state a few facts each, the
  signal is too weak for a tower trained from scratch to find the body in the render. So the tower is also
  supervised directly with what the captions are made of: a multi-label head predicts every fact key (kind,
  subject, level) that holds on the pose, and a joint head regresses the root-relative 3D joints. Both are
  cheap, and they make its tokens carry exactly what the image-description task has to put into words.

Both objectives run in the same steps on the same batch (one optimiser, summed losses): the renders and their
preprocessing are shared and the 2 CPU cores are the budget. The heads and the caption encoder are discarded.
A share of the pool's renders (`HELD_OUT_SHARE`) never enters a vision step; the stage records both joint heads'
error on them (`held_out_joint_error_mm`, `held_out_clip_joint_error_mm` in its training.json), the measure of what
the towers learned that the training windows' errors are not. After pretraining the towers are frozen;
`image_features` computes the fused (pre-projector) features of every pool image once, and the projector + LLM
train on them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from unipose_sdk.data.captions import caption as make_caption
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.preprocess import preprocess_batch
from unipose_sdk.text.tokenizer import TextTokenizer
from unipose_sdk.training.loop import SECONDS_PER_VISION_STEP, STAGE_SHARE, run_steps

log = logging.getLogger("unipose_sdk.training")

VISION_SHARE_OF_STAGE2 = 0.5
EMBED_DIM = 128
_CHUNK = 64
# Renders of the pool kept out of the vision steps, on which the joint heads are measured at the end: the heads
# are linear maps of whole feature maps and learn a pool of a few thousand renders by heart (on 6,000 renders the
# Pose-ViT head's training error fell from 192 to 55 mm in 15 minutes while a probe of the features on renders of
# another pool moved from 193 to 186 mm), so only renders never trained on say what the towers carry.
HELD_OUT_SHARE = 0.05
HELD_OUT_MAX = 512


def pool_pixels(model: UniPoseModel, pool: Any) -> tuple[Tensor, Tensor]:
    """Every pool image through the inference preprocessing -> (clip [M, 3, S, S], pose [M, 3, H, W]) float16."""
    config = model.config
    clips, poses = [], []
    for i in range(0, len(pool.images), _CHUNK):
        clip, pose = preprocess_batch(list(pool.images[i:i + _CHUNK]), config.clip, config.pose_vit)
        clips.append(clip.half())
        poses.append(pose.half())
    return torch.cat(clips), torch.cat(poses)


class JointHead(nn.Module):
    """Pose-ViT map [B, C, h, w] -> 22 x (2D + 3D) joints."""

    def __init__(self, channels: int, cells: int, num_joints: int = 22) -> None:
        super().__init__()
        self.num_joints = num_joints
        self.linear = nn.Linear(channels * cells, num_joints * 5)

    def forward(self, feature_map: Tensor) -> tuple[Tensor, Tensor]:
        out = self.linear(feature_map.flatten(1)).view(-1, self.num_joints, 5)
        return out[..., :2], out[..., 2:]


class FactHead(nn.Module):
    """CLIP tokens [B, N, C] -> logits [B, num_keys]: which fact keys hold (mean and max over the tokens)."""

    def __init__(self, channels: int, num_keys: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * channels, num_keys)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(torch.cat([tokens.mean(dim=1), tokens.amax(dim=1)], dim=-1))


def fact_key_targets(pool: Any, pose_of_image: np.ndarray) -> np.ndarray:
    """[num_images, num_keys] float32 0/1: which of the pool's fact keys (sorted) hold on each image's pose; all
    zero for images without one (pose index -1: pair renders, never drawn for these losses)."""
    keys = sorted({f.key for facts in pool.facts for f in facts})
    column = {k: i for i, k in enumerate(keys)}
    targets = np.zeros((len(pose_of_image), len(keys)), np.float32)
    for row, i in enumerate(pose_of_image):
        for f in pool.facts[i] if i >= 0 else ():
            targets[row, column[f.key]] = 1.0
    return targets


class CaptionEncoder(nn.Module):
    """Mean of the caption's token embeddings, then a linear map: enough to say which facts a caption states."""

    def __init__(self, vocab_size: int, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: Tensor, offsets: Tensor) -> Tensor:
        return self.proj(self.embed(ids, offsets))


def contrastive_loss(image_vectors: Tensor, text_vectors: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE: image i belongs with caption i."""
    image_vectors = F.normalize(image_vectors, dim=-1)
    text_vectors = F.normalize(text_vectors, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * image_vectors @ text_vectors.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _pose_index_of_image(pool: Any) -> np.ndarray:
    """For each pool image, the pose whose facts describe it (pair images use B's / A's own facts)."""
    index = np.full(len(pool.images), -1, dtype=np.int64)
    index[pool.image_of_pose] = np.arange(len(pool.image_of_pose))
    return index


def pretrain_vision(model: UniPoseModel, pool: Any, tokenizer: TextTokenizer, settings: Any) -> dict[str, Any]:
    """Pose-ViT joint regression + CLIP-like contrastive training on the pool's pose renders."""
    device = torch.device(settings.device)
    clip_pixels, pose_pixels = pool_pixels(model, pool)
    pose_of_image = _pose_index_of_image(pool)
    usable = np.flatnonzero(pose_of_image >= 0)  # renders of single poses (they have facts and captions)
    usable, held_out = split_held_out(usable, settings.seed)
    config = model.config
    grid_h, grid_w = config.pose_vit.grid_hw
    head = JointHead(config.pose_vit.embed_dim, grid_h * grid_w).to(device)
    clip_joint_head = nn.Linear(config.clip.hidden_size, 3 * 22).to(device)  # on the mean token
    fact_target_of_image = fact_key_targets(pool, pose_of_image)
    fact_head = FactHead(config.clip.hidden_size, fact_target_of_image.shape[1]).to(device)
    caption_encoder = CaptionEncoder(config.vocab.text_vocab_size).to(device)
    image_proj = nn.Linear(config.clip.hidden_size, EMBED_DIM).to(device)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    towers = [model.vision.clip, model.vision.pose_vit]
    for tower in towers:
        tower.train()
    heads = (head, caption_encoder, image_proj, clip_joint_head, fact_head)
    params = [p for m in (*towers, *heads) for p in m.parameters()] + [logit_scale]
    rng = np.random.default_rng([settings.seed, 20])
    size = float(pool.images.shape[1])
    batch_size = max(8, 2 * settings.batch_size)

    def step_fn(step: int) -> tuple[Tensor, dict[str, float]]:
        chosen = usable[rng.choice(len(usable), size=min(batch_size, len(usable)), replace=False)]
        index = torch.from_numpy(chosen)
        pose_map = model.vision.pose_vit(pose_pixels[index].float().to(device))
        pred_2d, pred_3d = head(pose_map)
        target_2d = torch.from_numpy(pool.image_joints_2d[chosen] / size - 0.5).to(device)
        target_3d = torch.from_numpy(pool.image_joints_m[chosen]).to(device)
        regression = F.mse_loss(pred_2d, target_2d) * 10.0 + F.mse_loss(pred_3d, target_3d) * 10.0
        clip_tokens = model.vision.clip(clip_pixels[index].float().to(device))  # [B, N, C]
        image_vectors = image_proj(clip_tokens.mean(dim=1))
        ids, offsets = [], []
        for i in chosen:
            offsets.append(len(ids))
            ids += tokenizer.encode(make_caption(pool.facts[pose_of_image[i]], rng))
        text_vectors = caption_encoder(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))
        contrastive = contrastive_loss(image_vectors, text_vectors, logit_scale)
        fact_logits = fact_head(clip_tokens)
        fact_target = torch.from_numpy(fact_target_of_image[chosen]).to(device)
        facts = F.binary_cross_entropy_with_logits(fact_logits, fact_target)
        clip_3d = clip_joint_head(clip_tokens.mean(dim=1)).view(-1, 22, 3)
        clip_regression = F.mse_loss(clip_3d, target_3d) * 10.0
        with torch.no_grad():
            error_mm = (pred_3d - target_3d).norm(dim=-1).mean().item() * 1000
            clip_error_mm = (clip_3d - target_3d).norm(dim=-1).mean().item() * 1000
            fact_f1 = _f1(fact_logits > 0, fact_target > 0.5)
        loss = regression + contrastive + 10.0 * facts + clip_regression
        return loss, {"regression": regression.item(), "contrastive": contrastive.item(), "facts_bce": facts.item(),
                      "fact_f1": fact_f1, "joint_error_mm": error_mm, "clip_joint_error_mm": clip_error_mm}

    steps, seconds = settings.plan("vision", STAGE_SHARE[2] * VISION_SHARE_OF_STAGE2, SECONDS_PER_VISION_STEP)
    summary = run_steps("stage2-vision", params, steps, 1e-3, seconds, step_fn)
    for tower in towers:
        tower.eval()
    summary.update(held_out_joint_errors(model, head, clip_joint_head, pose_pixels, clip_pixels, pool, held_out))
    log.info("stage2-vision held out: %s", {k: v for k, v in summary.items() if k.startswith("held_out")})
    return summary


def split_held_out(usable: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image indices -> (trained on, held out): HELD_OUT_SHARE of them (at most HELD_OUT_MAX, none of a pool
    too small to spare one), drawn by the run's seed; both sorted."""
    order = np.random.default_rng([seed, 21]).permutation(usable)
    count = min(HELD_OUT_MAX, int(len(usable) * HELD_OUT_SHARE))
    return np.sort(order[count:]), np.sort(order[:count])


@torch.no_grad()
def held_out_joint_errors(model: UniPoseModel, head: JointHead, clip_joint_head: nn.Module, pose_pixels: Tensor,
                          clip_pixels: Tensor, pool: Any, held_out: np.ndarray) -> dict[str, Any]:
    """Mean 3D joint error (mm, root-relative) of both towers' joint heads on the held-out renders; None for
    none."""
    if not len(held_out):
        return {"held_out_images": 0, "held_out_joint_error_mm": None, "held_out_clip_joint_error_mm": None}
    device = next(head.parameters()).device
    pose_errors, clip_errors = [], []
    for i in range(0, len(held_out), _CHUNK):
        index = torch.from_numpy(held_out[i:i + _CHUNK])
        target_3d = torch.from_numpy(pool.image_joints_m[held_out[i:i + _CHUNK]]).to(device)
        _, pred_3d = head(model.vision.pose_vit(pose_pixels[index].float().to(device)))
        clip_3d = clip_joint_head(model.vision.clip(clip_pixels[index].float().to(device)).mean(dim=1))
        pose_errors.append((pred_3d - target_3d).norm(dim=-1).mean(dim=-1))
        clip_errors.append((clip_3d.view(-1, 22, 3) - target_3d).norm(dim=-1).mean(dim=-1))
    return {"held_out_images": int(len(held_out)),
            "held_out_joint_error_mm": round(float(torch.cat(pose_errors).mean()) * 1000, 1),
            "held_out_clip_joint_error_mm": round(float(torch.cat(clip_errors).mean()) * 1000, 1)}


def _f1(predicted: Tensor, truth: Tensor) -> float:
    """Micro F1 of multi-label predictions."""
    hits = float((predicted & truth).sum())
    return 2 * hits / max(1.0, float(predicted.sum()) + float(truth.sum()))


@torch.no_grad()
def image_features(model: UniPoseModel, pool: Any, device: str | torch.device) -> Tensor:
    """Fused (pre-projector) features of every pool image with the frozen towers: [M, N, Cc + Cp] float16."""
    clip_pixels, pose_pixels = pool_pixels(model, pool)
    model.vision.eval()
    out = []
    for i in range(0, len(clip_pixels), _CHUNK):
        fused = model.vision.fused_features(clip_pixels[i:i + _CHUNK].float().to(device),
                                            pose_pixels[i:i + _CHUNK].float().to(device))
        out.append(fused.half().cpu())
    model.vision.requires_grad_(False)
    model.vision.projector.requires_grad_(True)
    return torch.cat(out)
