"""The 22-joint SMPL tree, the built-in rest skeleton and forward kinematics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from unipose_sdk.body import rotations as R
from unipose_sdk.body.skeleton import (
    JOINT_INDEX,
    JOINT_NAMES,
    NUM_JOINTS,
    PARENTS,
    REST_OFFSETS_M,
    forward_kinematics,
    mirror_joint_index,
    rest_joints_m,
)

# SMPL's kintree for the first 22 joints (the official joint order); any change breaks the released weights.
SMPL_PARENTS_22 = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]


def _identity(batch: int = 1) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64).expand(batch, NUM_JOINTS, 3, 3).clone()


def test_names_and_parents_follow_smpl() -> None:
    assert NUM_JOINTS == 22 and len(JOINT_NAMES) == 22 and len(set(JOINT_NAMES)) == 22
    assert list(PARENTS) == SMPL_PARENTS_22
    assert JOINT_NAMES[0] == "pelvis" and JOINT_NAMES[15] == "head"
    assert JOINT_NAMES[20:] == ("left_wrist", "right_wrist")
    assert all(PARENTS[j] < j for j in range(1, NUM_JOINTS)), "parents come first (FK relies on it)"
    assert all(JOINT_INDEX[n] == i for i, n in enumerate(JOINT_NAMES))
    # every limb's parent is on the same side (or the centre)
    for j, name in enumerate(JOINT_NAMES):
        parent = JOINT_NAMES[PARENTS[j]] if j else ""
        for side in ("left_", "right_"):
            if name.startswith(side) and parent.startswith(("left_", "right_")):
                assert parent.startswith(side), (name, parent)


def test_mirror_index_pairs_left_and_right() -> None:
    assert mirror_joint_index(JOINT_INDEX["left_wrist"]) == JOINT_INDEX["right_wrist"]
    assert mirror_joint_index(JOINT_INDEX["right_knee"]) == JOINT_INDEX["left_knee"]
    assert mirror_joint_index(JOINT_INDEX["head"]) == JOINT_INDEX["head"]
    assert sorted(mirror_joint_index(j) for j in range(NUM_JOINTS)) == list(range(NUM_JOINTS))


def test_rest_pose_proportions_are_human() -> None:
    joints = rest_joints_m()
    assert joints.shape == (22, 3) and joints.dtype == torch.float64
    assert torch.equal(joints[0], torch.zeros(3))
    y = joints[:, 1]
    head, feet = y[JOINT_INDEX["head"]], y[[JOINT_INDEX["left_foot"], JOINT_INDEX["right_foot"]]].min()
    # joint-to-joint span; stature adds ~0.1 m of skull above the head joint and the sole below the foot joint
    stature_m = float(head - feet) + 0.12
    assert 1.6 <= stature_m <= 1.8, stature_m
    # upright: head above neck above spine above pelvis above knees above ankles
    order = ["head", "neck", "spine3", "spine2", "spine1", "pelvis", "left_knee", "left_ankle"]
    assert all(y[JOINT_INDEX[a]] > y[JOINT_INDEX[b]] for a, b in itertools.pairwise(order))
    # T-pose: the arms are horizontal, wrists far out, left arm on +x
    lw, rw = joints[JOINT_INDEX["left_wrist"]], joints[JOINT_INDEX["right_wrist"]]
    assert lw[0] > 0.6 and rw[0] < -0.6
    assert abs(float(lw[1] - joints[JOINT_INDEX["left_shoulder"], 1])) < 0.02
    # the feet point forward (+z)
    assert joints[JOINT_INDEX["left_foot"], 2] > joints[JOINT_INDEX["left_ankle"], 2] + 0.05
    # plausible segment lengths (metres)
    thigh = torch.linalg.norm(joints[JOINT_INDEX["left_knee"]] - joints[JOINT_INDEX["left_hip"]])
    upper_arm = torch.linalg.norm(joints[JOINT_INDEX["left_elbow"]] - joints[JOINT_INDEX["left_shoulder"]])
    assert 0.35 < thigh < 0.45 and 0.22 < upper_arm < 0.32


def test_rest_pose_is_mirror_symmetric() -> None:
    joints = rest_joints_m()
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    mirrored = joints[[mirror_joint_index(j) for j in range(NUM_JOINTS)]] * flip
    torch.testing.assert_close(mirrored, joints, atol=1e-12, rtol=0)
    for j, name in enumerate(JOINT_NAMES):
        if name.startswith("left_"):
            assert joints[j, 0] > 0, name  # +x is the body's left


def test_fk_identity_gives_the_rest_joints() -> None:
    joints, global_rot = forward_kinematics(_identity(3))
    assert joints.shape == (3, 22, 3) and global_rot.shape == (3, 22, 3, 3)
    torch.testing.assert_close(joints, rest_joints_m().expand(3, 22, 3))
    torch.testing.assert_close(global_rot, _identity(3))


def test_fk_left_elbow_bent_90_degrees() -> None:
    """Bending the left elbow 90 deg about +y (a rotation that takes +x to -z) swings the forearm backwards;
    about -y it swings forward, as a T-posed person bends the forearm to point ahead."""
    rot = _identity()
    rot[0, JOINT_INDEX["left_elbow"]] = R.axis_angle_to_matrix(torch.tensor([0.0, -math.pi / 2, 0.0],
                                                                            dtype=torch.float64))
    joints, _ = forward_kinematics(rot)
    rest = rest_joints_m()
    elbow, wrist = JOINT_INDEX["left_elbow"], JOINT_INDEX["left_wrist"]
    torch.testing.assert_close(joints[0, :wrist], rest[:wrist])  # nothing before the wrist moves
    torch.testing.assert_close(joints[0, wrist + 1:], rest[wrist + 1:])
    ox, oy, oz = REST_OFFSETS_M[wrist].tolist()
    # R_y(-90deg) maps (x, y, z) to (-z, y, x)
    expected = rest[elbow] + torch.tensor([-oz, oy, ox], dtype=torch.float64)
    torch.testing.assert_close(joints[0, wrist], expected)
    assert joints[0, wrist, 2] > rest[elbow, 2] + 0.2  # forearm points forward


def test_fk_global_orientation_and_translation() -> None:
    """A root rotation of 180 deg about y turns the body around: its left hand ends on -x; transl shifts all."""
    rot = _identity()
    rot[0, 0] = R.axis_angle_to_matrix(torch.tensor([0.0, math.pi, 0.0], dtype=torch.float64))
    transl = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    joints, global_rot = forward_kinematics(rot, transl_m=transl)
    rest = rest_joints_m()
    expected = rest * torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64) + transl
    torch.testing.assert_close(joints[0], expected)
    torch.testing.assert_close(global_rot[0, 5], rot[0, 0])  # children inherit the root rotation


def test_bone_lengths_preserved_under_random_rotations() -> None:
    gen = torch.Generator().manual_seed(0)
    rot = R.axis_angle_to_matrix(torch.randn(16, 22, 3, generator=gen, dtype=torch.float64) * 1.5)
    joints, global_rot = forward_kinematics(rot)
    parents = torch.tensor(PARENTS[1:])
    bones = torch.linalg.norm(joints[:, 1:] - joints[:, parents], dim=-1)
    torch.testing.assert_close(bones, torch.linalg.norm(REST_OFFSETS_M[1:], dim=-1).expand(16, 21))
    # global rotations stay rotations and compose parent @ local
    assert torch.all(R.rotation_matrix_error(global_rot) < 1e-10)
    torch.testing.assert_close(global_rot[:, 4], global_rot[:, 1] @ rot[:, 4])


def test_fk_with_custom_and_batched_offsets_and_float32() -> None:
    offsets = REST_OFFSETS_M * 2
    joints, _ = forward_kinematics(_identity(2), offsets_m=offsets)
    torch.testing.assert_close(joints, 2 * rest_joints_m().expand(2, 22, 3))
    batched = torch.stack([REST_OFFSETS_M, 3 * REST_OFFSETS_M])
    joints, _ = forward_kinematics(_identity(2), offsets_m=batched)
    torch.testing.assert_close(joints[1], 3 * rest_joints_m())
    joints32, _ = forward_kinematics(_identity(2).float())
    assert joints32.dtype == torch.float32


@pytest.mark.parametrize("shape", [(22, 3, 3), (1, 21, 3, 3), (1, 22, 3), (1, 22, 9)])
def test_fk_rejects_wrong_shapes(shape) -> None:
    with pytest.raises(ValueError, match=r"\[B, 22, 3, 3\]"):
        forward_kinematics(torch.zeros(shape))


def test_rest_offsets_are_not_mutated_by_fk() -> None:
    before = REST_OFFSETS_M.clone()
    forward_kinematics(_identity())
    assert torch.equal(before, REST_OFFSETS_M)
    assert np.isclose(float(torch.linalg.norm(REST_OFFSETS_M[JOINT_INDEX["left_knee"]])), 0.4, atol=0.01)
