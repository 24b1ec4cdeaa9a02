"""BVH export and import: round trips, an independent parser's joint positions, and typed errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import Tensor

from unipose_sdk.body.bvh import CHANNEL_ORDERS, euler_to_matrix, matrix_to_euler, read_bvh, write_bvh
from unipose_sdk.body.examples import example_pose_names, load_example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.rotations import axis_angle_to_matrix
from unipose_sdk.body.skeleton import JOINT_NAMES, REST_OFFSETS_M, forward_kinematics
from unipose_sdk.errors import InvalidInputError, PoseFormatError


def _example_poses() -> Pose:
    return Pose.cat([load_example_pose(name) for name in example_pose_names()])


def _random_poses(n: int, seed: int) -> Pose:
    generator = torch.Generator().manual_seed(seed)
    return Pose.from_axis_angle(torch.randn(n, 66, generator=generator, dtype=torch.float64) * 1.2)


def _angle_between_rad(a: Tensor, b: Tensor) -> Tensor:
    relative = a.double().transpose(-1, -2) @ b.double()
    cos = (relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    sin_vector = torch.stack([relative[..., 2, 1] - relative[..., 1, 2], relative[..., 0, 2] - relative[..., 2, 0],
                              relative[..., 1, 0] - relative[..., 0, 1]], dim=-1) / 2
    return torch.atan2(torch.linalg.vector_norm(sin_vector, dim=-1), cos)  # accurate near 0, unlike arccos


def _sdk_joints_m(pose: Pose, transl_m: np.ndarray | None = None) -> np.ndarray:
    joints, _ = forward_kinematics(pose.rotmat.double())
    joints = joints.numpy()
    return joints if transl_m is None else joints + transl_m[:, None, :]


def test_six_example_poses_exist():
    assert len(example_pose_names()) == 6


@pytest.mark.parametrize("order", CHANNEL_ORDERS)
def test_euler_conversion_inverts_for_every_channel_order(order):
    generator = torch.Generator().manual_seed(1)
    rotmat = axis_angle_to_matrix(torch.randn(16, 22, 3, generator=generator, dtype=torch.float64) * 1.2).numpy()
    back = euler_to_matrix(matrix_to_euler(rotmat, order), order)
    assert np.abs(back - rotmat).max() < 1e-12


@pytest.mark.parametrize("order", CHANNEL_ORDERS)
def test_euler_conversion_at_gimbal_lock(order):
    angles = np.array([[0.3, np.pi / 2, -0.7], [1.1, -np.pi / 2, 0.4]])
    rotmat = euler_to_matrix(angles, order)
    assert np.abs(euler_to_matrix(matrix_to_euler(rotmat, order), order) - rotmat).max() < 1e-7


@pytest.mark.parametrize("units", ["m", "cm"])
@pytest.mark.parametrize("order", ["ZXY", "XYZ", "YZX"])
def test_round_trip_examples_and_random(tmp_path, units, order):
    pose = Pose.cat([_example_poses(), _random_poses(20, 2)])
    transl = np.random.default_rng(3).normal(size=(len(pose), 3))
    path = write_bvh(pose, tmp_path / "clip.bvh", transl_m=transl, units=units, channel_order=order)
    clip = read_bvh(path)
    assert clip.rotmat.shape == (len(pose), 22, 3, 3)
    assert float(_angle_between_rad(Pose.from_rotmat(clip.rotmat).rotmat, pose.rotmat).max()) < 1e-5
    np.testing.assert_allclose(clip.transl_m, transl, atol=1e-8)
    np.testing.assert_allclose(clip.offsets_m, REST_OFFSETS_M.numpy(), atol=1e-9)
    assert clip.frame_time_s == pytest.approx(1 / 30)


def test_file_declares_channel_order_units_and_side_names(tmp_path):
    path = write_bvh(Pose.identity(1), tmp_path / "t.bvh", units="cm", channel_order="yxz")
    text = path.read_text()
    assert "CHANNELS 6 Xposition Yposition Zposition Yrotation Xrotation Zrotation" in text
    assert "JOINT left_knee" in text and "JOINT right_knee" in text
    # the left knee's offset in centimetres
    assert "OFFSET 0.500000000 -40.000000000 0.500000000" in text


@pytest.mark.parametrize("units", ["m", "cm"])
def test_independent_parser_positions_equal_sdk_fk(tmp_path, units):
    """bvhio (a separate BVH implementation) computes world joint positions from our file."""
    bvhio = pytest.importorskip("bvhio")
    pose = Pose.cat([_example_poses(), _random_poses(6, 4)])
    transl = np.random.default_rng(5).normal(size=(len(pose), 3))
    path = write_bvh(pose, tmp_path / "clip.bvh", transl_m=transl, units=units)
    expected = _sdk_joints_m(pose, transl) * (100.0 if units == "cm" else 1.0)
    root = bvhio.readAsHierarchy(str(path))
    by_name = {joint.Name: joint for joint, _, _ in root.layout()}
    assert set(JOINT_NAMES) <= set(by_name)
    worst = 0.0
    for frame in range(len(pose)):
        root.loadPose(frame)
        for j, name in enumerate(JOINT_NAMES):
            found = np.array(list(by_name[name].PositionWorld), dtype=np.float64)
            worst = max(worst, float(np.abs(found - expected[frame, j]).max()))
    # bvhio works in float32; 1e-6 m of a ~1 m body (or 1e-4 cm of 100 cm) is that precision
    assert worst < (1e-4 if units == "cm" else 1e-6)


def test_own_fk_over_parsed_file(tmp_path):
    """A small FK over the file's text (written here, not the module's reader) equals the SDK FK."""
    pose = _random_poses(5, 6)
    path = write_bvh(pose, tmp_path / "clip.bvh", channel_order="XZY")
    tokens = path.read_text().split()
    names, parents, offsets, stack, pending = [], [], [], [], None
    i = 0
    while tokens[i] != "MOTION":
        if tokens[i] in ("ROOT", "JOINT"):
            pending = tokens[i + 1]
        elif tokens[i] == "{":
            if pending is not None:
                names.append(pending)
                parents.append(stack[-1] if stack else -1)
                stack.append(len(names) - 1)
            else:
                stack.append(None)
            pending = None
        elif tokens[i] == "}":
            stack.pop()
        elif tokens[i] == "OFFSET" and stack and stack[-1] is not None and len(offsets) < len(names):
            offsets.append([float(v) for v in tokens[i + 1:i + 4]])
        i += 1
    frames = np.array(tokens[i + 6:], dtype=np.float64).reshape(5, -1)

    def axis(name, deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        return {"X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "Y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
                "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[name]

    expected = _sdk_joints_m(pose)
    for f in range(5):
        values, world_r, world_p = list(frames[f]), {}, {}
        position = np.array(values[:3])
        values = values[3:]
        for n, name in enumerate(names):
            x, z, y = values[3 * n:3 * n + 3]
            local = axis("X", x) @ axis("Z", z) @ axis("Y", y)
            if parents[n] < 0:
                world_r[n], world_p[n] = local, position + np.array(offsets[n])
            else:
                world_p[n] = world_p[parents[n]] + world_r[parents[n]] @ np.array(offsets[n])
                world_r[n] = world_r[parents[n]] @ local
            assert np.abs(world_p[n] - expected[f, JOINT_NAMES.index(name)]).max() < 1e-6


def test_wrong_hierarchy_is_a_typed_error(tmp_path):
    path = write_bvh(Pose.identity(2), tmp_path / "t.bvh")
    renamed = tmp_path / "renamed.bvh"
    renamed.write_text(path.read_text().replace("left_knee", "LeftKnee"))
    with pytest.raises(PoseFormatError, match="LeftKnee"):
        read_bvh(renamed)
    moved = tmp_path / "moved.bvh"
    text = path.read_text()
    moved.write_text(text.replace("Frames: 2", "Frames: 3"))
    with pytest.raises(PoseFormatError, match="declaring 3 frames"):
        read_bvh(moved)
    garbage = tmp_path / "garbage.bvh"
    garbage.write_text("hello")
    with pytest.raises(PoseFormatError, match="HIERARCHY"):
        read_bvh(garbage)


def test_bad_arguments_are_typed_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="units"):
        write_bvh(Pose.identity(1), tmp_path / "a.bvh", units="mm")
    with pytest.raises(InvalidInputError, match="channel_order"):
        write_bvh(Pose.identity(1), tmp_path / "a.bvh", channel_order="XXY")
    with pytest.raises(InvalidInputError, match=r"\[B, 22, 3, 3\]"):
        write_bvh(np.zeros((1, 21, 3, 3)), tmp_path / "a.bvh")
    with pytest.raises(InvalidInputError, match="transl_m"):
        write_bvh(Pose.identity(2), tmp_path / "a.bvh", transl_m=np.zeros((3, 3)))
    assert not (tmp_path / "a.bvh").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.bvh"
    os.mkfifo(fifo)
    with pytest.raises(PoseFormatError):
        read_bvh(fifo)
