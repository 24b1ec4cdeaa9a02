"""Pose files: every readable layout, detection by content, clear format errors, atomic writes."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from unipose_sdk.body import rotations as R
from unipose_sdk.body.io import (
    JSON_FORMAT_NAME,
    detect_pose_format,
    load_pose,
    read_pose_file,
    save_pose,
)
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_NAMES
from unipose_sdk.errors import InvalidInputError, InvalidPoseError, PoseFormatError, UniPoseFileNotFoundError
from unipose_sdk.fileio import atomic_write


@pytest.fixture
def aa() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.normal(size=(4, 66)) * 0.5).astype(np.float32)


@pytest.fixture
def pose(aa) -> Pose:
    return Pose.from_axis_angle(aa)


# ---------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", [".npz", ".npy", ".json"])
def test_save_load_round_trip(pose, tmp_path, ext) -> None:
    path = save_pose(pose, tmp_path / f"poses{ext}")
    assert path == tmp_path / f"poses{ext}" and path.exists()
    assert load_pose(path).allclose(pose, atol=1e-5)
    assert Pose.load(path).allclose(pose, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"poses{ext}"]  # no temporary file left behind


@pytest.mark.parametrize("ext", [".npz", ".json"])
def test_translation_and_betas_survive(pose, tmp_path, ext) -> None:
    transl = np.arange(12, dtype=np.float32).reshape(4, 3)
    betas = np.linspace(-1, 1, 10, dtype=np.float32)
    pose.save(tmp_path / f"p{ext}", transl_m=transl, betas=betas)
    content = read_pose_file(tmp_path / f"p{ext}")
    np.testing.assert_allclose(content.transl_m, transl)
    np.testing.assert_allclose(content.betas, betas, atol=1e-7)
    assert content.layout == {".npz": "smplx-npz", ".json": "json"}[ext]
    # a single translation is broadcast to every pose
    pose.save(tmp_path / f"q{ext}", transl_m=torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(read_pose_file(tmp_path / f"q{ext}").transl_m, np.tile([1.0, 2.0, 3.0], (4, 1)))


def test_npz_uses_smplx_key_names(pose, aa, tmp_path) -> None:
    pose.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as data:
        assert sorted(data.files) == ["body_pose", "global_orient"]
        assert data["global_orient"].shape == (4, 3) and data["body_pose"].shape == (4, 63)
        assert data["body_pose"].dtype == np.float32
        np.testing.assert_allclose(data["body_pose"], aa[:, 3:], atol=1e-5)


def test_npy_single_pose_is_the_demo_layout(pose, tmp_path) -> None:
    pose[0].save(tmp_path / "one.npy")
    array = np.load(tmp_path / "one.npy")
    assert array.shape == (22, 3, 3) and array.dtype == np.float32
    pose.save(tmp_path / "all.npy")
    assert np.load(tmp_path / "all.npy").shape == (4, 22, 3, 3)


def test_reads_the_official_demo_npy(aa, tmp_path) -> None:
    rotmat = R.axis_angle_to_matrix(aa[0].reshape(22, 3)).astype(np.float32)
    np.save(tmp_path / "demo.npy", rotmat)
    content = read_pose_file(tmp_path / "demo.npy")
    assert content.layout == "npy" and content.transl_m is None and content.betas is None
    np.testing.assert_allclose(content.pose.rotmat[0].numpy(), rotmat, atol=1e-7)


def test_json_document_schema(pose, tmp_path) -> None:
    pose.save(tmp_path / "p.json", transl_m=np.zeros(3))
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["format"] == JSON_FORMAT_NAME and doc["version"] == 1 and doc["rotation_format"] == "axis_angle"
    assert doc["joint_names"] == list(JOINT_NAMES)
    assert np.asarray(doc["poses"]).shape == (4, 22, 3) and np.asarray(doc["transl_m"]).shape == (4, 3)


@pytest.mark.parametrize("rotation_format", ["rotmat", "rotation_6d"])
def test_json_other_rotation_formats(pose, tmp_path, rotation_format) -> None:
    values = pose.rotmat if rotation_format == "rotmat" else pose.rotation_6d()
    doc = {"format": JSON_FORMAT_NAME, "version": 1, "rotation_format": rotation_format,
           "poses": values.double().tolist()}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert load_pose(tmp_path / "p.json").allclose(pose, atol=1e-6)


# ---------------------------------------------------------------------------------------- AMASS and smplx files
def test_amass_separate_keys(aa, pose, tmp_path) -> None:
    np.savez(tmp_path / "amass.npz", root_orient=aa[:, :3], pose_body=aa[:, 3:], trans=np.ones((4, 3)),
             betas=np.zeros(16), gender=np.array("neutral"), mocap_framerate=np.array(120.0))
    content = read_pose_file(tmp_path / "amass.npz")
    assert content.layout == "amass-npz" and content.pose.allclose(pose, atol=1e-6)
    np.testing.assert_array_equal(content.transl_m, np.ones((4, 3), dtype=np.float32))
    assert content.betas.shape == (16,)


@pytest.mark.parametrize("width", [66, 72, 156, 165])
def test_amass_poses_array_first_66_are_ours(aa, pose, tmp_path, width) -> None:
    poses = np.concatenate([aa, np.full((4, width - 66), 0.2, dtype=np.float32)], axis=1)
    np.savez(tmp_path / "amass.npz", poses=poses, trans=np.zeros((4, 3)), dmpls=np.zeros((4, 8)))
    content = read_pose_file(tmp_path / "amass.npz")
    assert content.layout == "amass-poses-npz" and content.pose.allclose(pose, atol=1e-6)


def test_smplx_npz_with_rotation_matrices(pose, tmp_path) -> None:
    rotmat = pose.numpy()
    np.savez(tmp_path / "m.npz", global_orient=rotmat[:, :1], body_pose=rotmat[:, 1:], transl=np.zeros((4, 3)))
    assert load_pose(tmp_path / "m.npz").allclose(pose, atol=1e-6)


def test_unbatched_smplx_npz(aa, pose, tmp_path) -> None:
    np.savez(tmp_path / "one.npz", global_orient=aa[0, :3], body_pose=aa[0, 3:], transl=np.zeros(3))
    content = read_pose_file(tmp_path / "one.npz")
    assert len(content.pose) == 1 and content.pose.allclose(pose[0], atol=1e-6)
    assert content.transl_m.shape == (1, 3)


# ---------------------------------------------------------------------------------------- detection by content
def test_format_is_detected_from_content_not_extension(pose, tmp_path) -> None:
    pose.save(tmp_path / "really_npz.npz")
    (tmp_path / "really_npz.npz").rename(tmp_path / "misnamed.json")
    pose.save(tmp_path / "really.json")
    (tmp_path / "really.json").rename(tmp_path / "misnamed.npy")
    pose.save(tmp_path / "really.npy")
    (tmp_path / "really.npy").rename(tmp_path / "misnamed.dat")
    assert detect_pose_format(tmp_path / "misnamed.json") == "npz"
    assert detect_pose_format(tmp_path / "misnamed.npy") == "json"
    assert detect_pose_format(tmp_path / "misnamed.dat") == "npy"
    for name in ("misnamed.json", "misnamed.npy", "misnamed.dat"):
        assert load_pose(tmp_path / name).allclose(pose, atol=1e-5)


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(UniPoseFileNotFoundError, match="does not exist") as info:
        load_pose(tmp_path / "nope.npz")
    assert isinstance(info.value, FileNotFoundError) and "nope.npz" in str(info.value)
    with pytest.raises(PoseFormatError, match="directory"):
        load_pose(tmp_path)
    with pytest.raises(InvalidInputError, match="file path"):
        load_pose(12)


@pytest.mark.parametrize(
    "content, found",
    [
        (b"", "empty file"),
        (pickle.dumps({"global_orient": [0, 0, 0]}), "pickle"),
        (b"hello world, not a pose", "hello world"),
    ],
)
def test_unknown_content_names_what_was_found(tmp_path, content, found) -> None:
    (tmp_path / "x.npz").write_bytes(content)
    with pytest.raises(PoseFormatError) as info:
        load_pose(tmp_path / "x.npz")
    assert found in str(info.value) and "global_orient" in str(info.value)  # what was found + the accepted layouts


def test_npz_with_unknown_keys_lists_them(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", joints=np.zeros((1, 22, 3)), foo=np.zeros(2))
    with pytest.raises(PoseFormatError, match=r"keys \['foo', 'joints'\].*root_orient"):
        load_pose(tmp_path / "x.npz")


def test_corrupt_npz_and_pickled_arrays(tmp_path) -> None:
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(PoseFormatError, match="cannot be read"):
        load_pose(tmp_path / "x.npz")
    np.savez(tmp_path / "o.npz", global_orient=np.zeros((1, 3)), body_pose=np.array([None], dtype=object))
    with pytest.raises(PoseFormatError, match="pickled object array"):
        load_pose(tmp_path / "o.npz")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PoseFormatError, match="unpickling"):
        load_pose(tmp_path / "o.npy")


def test_npz_bad_values_and_shapes(aa, tmp_path) -> None:
    np.savez(tmp_path / "i.npz", global_orient=np.zeros((1, 3), dtype=np.int32), body_pose=np.zeros((1, 63)))
    with pytest.raises(PoseFormatError, match="'global_orient' has dtype int32"):
        load_pose(tmp_path / "i.npz")
    body = aa[:1, 3:].copy()
    body[0, 4] = np.nan
    np.savez(tmp_path / "n.npz", global_orient=aa[:1, :3], body_pose=body)
    with pytest.raises(InvalidPoseError, match="NaN"):
        load_pose(tmp_path / "n.npz")
    np.savez(tmp_path / "s.npz", global_orient=aa[:, :3], body_pose=aa[:, 3:60])
    with pytest.raises(InvalidPoseError, match=r"s\.npz.*\[4, 57\]"):
        load_pose(tmp_path / "s.npz")
    np.savez(tmp_path / "t.npz", global_orient=aa[:, :3], body_pose=aa[:, 3:], transl=np.zeros((3, 3)))
    with pytest.raises(PoseFormatError, match=r"'transl' has shape \[3, 3\]; expected \[4, 3\]"):
        read_pose_file(tmp_path / "t.npz")
    np.savez(tmp_path / "b.npz", global_orient=aa[:, :3], body_pose=aa[:, 3:], betas=np.zeros((1, 2, 3)))
    with pytest.raises(PoseFormatError, match="'betas' has shape"):
        read_pose_file(tmp_path / "b.npz")
    mats = np.tile(np.eye(3, dtype=np.float32), (2, 22, 1, 1))
    np.savez(tmp_path / "m.npz", global_orient=mats[:1, :1], body_pose=mats[:, 1:])
    with pytest.raises(PoseFormatError, match="same number of poses"):
        load_pose(tmp_path / "m.npz")


def test_npy_bad_shapes_and_dtypes(tmp_path) -> None:
    np.save(tmp_path / "s.npy", np.zeros((22, 3, 4), dtype=np.float32))
    with pytest.raises(PoseFormatError, match=r"shape \[22, 3, 4\]; expected \(22, 3, 3\)"):
        load_pose(tmp_path / "s.npy")
    np.save(tmp_path / "i.npy", np.zeros((22, 3, 3), dtype=np.int8))
    with pytest.raises(PoseFormatError, match="dtype int8"):
        load_pose(tmp_path / "i.npy")
    np.save(tmp_path / "z.npy", np.zeros((22, 3, 3), dtype=np.float32))  # all-zero "matrices"
    with pytest.raises(InvalidPoseError, match=r"z\.npy.*not all rotations"):
        load_pose(tmp_path / "z.npy")


@pytest.mark.parametrize(
    "doc, message",
    [
        ("[1, 2, 3]", "JSON list"),
        ('{"format": "something-else"}', "'something-else'"),
        ('{"format": "unipose-pose", "version": 2, "rotation_format": "axis_angle", "poses": []}', "newer"),
        ('{"format": "unipose-pose", "version": "1"}', "version '1'"),
        ('{"format": "unipose-pose", "version": 1, "rotation_format": "euler", "poses": []}', "'euler'"),
        ('{"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle"}', "\"poses\" array"),
        ('{"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle", "poses": [[1, 2]]}',
         r"shape \[1, 2\]; expected \[B, 22, 3\]"),
        ('{"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle", "poses": [[1], [1, 2]]}',
         "not a rectangular"),
        (('{"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle", "poses": [], '
          '"joint_names": ["a"]}'), "joint_names"),
        ('{"format": "unipose-pose", "version": 1,', "not valid JSON"),
    ],
)
def test_json_errors(tmp_path, doc, message) -> None:
    (tmp_path / "x.json").write_text(doc)
    with pytest.raises(PoseFormatError, match=message):
        load_pose(tmp_path / "x.json")


def test_json_bad_optional_fields(pose, tmp_path) -> None:
    pose.save(tmp_path / "p.json")
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["transl_m"] = "up"
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(PoseFormatError, match='"transl_m" is not an array'):
        read_pose_file(tmp_path / "p.json")


# ---------------------------------------------------------------------------------------- saving errors, atomicity
def test_save_errors(pose, tmp_path) -> None:
    with pytest.raises(PoseFormatError, match=r"extension '\.pkl'.*\.npz, \.npy, \.json"):
        pose.save(tmp_path / "p.pkl")
    with pytest.raises(PoseFormatError, match="holds rotation matrices only"):
        pose.save(tmp_path / "p.npy", transl_m=np.zeros(3))
    with pytest.raises(InvalidInputError, match=r"transl_m of shape \[2, 3\]; expected \[3\] or \[4, 3\]"):
        pose.save(tmp_path / "p.npz", transl_m=np.zeros((2, 3)))
    with pytest.raises(InvalidInputError, match="NaN"):
        pose.save(tmp_path / "p.npz", betas=np.array([np.nan]))
    with pytest.raises(InvalidInputError, match="expected a Pose"):
        save_pose(np.zeros((1, 66)), tmp_path / "p.npz")
    with pytest.raises(UniPoseFileNotFoundError, match="Create"):
        pose.save(tmp_path / "missing_dir" / "p.npz")
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(InvalidInputError, match="is a directory"):
        pose.save(tmp_path / "d.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_failed_write_leaves_the_old_file_and_no_temporary(pose, tmp_path, monkeypatch) -> None:
    target = tmp_path / "p.npz"
    Pose.identity().save(target)
    before = target.read_bytes()

    def exploding_savez(handle, **arrays):
        handle.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(OSError, match="disk full"):
        pose.save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    with pytest.raises(OSError, match="disk full"):
        pose.save(tmp_path / "new.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # nothing half-written for a new file either


def test_atomic_write_modes(tmp_path) -> None:
    target = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    assert target.read_bytes() == b"x"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary new file, not mkstemp's 0600
    os.chmod(target, 0o640)
    atomic_write(target, lambda f: f.write(b"y"))
    assert target.read_bytes() == b"y" and target.stat().st_mode & 0o777 == 0o640  # mode of the replaced file


# ---------------------------------------------------------------------------------------- shipped example poses
from unipose_sdk.body import examples
from unipose_sdk.body.skeleton import JOINT_INDEX


@pytest.mark.parametrize("name", examples.example_pose_names())
def test_shipped_example_files_equal_their_code_definition(name) -> None:
    path = examples.example_pose_path(name)
    assert path.parent.name == "examples" and path.suffix == ".npz"
    with np.load(path) as data:
        assert sorted(data.files) == ["body_pose", "global_orient"]  # smplx keys
    loaded = examples.load_example_pose(name)
    assert len(loaded) == 1
    np.testing.assert_allclose(loaded.axis_angle()[0].numpy().reshape(22, 3), examples.example_axis_angle(name),
                               atol=2e-6)


def test_example_default_and_errors(tmp_path, monkeypatch) -> None:
    assert examples.DEFAULT_EXAMPLE in examples.example_pose_names() and len(examples.example_pose_names()) >= 5
    assert examples.load_example_pose().allclose(examples.example_pose(examples.DEFAULT_EXAMPLE), atol=1e-5)
    with pytest.raises(InvalidInputError, match="Did you mean 'sitting'"):
        examples.load_example_pose("siting")
    written = examples.write_example_assets(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.npz" for n in examples.example_pose_names())
    monkeypatch.setattr(examples, "EXAMPLES_DIR", tmp_path / "gone")
    with pytest.raises(UniPoseFileNotFoundError, match="Reinstall"):
        examples.example_pose_path("sitting")


def _joints(name: str) -> dict[str, np.ndarray]:
    joints = examples.example_pose(name).joints()[0].numpy()
    return {n: joints[i] for n, i in JOINT_INDEX.items()}


def test_examples_are_anatomically_plausible() -> None:
    """Knees bend backwards, hips forwards, arms go where their names say (x = left, y = up, z = forward)."""
    for name in examples.example_pose_names():
        j = _joints(name)
        assert j["head"][1] > j["neck"][1] > j["pelvis"][1], name  # upright
        for side in ("left", "right"):
            # a knee never bends forwards: the ankle is not ahead of the knee-hip line by much
            assert j[f"{side}_ankle"][2] < j[f"{side}_knee"][2] + 0.12, name
            assert j[f"{side}_foot"][2] > j[f"{side}_ankle"][2], name  # toes ahead of the ankle
        assert j["left_wrist"][0] > j["right_wrist"][0], name  # left hand on the left
    relaxed = _joints("standing_relaxed")
    assert relaxed["left_wrist"][1] < relaxed["left_shoulder"][1] - 0.4 and abs(relaxed["left_wrist"][0]) < 0.4
    raised = _joints("standing_arms_raised")
    assert min(raised["left_wrist"][1], raised["right_wrist"][1]) > raised["head"][1] + 0.2
    squat = _joints("squatting")
    for side in ("left", "right"):
        assert squat[f"{side}_knee"][2] > squat[f"{side}_hip"][2] + 0.25  # thighs forward
        assert squat[f"{side}_knee"][2] > squat[f"{side}_ankle"][2]  # knees ahead of the ankles
        assert abs(squat[f"{side}_foot"][1] - squat[f"{side}_ankle"][1]) < 0.1  # feet flat
    assert squat["pelvis"][1] - min(squat["left_foot"][1], squat["left_ankle"][1]) < 0.6  # low hips
    sit = _joints("sitting")
    for side in ("left", "right"):
        assert abs(sit[f"{side}_knee"][1] - sit[f"{side}_hip"][1]) < 0.08  # thighs horizontal
        assert sit[f"{side}_knee"][2] > sit[f"{side}_hip"][2] + 0.35
        assert sit[f"{side}_ankle"][1] < sit[f"{side}_knee"][1] - 0.35  # shanks hang down
    walk = _joints("walking_stride")
    assert walk["left_ankle"][2] > walk["right_ankle"][2] + 0.4  # left leg ahead
    assert walk["right_wrist"][2] > walk["left_wrist"][2] + 0.2  # opposite arm ahead
    wave = _joints("waving_right_hand")
    assert wave["right_wrist"][1] > wave["right_elbow"][1] + 0.2 > wave["right_shoulder"][1]  # hand up
    assert wave["left_wrist"][1] < wave["left_shoulder"][1] - 0.4
