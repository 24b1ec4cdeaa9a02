"""The Pose type: constructors by layout, conversions, validation errors, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unipose_sdk.body import rotations as R
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_INDEX, rest_joints_m
from unipose_sdk.errors import InvalidInputError, InvalidPoseError


def _random_aa(batch: int, seed: int = 0, scale: float = 0.6) -> np.ndarray:
    """[B, 22, 3] axis-angles with angles well below pi (so axis-angle round trips are unique)."""
    rng = np.random.default_rng(seed)
    aa = rng.normal(size=(batch, 22, 3)) * scale
    norms = np.linalg.norm(aa, axis=-1, keepdims=True)
    return np.where(norms > 3.0, aa / norms * 3.0, aa)


@pytest.fixture
def aa() -> np.ndarray:
    return _random_aa(3)


# ---------------------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("layout", ["B66", "B22x3", "66", "22x3"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_from_axis_angle_layouts(aa, layout, kind) -> None:
    x = {"B66": aa.reshape(3, 66), "B22x3": aa, "66": aa[0].reshape(66), "22x3": aa[0]}[layout]
    x = torch.from_numpy(x) if kind == "torch" else x
    pose = Pose.from_axis_angle(x)
    batch = 3 if layout.startswith("B") else 1
    assert len(pose) == batch and pose.rotmat.shape == (batch, 22, 3, 3) and pose.rotmat.dtype == torch.float32
    np.testing.assert_allclose(pose.rotmat.numpy(), R.axis_angle_to_matrix(aa[:batch]), atol=1e-6)
    np.testing.assert_allclose(pose.axis_angle().numpy(), aa[:batch].reshape(batch, 66), atol=1e-5)
    assert pose.axis_angle().dtype == torch.float32


def test_from_rotmat_6d_and_smpl_agree(aa) -> None:
    mats = R.axis_angle_to_matrix(aa)
    reference = Pose.from_axis_angle(aa)
    assert Pose.from_rotmat(mats).allclose(reference, atol=1e-6)
    assert Pose.from_rotmat(mats[0]).allclose(reference[0], atol=1e-6)  # unbatched (22, 3, 3), the demo layout
    six = R.matrix_to_rotation_6d(mats)
    assert Pose.from_6d(six).allclose(reference, atol=1e-6)
    assert Pose.from_6d(six.reshape(3, 132)).allclose(reference, atol=1e-6)
    assert Pose.from_6d(six[1]).allclose(reference[1], atol=1e-6)
    flat = aa.reshape(3, 66)
    assert Pose.from_smpl(flat[:, :3], flat[:, 3:]).allclose(reference, atol=1e-6)
    assert Pose.from_smpl(flat[:, :3], flat[:, 3:].reshape(3, 21, 3)).allclose(reference, atol=1e-6)
    assert Pose.from_smpl(flat[0, :3], flat[0, 3:]).allclose(reference[0], atol=1e-6)
    assert Pose(torch.from_numpy(mats)).allclose(reference, atol=1e-6)


def test_6d_accepts_unnormalised_network_output(aa) -> None:
    mats = R.axis_angle_to_matrix(aa)
    six = R.matrix_to_rotation_6d(mats) * 3.0 + 0.0
    six[..., 3:] += 0.5 * six[..., :3]  # second row leaning on the first: Gram-Schmidt removes it
    assert Pose.from_6d(six).allclose(Pose.from_rotmat(mats), atol=1e-5)


def test_smpl_full_poses_keep_the_first_22_joints(aa) -> None:
    reference = Pose.from_axis_angle(aa)
    for joints in (24, 52, 55):
        full = np.concatenate([aa, np.full((3, joints - 22, 3), 0.3)], axis=1)
        assert Pose.from_axis_angle(full.reshape(3, -1)).allclose(reference, atol=1e-6)
        assert Pose.from_any(full).allclose(reference, atol=1e-6)
        assert Pose.from_any(R.axis_angle_to_matrix(full)).allclose(reference, atol=1e-6)


@pytest.mark.parametrize("shape_kind", ["aa_flat", "aa", "rotmat", "6d", "6d_flat"])
@pytest.mark.parametrize("batched", [True, False])
def test_from_any_recognises_the_shape(aa, shape_kind, batched) -> None:
    mats = R.axis_angle_to_matrix(aa)
    x = {"aa_flat": aa.reshape(3, 66), "aa": aa, "rotmat": mats, "6d": R.matrix_to_rotation_6d(mats),
         "6d_flat": R.matrix_to_rotation_6d(mats).reshape(3, 132)}[shape_kind]
    x = x if batched else x[0]
    pose = Pose.from_any(torch.from_numpy(x.astype(np.float32)))
    assert pose.allclose(Pose.from_axis_angle(aa if batched else aa[0]), atol=1e-5)


def test_from_any_passes_poses_through_and_reads_dicts_and_files(aa, tmp_path) -> None:
    pose = Pose.from_axis_angle(aa)
    assert Pose.from_any(pose) is pose
    flat = aa.reshape(3, 66)
    assert Pose.from_any({"global_orient": flat[:, :3], "body_pose": flat[:, 3:]}).allclose(pose, atol=1e-6)
    path = tmp_path / "p.npz"
    pose.save(path)
    assert Pose.from_any(path).allclose(pose, atol=1e-5)
    assert Pose.from_any(str(path)).allclose(pose, atol=1e-5)
    assert Pose.from_any([[0.0] * 66]).allclose(Pose.identity())  # nested lists work too


def test_identity_is_the_rest_pose() -> None:
    pose = Pose.identity(2)
    assert len(pose) == 2 and torch.equal(pose.axis_angle(), torch.zeros(2, 66))
    torch.testing.assert_close(pose.joints(), rest_joints_m().float().expand(2, 22, 3))
    assert len(Pose.identity(0)) == 0


# ---------------------------------------------------------------------------------------- views
def test_smpl_views_and_6d_rows(aa) -> None:
    pose = Pose.from_axis_angle(aa)
    flat = aa.reshape(3, 66)
    np.testing.assert_allclose(pose.global_orient_aa.numpy(), flat[:, :3], atol=1e-5)
    np.testing.assert_allclose(pose.body_pose_aa.numpy(), flat[:, 3:], atol=1e-5)
    assert pose.global_orient_aa.shape == (3, 3) and pose.body_pose_aa.shape == (3, 63)
    smpl = pose.to_smpl()
    assert smpl["global_orient"].shape == (3, 3) and smpl["body_pose"].shape == (3, 63)
    six = pose.rotation_6d()
    assert six.shape == (3, 22, 6) and six.dtype == torch.float32
    torch.testing.assert_close(six[..., :3], pose.rotmat[..., 0, :])
    torch.testing.assert_close(six[..., 3:], pose.rotmat[..., 1, :])
    assert pose.numpy().shape == (3, 22, 3, 3) and pose.numpy().dtype == np.float32


def test_joints_match_fk_and_translate() -> None:
    aa = np.zeros((2, 22, 3))
    aa[1, JOINT_INDEX["left_shoulder"]] = [0.0, 0.0, -math.pi / 2]  # T-pose arm down: about -z, +x goes to -y
    pose = Pose.from_axis_angle(aa)
    joints = pose.joints()
    assert joints.shape == (2, 22, 3) and joints.dtype == torch.float32
    shoulder, wrist = JOINT_INDEX["left_shoulder"], JOINT_INDEX["left_wrist"]
    assert joints[1, wrist, 1] < joints[1, shoulder, 1] - 0.45  # the arm hangs down
    assert abs(float(joints[1, wrist, 0] - joints[1, shoulder, 0])) < 0.03
    moved = pose.joints(transl_m=[1.0, 0.0, -2.0])
    torch.testing.assert_close(moved, joints + torch.tensor([1.0, 0.0, -2.0]))
    per_row = pose.joints(transl_m=np.array([[0, 1, 0], [0, 2, 0]], dtype=np.float32))
    torch.testing.assert_close(per_row[:, :, 1] - joints[:, :, 1], torch.tensor([[1.0], [2.0]]).expand(2, 22))


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros(2), np.array([0.0, 0.0, np.nan])])
def test_joints_rejects_bad_translation(bad) -> None:
    with pytest.raises(InvalidPoseError, match="transl_m"):
        Pose.identity(2).joints(transl_m=bad)


# ---------------------------------------------------------------------------------------- batching
def test_len_indexing_slicing_and_iteration(aa) -> None:
    pose = Pose.from_axis_angle(aa)
    assert len(pose) == 3 and pose.batch_size == 3
    assert len(pose[0]) == 1 and pose[-1].allclose(pose[2:3])
    torch.testing.assert_close(pose[1:].rotmat, pose.rotmat[1:])
    torch.testing.assert_close(pose[[2, 0]].rotmat, pose.rotmat[[2, 0]])
    torch.testing.assert_close(pose[np.array([True, False, True])].rotmat, pose.rotmat[[0, 2]])
    torch.testing.assert_close(pose[torch.tensor([1])].rotmat, pose.rotmat[[1]])
    assert len(pose[[]]) == 0
    assert [len(p) for p in pose] == [1, 1, 1]
    with pytest.raises(IndexError, match="out of range"):
        pose[3]
    with pytest.raises(IndexError, match="indexed by"):
        pose["a"]
    with pytest.raises(IndexError, match="dtype"):
        pose[torch.tensor([0.5])]
    assert "batch_size=3" in repr(pose)


def test_cat_and_to(aa) -> None:
    pose = Pose.from_axis_angle(aa)
    both = Pose.cat([pose, pose[0]])
    assert len(both) == 4 and both[3].allclose(pose[0])
    assert Pose.cat(iter([pose])).allclose(pose)
    moved = pose.to("cpu")
    assert moved.device.type == "cpu" and moved.allclose(pose)
    for bad in ([], [pose, aa]):
        with pytest.raises(InvalidPoseError, match="non-empty list of Pose"):
            Pose.cat(bad)


def test_pose_is_not_aliased_to_the_input(aa) -> None:
    mats = torch.from_numpy(R.axis_angle_to_matrix(aa)).float()
    pose = Pose.from_rotmat(mats)
    mats.zero_()
    assert float(pose.rotmat.abs().sum()) > 0


# ---------------------------------------------------------------------------------------- validation errors
@pytest.mark.parametrize(
    "constructor, shape",
    [
        (Pose.from_axis_angle, (3, 65)),
        (Pose.from_axis_angle, (3, 21, 3)),
        (Pose.from_axis_angle, (2, 3, 22, 3)),
        (Pose.from_rotmat, (3, 21, 3, 3)),
        (Pose.from_rotmat, (22, 3)),
        (Pose.from_6d, (3, 22, 5)),
        (Pose.from_6d, (3, 131)),
        (Pose.from_any, (4, 7)),
        (Pose.from_any, (22,)),
        (Pose, (22, 3, 3)),
    ],
)
def test_wrong_shapes_name_received_and_accepted(constructor, shape) -> None:
    with pytest.raises(InvalidPoseError) as info:
        constructor(np.zeros(shape, dtype=np.float32))
    message = str(info.value)
    assert str(list(shape)) in message, message  # what was received
    assert "expected" in message and "22" in message  # what is accepted


@pytest.mark.parametrize("constructor, shape", [(Pose.from_axis_angle, (2, 66)), (Pose.from_rotmat, (2, 22, 3, 3)),
                                                (Pose.from_6d, (2, 22, 6))])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(constructor, shape, bad_value) -> None:
    x = np.tile(np.eye(3), (2, 22, 1, 1)) if len(shape) == 4 else np.ones(shape)
    x = x.reshape(shape).copy()
    x.reshape(-1)[7] = bad_value
    with pytest.raises(InvalidPoseError, match="NaN or infinite"):
        constructor(x)


def test_non_rotations_report_the_worst_joint() -> None:
    mats = np.tile(np.eye(3), (2, 22, 1, 1))
    mats[1, 5] *= 1.2  # right_knee of pose 1: a scale, error ~0.44 + 0.73
    mats[0, 3] *= 1.01  # spine1 of pose 0: a smaller error
    with pytest.raises(InvalidPoseError) as info:
        Pose.from_rotmat(mats)
    message = str(info.value)
    assert "joint 5 (right_knee) of pose 1" in message and "2 matrices over the tolerance" in message
    mirror = np.tile(np.eye(3), (1, 22, 1, 1))
    mirror[0, 0] = np.diag([-1.0, 1.0, 1.0])  # a reflection is orthogonal but not a rotation
    with pytest.raises(InvalidPoseError, match=r"joint 0 \(pelvis\)"):
        Pose.from_rotmat(mirror)
    with pytest.raises(InvalidPoseError, match="not all rotations"):
        Pose(torch.from_numpy(mirror))


def test_rotation_tolerance_is_configurable_and_dtype_aware(aa) -> None:
    mats = R.axis_angle_to_matrix(aa)
    slightly_off = mats * (1 + 1e-4)  # error ~5e-4: fine by default (tolerance 1e-3)
    Pose.from_rotmat(slightly_off)
    with pytest.raises(InvalidPoseError):
        Pose.from_rotmat(slightly_off, atol=1e-5)
    Pose.from_rotmat(torch.from_numpy(mats).half())  # half precision: rounding alone exceeds 1e-3
    Pose.from_rotmat(torch.from_numpy(mats).bfloat16())


def test_degenerate_6d_is_rejected() -> None:
    six = np.tile([1.0, 0, 0, 0, 1, 0], (1, 22, 1))
    six[0, 4] = [1.0, 0, 0, 2.0, 0, 0]  # parallel halves
    with pytest.raises(InvalidPoseError, match=r"joint 4 \(left_knee\) of pose 0 is degenerate"):
        Pose.from_6d(six)
    six[0, 4] = [0, 0, 0, 0, 1, 0]
    with pytest.raises(InvalidPoseError, match="degenerate"):
        Pose.from_6d(six)


@pytest.mark.parametrize("bad", [np.zeros((1, 66), dtype=np.int64), np.zeros((1, 66), dtype=bool),
                                 torch.zeros(1, 66, dtype=torch.int32), torch.zeros(1, 66, dtype=torch.complex64)])
def test_non_float_dtypes_are_rejected(bad) -> None:
    with pytest.raises(InvalidPoseError, match="floating-point"):
        Pose.from_axis_angle(bad)
    with pytest.raises(InvalidPoseError, match="floating-point"):
        Pose.from_any(bad)


@pytest.mark.parametrize("bad", [None, 3.0, object()])
def test_non_arrays_are_rejected(bad) -> None:
    with pytest.raises(InvalidPoseError, match="numpy array or torch tensor|Pose or a file path"):
        Pose.from_any(bad)


def test_ragged_lists_and_bad_dicts_are_rejected() -> None:
    with pytest.raises(InvalidPoseError, match="rectangular"):
        Pose.from_any([[0.0] * 66, [0.0] * 65])
    with pytest.raises(InvalidPoseError, match=r"keys \['poses'\]"):
        Pose.from_any({"poses": np.zeros((1, 66))})


def test_from_smpl_errors() -> None:
    with pytest.raises(InvalidPoseError, match=r"global_orient.*\[2, 4\]"):
        Pose.from_smpl(np.zeros((2, 4)), np.zeros((2, 63)))
    with pytest.raises(InvalidPoseError, match=r"body_pose.*\[2, 69\].*from_axis_angle"):
        Pose.from_smpl(np.zeros((2, 3)), np.zeros((2, 69)))
    with pytest.raises(InvalidPoseError, match="global_orient for 2 poses and body_pose for 3"):
        Pose.from_smpl(np.zeros((2, 3)), np.zeros((3, 63)))
    with pytest.raises(InvalidPoseError, match="batch_size"):
        Pose.identity(-1)


def test_errors_are_value_errors_for_generic_callers() -> None:
    assert issubclass(InvalidPoseError, InvalidInputError) and issubclass(InvalidPoseError, ValueError)


def test_gradients_flow_through_axis_angle_input() -> None:
    aa = torch.zeros(1, 66, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        aa[0, 3 * JOINT_INDEX["left_knee"]] = 0.5
    Pose.from_axis_angle(aa).joints()[0, JOINT_INDEX["left_ankle"], 2].backward()
    assert aa.grad is not None and float(aa.grad.abs().sum()) > 0
