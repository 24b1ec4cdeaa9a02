"""Bodies and poses: rotation formats, the SMPL 22-joint tree, forward kinematics, the Pose type, files, rendering.

`render_poses_png`, `render_poses_figure` and the example-pose helpers are loaded on first use, so importing this
package does not import matplotlib. The optional SMPL adapter lives in `unipose_sdk.body.smpl_adapter` and is
never imported from here (it needs the separately licensed smplx package and model files).
"""

from __future__ import annotations

import importlib
from typing import Any

from unipose_sdk.body.io import PoseFile, load_pose, read_pose_file, save_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.rotations import (
    axis_angle_to_matrix,
    axis_angle_to_rotation_6d,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    rotation_6d_to_axis_angle,
    rotation_6d_to_matrix,
    rotation_matrix_error,
)
from unipose_sdk.body.skeleton import (
    JOINT_INDEX,
    JOINT_NAMES,
    NUM_JOINTS,
    PARENTS,
    REST_OFFSETS_M,
    forward_kinematics,
    rest_joints_m,
)

# name -> module that defines it, imported on first attribute access (PEP 562)
_LAZY = {
    "render_poses_png": "unipose_sdk.body.render",
    "render_poses_figure": "unipose_sdk.body.render",
    "load_example_pose": "unipose_sdk.body.examples",
    "example_pose": "unipose_sdk.body.examples",
    "example_pose_path": "unipose_sdk.body.examples",
    "example_pose_names": "unipose_sdk.body.examples",
    "DEFAULT_EXAMPLE": "unipose_sdk.body.examples",
}

__all__ = [
    "Pose", "PoseFile", "load_pose", "save_pose", "read_pose_file",
    "axis_angle_to_matrix", "axis_angle_to_rotation_6d", "matrix_to_axis_angle", "matrix_to_quaternion",
    "matrix_to_rotation_6d", "quaternion_to_axis_angle", "quaternion_to_matrix", "rotation_6d_to_axis_angle",
    "rotation_6d_to_matrix", "rotation_matrix_error",
    "JOINT_INDEX", "JOINT_NAMES", "NUM_JOINTS", "PARENTS", "REST_OFFSETS_M", "forward_kinematics", "rest_joints_m",
    "render_poses_png", "render_poses_figure", "load_example_pose", "example_pose", "example_pose_path",
    "example_pose_names", "DEFAULT_EXAMPLE",
]
assert set(_LAZY) <= set(__all__)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
