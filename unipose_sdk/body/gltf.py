"""glTF 2.0 binary (.glb) export of poses: the 22-joint skeleton as nodes with a box mannequin, animated for B > 1.

Layout of the file (written with pygltflib, the optional `gltf` extra):
- one node per joint, named after the joint (`pelvis`, `left_hip`, ...), in the SMPL tree: its translation is the
  built-in rest skeleton's offset from the parent (metres; the pelvis node carries the root translation), its
  rotation the joint's local rotation as a quaternion. A node's world position is therefore exactly the SDK's
  forward-kinematics joint position. Axes are SMPL's, which are glTF's: +y up, the body faces +z.
- a mannequin made of one box per bone (from the parent joint to the child), parented to the parent joint's node
  (rigid parenting, no skin), plus a box past each leaf joint (head, hands, feet). It is this project's own
  geometry: no SMPL model file is read or needed.
- with B > 1 poses, one animation ("poses") with a keyframe per pose every `frame_time_s` seconds: a rotation
  channel for every joint and a translation channel for the pelvis. The nodes' own transforms hold the first pose.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

# one definition of the leaf lengths and the input checks; like bvh, this module does not import the Pose type
from unipose_sdk.body.bvh import _END_SITES_M, _transl_array, local_rotations
from unipose_sdk.body.rotations import matrix_to_quaternion
from unipose_sdk.body.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS, REST_OFFSETS_M
from unipose_sdk.errors import BackendUnavailableError, InvalidInputError
from unipose_sdk.fileio import atomic_write_bytes

DEFAULT_FRAME_TIME_S = 1.0 / 30.0
BONE_HALF_WIDTH_M = 0.025  # half the side of a bone's square cross-section
_MANNEQUIN_RGBA = [0.72, 0.74, 0.78, 1.0]
# glTF constants (the spec's numbers)
_FLOAT, _UNSIGNED_SHORT = 5126, 5123
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


def require_pygltflib() -> Any:
    """The pygltflib module, or a BackendUnavailableError naming the extra that installs it."""
    try:
        import pygltflib
    except ImportError:
        raise BackendUnavailableError("received a request for .glb export, but pygltflib is not installed; expected "
                                      "the optional glTF writer. Install it with `pip install "
                                      "'unipose-sdk[gltf]'`.") from None
    return pygltflib


def _box_between(start: np.ndarray, end: np.ndarray, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """A box from `start` to `end` with a square cross-section: (positions [8, 3] float32, indices [36] uint16)."""
    axis = end - start
    length = float(np.linalg.norm(axis))
    direction = axis / length if length > 1e-9 else np.array([0.0, 1.0, 0.0])
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    side_a = np.cross(direction, helper)
    side_a /= np.linalg.norm(side_a)
    side_b = np.cross(direction, side_a)
    corners = []
    for base in (start, end):
        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            corners.append(base + half_width * (sa * side_a + sb * side_b))
    faces = [(0, 2, 1), (0, 3, 2), (4, 5, 6), (4, 6, 7), (0, 1, 5), (0, 5, 4), (1, 2, 6), (1, 6, 5), (2, 3, 7),
             (2, 7, 6), (3, 0, 4), (3, 4, 7)]
    return np.array(corners, dtype=np.float32), np.array(faces, dtype=np.uint16).reshape(-1)


class _BinaryBuilder:
    """Collects arrays into one buffer, with a bufferView and an accessor each."""

    def __init__(self, gltf_module: Any, gltf: Any) -> None:
        self.lib, self.gltf, self.blob = gltf_module, gltf, bytearray()

    def add(self, array: np.ndarray, accessor_type: str, component: int, target: int | None = None,
            with_bounds: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        while len(self.blob) % 4:
            self.blob.append(0)
        view = self.lib.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data))
        if target is not None:
            view.target = target
        self.gltf.bufferViews.append(view)
        self.blob.extend(data)
        count = array.shape[0]
        accessor = self.lib.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=component, count=count,
                                     type=accessor_type)
        if with_bounds:
            flat = array.reshape(count, -1)
            accessor.min = [float(v) for v in flat.min(axis=0)]
            accessor.max = [float(v) for v in flat.max(axis=0)]
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1


def glb_bytes(pose: Any, *, transl_m: Any = None, frame_time_s: float = DEFAULT_FRAME_TIME_S) -> bytes:
    """The .glb file of `pose` (a Pose or rotations [B, 22, 3, 3]; see the module doc) as bytes."""
    rotmat = local_rotations(pose)
    if isinstance(frame_time_s, bool) or not isinstance(frame_time_s, (int, float)) or not (
            math.isfinite(frame_time_s) and frame_time_s > 0):
        raise InvalidInputError(f"received frame_time_s={frame_time_s!r}; expected a positive number of seconds, "
                                f"e.g. {DEFAULT_FRAME_TIME_S:.6f} for 30 frames per second.")
    batch = rotmat.shape[0]
    transl = _transl_array(transl_m, batch)
    lib = require_pygltflib()
    # glTF quaternions are (x, y, z, w); the SDK's are (w, x, y, z)
    quat_wxyz = matrix_to_quaternion(torch.from_numpy(rotmat)).numpy()  # [B, 22, 4]
    quat_xyzw = np.concatenate([quat_wxyz[..., 1:], quat_wxyz[..., :1]], axis=-1)
    offsets = REST_OFFSETS_M.numpy()

    gltf = lib.GLTF2(asset=lib.Asset(generator="unipose-sdk", version="2.0"))
    surface = lib.PbrMetallicRoughness(baseColorFactor=_MANNEQUIN_RGBA, metallicFactor=0.0, roughnessFactor=0.8)
    gltf.materials.append(lib.Material(name="mannequin", doubleSided=True, pbrMetallicRoughness=surface))
    binary = _BinaryBuilder(lib, gltf)
    for j in range(NUM_JOINTS):
        translation = transl[0] if j == 0 else offsets[j]
        gltf.nodes.append(lib.Node(name=JOINT_NAMES[j], translation=[float(v) for v in translation],
                                   rotation=[float(v) for v in quat_xyzw[0, j]], children=[]))
    for j in range(NUM_JOINTS):
        if j > 0:
            gltf.nodes[PARENTS[j]].children.append(j)
    # the mannequin: a box per bone, attached to the parent joint, and one past each leaf joint
    bones = [(PARENTS[j], np.zeros(3), offsets[j], JOINT_NAMES[j]) for j in range(1, NUM_JOINTS)]
    bones += [(JOINT_NAMES.index(name), np.zeros(3), np.array(end), f"{name}_end")
              for name, end in _END_SITES_M.items()]
    for parent, start, end, name in bones:
        positions, indices = _box_between(start, end, BONE_HALF_WIDTH_M)
        position_accessor = binary.add(positions, "VEC3", _FLOAT, _ARRAY_BUFFER, with_bounds=True)
        index_accessor = binary.add(indices, "SCALAR", _UNSIGNED_SHORT, _ELEMENT_ARRAY_BUFFER)
        gltf.meshes.append(lib.Mesh(name=f"bone_{name}", primitives=[lib.Primitive(
            attributes=lib.Attributes(POSITION=position_accessor), indices=index_accessor, material=0)]))
        gltf.nodes.append(lib.Node(name=f"bone_{name}", mesh=len(gltf.meshes) - 1))
        gltf.nodes[parent].children.append(len(gltf.nodes) - 1)
    for node in gltf.nodes:
        if node.children == []:
            node.children = None  # pygltflib would write an empty list, which the spec forbids
    gltf.scenes.append(lib.Scene(name="unipose", nodes=[0]))
    gltf.scene = 0

    if batch > 1:
        times = (np.arange(batch, dtype=np.float64) * frame_time_s).astype(np.float32)
        time_accessor = binary.add(times, "SCALAR", _FLOAT, with_bounds=True)
        animation = lib.Animation(name="poses", samplers=[], channels=[])
        outputs = [(j, "rotation", quat_xyzw[:, j].astype(np.float32), "VEC4") for j in range(NUM_JOINTS)]
        outputs.append((0, "translation", transl.astype(np.float32), "VEC3"))
        for node, path_name, values, kind in outputs:
            animation.samplers.append(lib.AnimationSampler(input=time_accessor, output=binary.add(values, kind, _FLOAT),
                                                           interpolation="LINEAR"))
            target = lib.AnimationChannelTarget(node=node, path=path_name)
            animation.channels.append(lib.AnimationChannel(sampler=len(animation.samplers) - 1, target=target))
        gltf.animations.append(animation)

    while len(binary.blob) % 4:
        binary.blob.append(0)
    gltf.buffers.append(lib.Buffer(byteLength=len(binary.blob)))
    gltf.set_binary_blob(bytes(binary.blob))
    return b"".join(gltf.save_to_bytes())


def write_glb(pose: Any, path: str | os.PathLike, *, transl_m: Any = None,
              frame_time_s: float = DEFAULT_FRAME_TIME_S) -> Path:
    """Write `pose` as a .glb file atomically (B > 1 poses become an animation); returns the path."""
    return atomic_write_bytes(Path(path).expanduser(), glb_bytes(pose, transl_m=transl_m, frame_time_s=frame_time_s))
