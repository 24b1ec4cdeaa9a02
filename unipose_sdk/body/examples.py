"""A few hand-designed, natural example poses, defined here in code and shipped as .npz files.

Each pose is a short list of joint rotations in degrees about the body axes (SMPL frame: +x = the body's left,
+y up, +z forward), applied in the order written; joints not named stay at rest. The sign conventions that
matter when designing them:
- hip flexion (thigh forward) is a NEGATIVE rotation about x; knee flexion (foot backwards) a POSITIVE one;
  a positive ankle rotation about x points the toes down;
- a hip moves its leg outwards about z: the left one positively, the right negatively;
- from the T-pose, an arm comes down by rotating about z: the left arm by a negative angle, the right by a
  positive one (and goes up with the opposite signs);
- an elbow flexes (forearm forward, from the T-pose) about y: the left one negatively, the right positively;
- a positive root rotation about x leans the whole body forward.

The shipped files `unipose_sdk/assets/examples/<name>.npz` (smplx keys) are written from these definitions by
`write_example_assets()` (run `python -m unipose_sdk.body.examples`); a test checks they still match.

Example images ship beside them (`example_image_names()`; "person": one person standing, for the Estimator and
the Describer): `example_image_path(name)` gives the installed file, `load_example_image(name)` the RGB image, so
examples run outside a source checkout.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import unipose_sdk.body.rotations as rotations
from unipose_sdk.body.io import load_pose, save_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_INDEX, NUM_JOINTS
from unipose_sdk.errors import InvalidInputError, UniPoseFileNotFoundError
from unipose_sdk.fileio import open_regular_file

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_EXAMPLE = "standing_arms_raised"
# name -> file in EXAMPLES_DIR
EXAMPLE_IMAGES = {"person": "person.png"}
DEFAULT_EXAMPLE_IMAGE = "person"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}

# name -> {joint: [(axis, degrees), ...] applied in order}
_ARMS_DOWN = {"left_shoulder": [("z", -80)], "right_shoulder": [("z", 80)]}
EXAMPLE_DEFINITIONS: dict[str, dict[str, list[tuple[str, float]]]] = {
    "standing_relaxed": {
        **_ARMS_DOWN,
        "left_elbow": [("y", -12)], "right_elbow": [("y", 12)],
        "left_hip": [("z", 3)], "right_hip": [("z", -3)],  # feet slightly apart
        "left_knee": [("x", 4)], "right_knee": [("x", 4)],
        "neck": [("x", 4)],
    },
    "standing_arms_raised": {
        "left_collar": [("z", 12)], "right_collar": [("z", -12)],
        "left_shoulder": [("z", 58), ("y", -8)], "right_shoulder": [("z", -58), ("y", 8)],
        "left_elbow": [("y", -10)], "right_elbow": [("y", 10)],
        "left_hip": [("z", 4)], "right_hip": [("z", -4)],
        "neck": [("x", -10)], "head": [("x", -8)],  # looking up at the hands
    },
    "squatting": {
        "pelvis": [("x", 30)],  # the trunk leans forward over the feet
        "left_hip": [("x", -118), ("y", 10)], "right_hip": [("x", -118), ("y", -10)],  # thighs ~ horizontal, knees out
        "left_knee": [("x", 115)], "right_knee": [("x", 115)],
        "left_ankle": [("x", -27)], "right_ankle": [("x", -27)],  # feet flat on the floor
        "spine1": [("x", -8)], "neck": [("x", -18)],
        "left_shoulder": [("y", -70), ("z", -20)], "right_shoulder": [("y", 70), ("z", 20)],  # arms ahead, balance
    },
    "walking_stride": {
        "left_hip": [("x", -25)], "left_knee": [("x", 6)], "left_ankle": [("x", -10)],  # heel strike
        "right_hip": [("x", 18)], "right_knee": [("x", 25)], "right_ankle": [("x", 15)],  # push-off
        "left_shoulder": [("z", -75), ("x", 18)],  # left arm swings back (opposite the left leg)
        "right_shoulder": [("z", 75), ("x", -22)],  # right arm swings forward
        "left_elbow": [("y", -15)], "right_elbow": [("y", 30)],
        "spine2": [("y", -5)],  # the chest counter-rotates a little
    },
    "sitting": {
        "left_hip": [("x", -88), ("y", 5)], "right_hip": [("x", -88), ("y", -5)],  # thighs horizontal
        "left_knee": [("x", 88)], "right_knee": [("x", 88)],  # shanks vertical
        "spine1": [("x", 5)],
        "left_shoulder": [("z", -70), ("x", -30)], "right_shoulder": [("z", 70), ("x", -30)],
        "left_elbow": [("y", -50)], "right_elbow": [("y", 50)],  # hands resting on the thighs
    },
    "waving_right_hand": {
        "left_shoulder": [("z", -72)], "left_elbow": [("y", -10)],
        # the upper arm turns about its own axis so that the elbow's flexion lifts the forearm up instead of
        # forward, then rises a little above horizontal
        "right_shoulder": [("x", -90), ("z", -10)],
        "right_elbow": [("y", 95)],  # forearm points up
        "head": [("y", -12)],  # turned slightly towards the waving hand
        "left_hip": [("z", 3)], "right_hip": [("z", -3)],
    },
}


def _joint_rotation_aa(steps: list[tuple[str, float]]) -> np.ndarray:
    """Compose (axis, degrees) steps, each applied after the previous one, into one axis-angle [3]."""
    matrix = np.eye(3)
    for axis, degrees in steps:
        step = rotations.axis_angle_to_matrix(np.asarray(_AXES[axis]) * math.radians(degrees))
        matrix = step @ matrix
    return rotations.matrix_to_axis_angle(matrix)


def example_pose_names() -> list[str]:
    return sorted(EXAMPLE_DEFINITIONS)


def _check_name(name: str) -> None:
    if name not in EXAMPLE_DEFINITIONS:
        close = difflib.get_close_matches(str(name), EXAMPLE_DEFINITIONS, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise InvalidInputError(f"received the example name {name!r}; expected one of {example_pose_names()}. "
                                f"{hint}List them with `example_pose_names()`.")


def example_axis_angle(name: str = DEFAULT_EXAMPLE) -> np.ndarray:
    """[22, 3] float64 axis-angle of a named example, computed from its definition."""
    _check_name(name)
    aa = np.zeros((NUM_JOINTS, 3))
    for joint, steps in EXAMPLE_DEFINITIONS[name].items():
        aa[JOINT_INDEX[joint]] = _joint_rotation_aa(steps)
    return aa


def example_pose(name: str = DEFAULT_EXAMPLE) -> Pose:
    """The named example built from its code definition (no file access)."""
    return Pose.from_axis_angle(example_axis_angle(name))


def example_pose_path(name: str = DEFAULT_EXAMPLE) -> Path:
    """Path of the shipped .npz file (smplx keys) of a named example."""
    _check_name(name)
    path = EXAMPLES_DIR / f"{name}.npz"
    if not path.is_file():
        raise UniPoseFileNotFoundError(f"received the example name {name!r}, whose file {str(path)!r} is missing; "
                                       f"expected it in the installed package. Reinstall unipose-sdk, or run "
                                       f"`python -m unipose_sdk.body.examples` in a source checkout.")
    return path


def load_example_pose(name: str = DEFAULT_EXAMPLE) -> Pose:
    """A named example pose read from its shipped file (a Pose of batch size 1)."""
    return load_pose(example_pose_path(name))


def example_image_names() -> list[str]:
    return sorted(EXAMPLE_IMAGES)


def example_image_path(name: str = DEFAULT_EXAMPLE_IMAGE) -> Path:
    """Path of a shipped example image (a PNG inside the installed package)."""
    if name not in EXAMPLE_IMAGES:
        close = difflib.get_close_matches(str(name), EXAMPLE_IMAGES, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise InvalidInputError(f"received the example image name {name!r}; expected one of "
                                f"{example_image_names()}. {hint}List them with `example_image_names()`.")
    path = EXAMPLES_DIR / EXAMPLE_IMAGES[name]
    if not path.is_file():
        raise UniPoseFileNotFoundError(f"received the example image name {name!r}, whose file {str(path)!r} is "
                                       f"missing; expected it in the installed package. Reinstall unipose-sdk.")
    return path


def load_example_image(name: str = DEFAULT_EXAMPLE_IMAGE) -> Image.Image:
    """A shipped example image as an RGB PIL image, decoded now (any task takes it as its image input)."""
    from PIL import Image

    with open_regular_file(example_image_path(name), "example image") as handle, Image.open(handle) as image:
        return image.convert("RGB")


def write_example_assets(directory: str | Path | None = None) -> list[Path]:
    """(Re)write every example's .npz file from its definition; returns the written paths."""
    target = Path(directory) if directory is not None else EXAMPLES_DIR
    target.mkdir(parents=True, exist_ok=True)
    return [save_pose(example_pose(name), target / f"{name}.npz") for name in example_pose_names()]


if __name__ == "__main__":
    for written in write_example_assets():
        print(written)
