"""The 22-joint SMPL body tree UniPose uses, a built-in rest skeleton, and forward kinematics.

Joint order and parents are SMPL's (and SMPL-H / SMPL-X's first 22 joints): joint 0 is the pelvis, whose rotation
is the global orientation; joints 1..21 carry `body_pose`. Coordinates follow SMPL: metres, +y up, +x towards
the body's LEFT side, +z forward (the direction the person faces in the rest pose).

The rest skeleton is this project's own: bone offsets chosen from adult anthropometric proportions for a body
of about 1.70 m (thigh 0.40 m, shank 0.42 m, upper arm 0.265 m, forearm 0.255 m, shoulder width ~0.40 m,
hip width 0.17 m). It is NOT derived from any licensed body-model file; for exact SMPL joints use the optional
adapter in `unipose_sdk.body.smpl_adapter` with your own model files.
"""

from __future__ import annotations

import torch
from torch import Tensor

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)
NUM_JOINTS = len(JOINT_NAMES)  # 22
PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

# Bone offset of each joint from its parent in the rest pose, metres. Left side has +x; the right side mirrors it.
_LEFT_OFFSETS_M = {
    "left_hip": (0.085, -0.080, -0.010),
    "left_knee": (0.005, -0.400, 0.005),
    "left_ankle": (-0.005, -0.420, -0.035),
    "left_foot": (0.020, -0.060, 0.130),
    "left_collar": (0.075, 0.120, -0.020),
    "left_shoulder": (0.120, 0.035, -0.010),
    "left_elbow": (0.265, 0.000, -0.015),
    "left_wrist": (0.255, 0.000, 0.005),
}
_CENTRE_OFFSETS_M = {
    "pelvis": (0.0, 0.0, 0.0),
    "spine1": (0.0, 0.110, -0.020),
    "spine2": (0.0, 0.135, 0.015),
    "spine3": (0.0, 0.055, 0.005),
    "neck": (0.0, 0.215, -0.030),
    "head": (0.0, 0.090, 0.050),
}


def _rest_offsets() -> Tensor:
    offsets = torch.zeros(NUM_JOINTS, 3, dtype=torch.float64)
    for name, xyz in _CENTRE_OFFSETS_M.items():
        offsets[JOINT_INDEX[name]] = torch.tensor(xyz, dtype=torch.float64)
    for name, (x, y, z) in _LEFT_OFFSETS_M.items():
        offsets[JOINT_INDEX[name]] = torch.tensor((x, y, z), dtype=torch.float64)
        offsets[JOINT_INDEX["right" + name[4:]]] = torch.tensor((-x, y, z), dtype=torch.float64)
    return offsets


REST_OFFSETS_M: Tensor = _rest_offsets()  # [22, 3] float64, offset of each joint from its parent


def rest_joints_m() -> Tensor:
    """[22, 3] joint positions of the rest (T-) pose, metres, pelvis at the origin."""
    joints = torch.zeros_like(REST_OFFSETS_M)
    for j in range(1, NUM_JOINTS):
        joints[j] = joints[PARENTS[j]] + REST_OFFSETS_M[j]
    return joints


def mirror_joint_index(j: int) -> int:
    """Index of the joint on the other side of the body (itself for centre joints)."""
    name = JOINT_NAMES[j]
    if name.startswith("left_"):
        return JOINT_INDEX["right_" + name[5:]]
    if name.startswith("right_"):
        return JOINT_INDEX["left_" + name[6:]]
    return j


def forward_kinematics(
    rotmat: Tensor, offsets_m: Tensor | None = None, transl_m: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Local joint rotations -> joint positions and global rotations.

    rotmat: [B, 22, 3, 3] local rotation of each joint relative to its parent (joint 0 = global orientation).
    offsets_m: optional [22, 3] or [B, 22, 3] rest bone offsets (default: the built-in skeleton).
    transl_m: optional [B, 3] root translation.
    Returns (joints_m [B, 22, 3], global_rotmat [B, 22, 3, 3]).
    """
    if rotmat.ndim != 4 or rotmat.shape[1:] != (NUM_JOINTS, 3, 3):
        raise ValueError(f"rotmat must be [B, {NUM_JOINTS}, 3, 3], got {tuple(rotmat.shape)}")
    offsets = REST_OFFSETS_M if offsets_m is None else offsets_m
    offsets = offsets.to(device=rotmat.device, dtype=rotmat.dtype)
    if offsets.ndim == 2:
        offsets = offsets.expand(rotmat.shape[0], NUM_JOINTS, 3)
    global_rot = [rotmat[:, 0]]
    positions = [torch.zeros_like(rotmat[:, 0, :, 0])]
    for j in range(1, NUM_JOINTS):
        parent = PARENTS[j]
        positions.append(positions[parent] + (global_rot[parent] @ offsets[:, j, :, None])[..., 0])
        global_rot.append(global_rot[parent] @ rotmat[:, j])
    joints = torch.stack(positions, dim=1)
    if transl_m is not None:
        joints = joints + transl_m[:, None, :]
    return joints, torch.stack(global_rot, dim=1)
