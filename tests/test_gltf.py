""".glb export: read back with pygltflib, world joint positions recomputed from the node transforms."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from unipose_sdk.body.examples import example_pose_names, load_example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_NAMES, forward_kinematics
from unipose_sdk.errors import BackendUnavailableError, InvalidInputError

pygltflib = pytest.importorskip("pygltflib")

from unipose_sdk.body.gltf import write_glb  # noqa: E402 - after the skip: the module needs pygltflib to run


def _quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _accessor_array(gltf, index: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor.type]
    assert accessor.componentType == 5126
    data = gltf.binary_blob()[view.byteOffset + (accessor.byteOffset or 0):][:accessor.count * width * 4]
    return np.frombuffer(data, dtype=np.float32).reshape(accessor.count, width).astype(np.float64)


def _world_positions(gltf, rotation: dict[int, np.ndarray],
                     translation: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Walk the scene from its root nodes, composing each node's T * R."""
    found: dict[str, np.ndarray] = {}

    def walk(index: int, parent_r: np.ndarray, parent_p: np.ndarray) -> None:
        node = gltf.nodes[index]
        t = translation.get(index, np.array(node.translation or [0.0, 0.0, 0.0]))
        q = rotation.get(index, np.array(node.rotation or [0.0, 0.0, 0.0, 1.0]))
        assert node.matrix is None and node.scale is None
        world_p = parent_p + parent_r @ t
        world_r = parent_r @ _quat_xyzw_to_matrix(q)
        found[node.name] = world_p
        for child in node.children or []:
            walk(child, world_r, world_p)

    for root in gltf.scenes[gltf.scene].nodes:
        walk(root, np.eye(3), np.zeros(3))
    return found


def _poses() -> Pose:
    generator = torch.Generator().manual_seed(7)
    examples = Pose.cat([load_example_pose(name) for name in example_pose_names()])
    return Pose.cat([examples, Pose.from_axis_angle(torch.randn(4, 66, generator=generator) * 1.2)])


def test_single_pose_nodes_give_sdk_fk(tmp_path):
    for name in example_pose_names():
        pose = load_example_pose(name)
        path = write_glb(pose, tmp_path / f"{name}.glb", transl_m=[0.1, 0.9, -0.2])
        gltf = pygltflib.GLTF2().load(str(path))
        assert not gltf.animations
        positions = _world_positions(gltf, {}, {})
        expected = forward_kinematics(pose.rotmat.double())[0][0].numpy() + np.array([0.1, 0.9, -0.2])
        for j, joint in enumerate(JOINT_NAMES):
            assert np.abs(positions[joint] - expected[j]).max() < 1e-5, joint
        # a mannequin: meshes with triangles, parented to joints
        assert len(gltf.meshes) == 21 + 5
        assert all(node.mesh is None for node in gltf.nodes if node.name in JOINT_NAMES)


def test_animation_keyframes_give_sdk_fk(tmp_path):
    pose = _poses()
    transl = np.random.default_rng(8).normal(size=(len(pose), 3))
    path = write_glb(pose, tmp_path / "clip.glb", transl_m=transl, frame_time_s=0.5)
    gltf = pygltflib.GLTF2().load(str(path))
    (animation,) = gltf.animations
    expected = forward_kinematics(pose.rotmat.double())[0].numpy() + transl[:, None, :]
    node_of = {node.name: i for i, node in enumerate(gltf.nodes)}
    keyed_rotation, keyed_translation = {}, {}
    for channel in animation.channels:
        sampler = animation.samplers[channel.sampler]
        times = _accessor_array(gltf, sampler.input)[:, 0]
        np.testing.assert_allclose(times, np.arange(len(pose)) * 0.5)
        target = keyed_rotation if channel.target.path == "rotation" else keyed_translation
        target[channel.target.node] = _accessor_array(gltf, sampler.output)
    assert set(keyed_rotation) == {node_of[name] for name in JOINT_NAMES}
    worst = 0.0
    for frame in range(len(pose)):
        positions = _world_positions(gltf, {n: v[frame] for n, v in keyed_rotation.items()},
                                     {n: v[frame] for n, v in keyed_translation.items()})
        for j, joint in enumerate(JOINT_NAMES):
            worst = max(worst, float(np.abs(positions[joint] - expected[frame, j]).max()))
    assert worst < 1e-5


def test_file_is_valid_glb_with_bounds(tmp_path):
    path = write_glb(Pose.identity(1), tmp_path / "t.glb")
    data = path.read_bytes()
    assert data[:4] == b"glTF" and int.from_bytes(data[4:8], "little") == 2
    assert int.from_bytes(data[8:12], "little") == len(data)
    gltf = pygltflib.GLTF2().load(str(path))
    for mesh in gltf.meshes:
        accessor = gltf.accessors[mesh.primitives[0].attributes.POSITION]
        assert accessor.min is not None and accessor.max is not None


def test_bad_input_is_typed_error(tmp_path):
    with pytest.raises(InvalidInputError, match="frame_time_s"):
        write_glb(Pose.identity(2), tmp_path / "t.glb", frame_time_s=0)
    with pytest.raises(InvalidInputError, match="Pose"):
        write_glb(np.zeros((1, 21, 3, 3)), tmp_path / "t.glb")
    assert not (tmp_path / "t.glb").exists()


def test_missing_pygltflib_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "pygltflib":
            raise ImportError("no pygltflib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(BackendUnavailableError, match=r"unipose-sdk\[gltf\]"):
        write_glb(Pose.identity(1), tmp_path / "t.glb")
