"""The text-pose matcher of unipose-tiny v2: how well a pose shows a sentence, used to choose among a Generator's
candidate decodings.

Expected-code decoding (guided or not, at one code temperature) gives one pose per prompt; which setting gives the
pose that shows the prompt differs from prompt to prompt. The Generator therefore decodes the prompt's query
logits at a few settings (`UniPoseConfig.text_to_pose_candidates`) and keeps the candidate this matcher scores
highest. The matcher is a contrastive pair of small MLPs, trained on the data engine's (pose, caption) pairs
(`training.matcher`):

    pose   22 joints (metres, +y up) -> `joint_features` -> MLP -> unit vector [E]
    text   the frozen sentence encoder's unit embedding [H] (models/text_encoder.py) -> MLP -> unit vector [E]
    score  their cosine

    keys pose_matcher.pose.*, pose_matcher.text.*, pose_matcher.feature_mean / feature_std (the training data's
    feature statistics), pose_matcher.logit_scale (the contrastive temperature; unused at inference)

Features (what the data engine's facts are measured in, `data.facts`): every joint about the pelvis in the heading
frame (the hip line made horizontal, world up) and in the torso frame (the shoulder line, pelvis to neck), and the
pelvis height above the lowest joint. They do not change with where the body stands or which way it faces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipose_sdk.body.skeleton import JOINT_INDEX, NUM_JOINTS
from unipose_sdk.models.config import PoseMatcherConfig

_PELVIS, _NECK = JOINT_INDEX["pelvis"], JOINT_INDEX["neck"]
_HIPS = (JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"])
_SHOULDERS = (JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"])
FEATURE_SIZE = 2 * NUM_JOINTS * 3 + 1  # 133


def _frame(left: Tensor, up: Tensor) -> Tensor:
    """[B, 3, 3] rows (left, up, forward), orthonormal, `up` kept exactly (data.facts.orthonormal_frame, batched)."""
    up = F.normalize(up, dim=-1)
    left = F.normalize(left - (left * up).sum(-1, keepdim=True) * up, dim=-1)
    return torch.stack([left, up, torch.linalg.cross(left, up, dim=-1)], dim=-2)


def joint_features(joints_m: Tensor) -> Tensor:
    """[B, 22, 3] joints (metres, +y up) -> [B, 133] float32: joints about the pelvis in the heading frame and in the
    torso frame, then the pelvis height above the lowest joint."""
    joints = joints_m.float()
    about_pelvis = joints - joints[:, _PELVIS:_PELVIS + 1]
    world_up = torch.zeros_like(joints[:, 0])
    world_up[:, 1] = 1.0
    heading = _frame(joints[:, _HIPS[0]] - joints[:, _HIPS[1]], world_up)
    torso = _frame(joints[:, _SHOULDERS[0]] - joints[:, _SHOULDERS[1]], joints[:, _NECK] - joints[:, _PELVIS])
    in_heading = torch.einsum("bij,bkj->bki", heading, about_pelvis).flatten(1)
    in_torso = torch.einsum("bij,bkj->bki", torso, about_pelvis).flatten(1)
    pelvis_height = joints[:, _PELVIS, 1:2] - joints[:, :, 1].amin(dim=1, keepdim=True)
    return torch.cat([in_heading, in_torso, pelvis_height], dim=1)


class PoseMatcher(nn.Module):
    def __init__(self, config: PoseMatcherConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.register_buffer("feature_mean", torch.zeros(FEATURE_SIZE))
        self.register_buffer("feature_std", torch.ones(FEATURE_SIZE))
        self.pose = nn.Sequential(
            nn.Linear(FEATURE_SIZE, width), nn.GELU(), nn.LayerNorm(width),
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width),
            nn.Linear(width, config.embed_size))
        self.text = nn.Sequential(
            nn.Linear(config.text_size, width), nn.GELU(), nn.LayerNorm(width),
            nn.Linear(width, config.embed_size))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def pose_embedding(self, joints_m: Tensor) -> Tensor:
        """[B, 22, 3] joints -> [B, E] unit vectors (float32)."""
        features = (joint_features(joints_m) - self.feature_mean) / self.feature_std
        return F.normalize(self.pose(features.to(self.feature_mean.dtype)).float(), dim=-1)

    def text_embedding(self, sentence: Tensor) -> Tensor:
        """[B, H] sentence-encoder embeddings -> [B, E] unit vectors (float32)."""
        return F.normalize(self.text(sentence.to(self.feature_mean.dtype)).float(), dim=-1)

    def forward(self, joints_m: Tensor, sentence: Tensor) -> Tensor:
        """[N, 22, 3] joints and [N, H] sentence embeddings, row by row -> [N] cosine scores."""
        return (self.pose_embedding(joints_m) * self.text_embedding(sentence)).sum(-1)
