"""BVH (Biovision hierarchy) files of poses: the 22-joint SMPL tree with the SDK's rest skeleton as offsets.

Writing: one pose is a clip of one frame, a batch of B poses is B frames of one clip. The hierarchy is the SMPL
tree (`unipose_sdk.body.skeleton`), joint names say left and right (`left_hip`, ...), offsets are the built-in
rest skeleton, in metres or centimetres as asked. The root (pelvis) has position channels (the root translation,
zero unless given) and every joint has three rotation channels in the order the file declares (`ZXY` by default,
the order most motion-capture BVH files use): for `ZXY` the local rotation is R = Rz(z) @ Rx(x) @ Ry(y), angles
in degrees, column vectors, +y up (SMPL's frame, which BVH importers expect). Leaf joints (head, feet, wrists)
end in an End Site a short way along their bone so that tools that draw bones between joints show them.

Reading (`read_bvh`): a file whose hierarchy has the same 22 joint names and parents (in any listing order,
any rotation channel order per joint) becomes local rotation matrices, the root translation and the file's
offsets in metres; anything else is a PoseFormatError raised before the motion data is parsed. `Pose.load` and
`read_pose_file` read BVH files through it (this module works on arrays and does not import the Pose type, which
imports it: `Pose.save(path.bvh)` writes through `write_bvh`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipose_sdk.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS, REST_OFFSETS_M
from unipose_sdk.errors import InvalidInputError, InvalidPoseError, PoseFormatError
from unipose_sdk.fileio import atomic_write_text, open_regular_file

CHANNEL_ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
DEFAULT_CHANNEL_ORDER = "ZXY"
UNITS = {"m": 1.0, "cm": 100.0}  # length unit name -> file units per metre
DEFAULT_FRAME_TIME_S = 1.0 / 30.0
# Largest BVH file read (bytes): 22 joints x 3 channels at ~12 characters each is ~1 kB per frame, so this holds
# about 200 000 frames; beyond it the file is no pose clip this reader was written for.
MAX_BVH_BYTES = 256 * 1024 * 1024
# End Site length of each leaf joint (metres) and the direction it points in the rest pose.
_END_SITES_M = {"head": (0.0, 0.10, 0.0), "left_foot": (0.0, 0.0, 0.06), "right_foot": (0.0, 0.0, 0.06),
                "left_wrist": (0.08, 0.0, 0.0), "right_wrist": (-0.08, 0.0, 0.0)}
_CHILDREN: dict[int, list[int]] = {j: [c for c in range(NUM_JOINTS) if PARENTS[c] == j] for j in range(NUM_JOINTS)}


@dataclass(frozen=True)
class BvhClip:
    """What a BVH file holds: local rotations (one pose per frame), root translation and rest offsets in metres."""

    rotmat: np.ndarray  # [B, 22, 3, 3] float64 local rotations, SMPL joint order (`Pose.from_rotmat` takes them)
    transl_m: np.ndarray  # [B, 3] float64 metres
    offsets_m: np.ndarray  # [22, 3] float64 metres, SMPL joint order
    frame_time_s: float


# ---------------------------------------------------------------------------------------------- rotations
def _axis_rotation(axis: int, angle_rad: np.ndarray) -> np.ndarray:
    """[...] angles -> [..., 3, 3] rotations about the x, y or z axis."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    out = np.zeros(angle_rad.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3  # cyclic, so that R_y has +sin at [0, 2]
    out[..., axis, axis] = 1.0
    out[..., i, i], out[..., j, j] = c, c
    out[..., i, j], out[..., j, i] = -s, s
    return out


def euler_to_matrix(angles_rad: np.ndarray, order: str) -> np.ndarray:
    """[..., 3] angles (in the order of `order`, e.g. 'ZXY': z, x, y) -> R = R_first @ R_second @ R_third."""
    axes = ["XYZ".index(a) for a in order]
    r = _axis_rotation(axes[0], angles_rad[..., 0])
    for n in (1, 2):
        r = r @ _axis_rotation(axes[n], angles_rad[..., n])
    return r


def matrix_to_euler(rotmat: np.ndarray, order: str) -> np.ndarray:
    """[..., 3, 3] rotations -> [..., 3] angles (radians) with euler_to_matrix(angles, order) == rotmat.

    The middle angle is in [-pi/2, pi/2]; at gimbal lock (middle angle +-pi/2) the third angle is set to zero."""
    i, j, k = ("XYZ".index(a) for a in order)
    sign = 1.0 if (i, j, k) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1.0  # even permutation of x, y, z
    r = np.asarray(rotmat, dtype=np.float64)
    middle = np.arcsin(np.clip(sign * r[..., i, k], -1.0, 1.0))
    cos_middle = np.sqrt(r[..., i, i] ** 2 + r[..., i, j] ** 2)
    first = np.arctan2(-sign * r[..., j, k], r[..., k, k])
    third = np.arctan2(-sign * r[..., i, j], r[..., i, i])
    locked = cos_middle < 1e-9
    first = np.where(locked, np.arctan2(sign * r[..., k, j], r[..., j, j]), first)
    third = np.where(locked, 0.0, third)
    return np.stack([first, middle, third], axis=-1)


# ---------------------------------------------------------------------------------------------- writing
def local_rotations(pose: Any) -> np.ndarray:
    """A Pose (anything with `.rotmat`) or an array [B, 22, 3, 3] of rotations -> float64 numpy [B, 22, 3, 3]."""
    rotmat = getattr(pose, "rotmat", pose)
    if isinstance(rotmat, torch.Tensor):
        rotmat = rotmat.detach().cpu().double().numpy()
    if not isinstance(rotmat, np.ndarray) or rotmat.ndim != 4 or rotmat.shape[1:] != (NUM_JOINTS, 3, 3) or (
            not np.issubdtype(rotmat.dtype, np.floating)):
        shape = list(rotmat.shape) if isinstance(rotmat, np.ndarray) else None
        raise InvalidInputError(f"received {type(pose).__name__}" + (f" of shape {shape}" if shape else "") +
                                "; expected a Pose or local rotation matrices [B, 22, 3, 3]. Build a Pose with "
                                "`Pose.from_any(x)` (it checks that the matrices are rotations).")
    if rotmat.shape[0] == 0:
        raise InvalidInputError("received 0 poses; expected at least one frame. Pass a non-empty Pose.")
    if not np.all(np.isfinite(rotmat)):
        raise InvalidInputError("received rotation matrices with NaN or infinite values; expected finite numbers.")
    return rotmat.astype(np.float64)


def _check_write_args(units: Any, channel_order: Any, frame_time_s: Any) -> None:
    if units not in UNITS:
        raise InvalidInputError(f"received units={units!r}; expected one of {sorted(UNITS)}. Pass 'm' or 'cm'.")
    if not isinstance(channel_order, str) or channel_order.upper() not in CHANNEL_ORDERS:
        raise InvalidInputError(f"received channel_order={channel_order!r}; expected one of {list(CHANNEL_ORDERS)}. "
                                f"Pass e.g. 'ZXY'.")
    if isinstance(frame_time_s, bool) or not isinstance(frame_time_s, (int, float)) or not (
            math.isfinite(frame_time_s) and frame_time_s > 0):
        raise InvalidInputError(f"received frame_time_s={frame_time_s!r}; expected a positive number of seconds, "
                                f"e.g. {DEFAULT_FRAME_TIME_S:.6f} for 30 frames per second.")


def _transl_array(transl_m: Any, batch: int) -> np.ndarray:
    if transl_m is None:
        return np.zeros((batch, 3))
    if isinstance(transl_m, torch.Tensor):
        transl_m = transl_m.detach().cpu().numpy()
    try:
        transl = np.asarray(transl_m, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"received transl_m of type {type(transl_m).__name__}; expected [3] or "
                                f"[{batch}, 3] metres.") from None
    if transl.shape != (3,) and transl.shape not in ((1, 3), (batch, 3)):
        raise InvalidInputError(f"received transl_m of shape {list(transl.shape)}; expected [3] or [{batch}, 3] "
                                f"metres. Pass one translation per pose.")
    if not np.all(np.isfinite(transl)):
        raise InvalidInputError("received transl_m with NaN or infinite values; expected finite metres.")
    return np.broadcast_to(transl.reshape(-1, 3), (batch, 3)).copy()


def bvh_text(pose: Any, *, transl_m: Any = None, units: str = "m", channel_order: str = DEFAULT_CHANNEL_ORDER,
             frame_time_s: float = DEFAULT_FRAME_TIME_S) -> str:
    """The BVH document of `pose` (a Pose or rotations [B, 22, 3, 3]; see the module doc)."""
    rotmat = local_rotations(pose)
    _check_write_args(units, channel_order, frame_time_s)
    order = channel_order.upper()
    scale = UNITS[units]
    batch = rotmat.shape[0]
    transl = _transl_array(transl_m, batch)
    rotation_channels = " ".join(f"{axis}rotation" for axis in order)
    lines = ["HIERARCHY"]
    listed: list[int] = []

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        offset = REST_OFFSETS_M[j].tolist()
        lines.append(f"{pad}{'ROOT' if j == 0 else 'JOINT'} {JOINT_NAMES[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET " + " ".join(f"{v * scale:.9f}" for v in offset))
        if j == 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition {rotation_channels}")
        else:
            lines.append(f"{pad}  CHANNELS 3 {rotation_channels}")
        listed.append(j)
        for child in _CHILDREN[j]:
            emit(child, depth + 1)
        if not _CHILDREN[j]:
            end = " ".join(f"{v * scale:.9f}" for v in _END_SITES_M[JOINT_NAMES[j]])
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {end}", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    emit(0, 0)
    euler_deg = np.degrees(matrix_to_euler(rotmat, order))  # [B, 22, 3]
    lines += ["MOTION", f"Frames: {batch}", f"Frame Time: {frame_time_s:.9f}"]
    for b in range(batch):
        values = list(transl[b] * scale) + [v for j in listed for v in euler_deg[b, j]]
        lines.append(" ".join(f"{v:.9f}" for v in values))
    return "\n".join(lines) + "\n"


def write_bvh(pose: Any, path: str | os.PathLike, *, transl_m: Any = None, units: str = "m",
              channel_order: str = DEFAULT_CHANNEL_ORDER, frame_time_s: float = DEFAULT_FRAME_TIME_S) -> Path:
    """Write `pose` (a Pose or rotations [B, 22, 3, 3]; B poses = B frames) as a BVH file atomically."""
    text = bvh_text(pose, transl_m=transl_m, units=units, channel_order=channel_order, frame_time_s=frame_time_s)
    return atomic_write_text(Path(path).expanduser(), text)


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class _Joint:
    name: str
    parent: int
    offset: tuple[float, float, float]
    channels: list[str]


_ROTATION_CHANNELS = {"Xrotation": "X", "Yrotation": "Y", "Zrotation": "Z"}
_POSITION_CHANNELS = {"Xposition": 0, "Yposition": 1, "Zposition": 2}


def _parse_hierarchy(tokens: list[str], p: Path) -> tuple[list[_Joint], int]:
    """Tokens of the whole file -> joints in listing order and the index of the token after 'MOTION'."""
    def fail(what: str) -> PoseFormatError:
        return PoseFormatError(f"received {str(p)!r}, a BVH file whose hierarchy {what}; expected the 22-joint "
                               f"SMPL hierarchy unipose writes (joints {', '.join(JOINT_NAMES)}). Export the clip "
                               f"with `unipose pose export` or retarget it to this skeleton first.")

    if not tokens or tokens[0] != "HIERARCHY":
        raise PoseFormatError(f"received {str(p)!r}, which does not start with HIERARCHY; expected a BVH file.")
    joints: list[_Joint] = []
    stack: list[int] = []  # joint indices, -1 for an End Site
    pos = 1
    try:
        while tokens[pos] != "MOTION":
            word = tokens[pos]
            if word in ("ROOT", "JOINT"):
                if (word == "ROOT") != (not joints):
                    raise fail("has more than one ROOT or a JOINT outside it")
                parent = stack[-1] if stack else -1
                if parent == -2:
                    raise fail("has a joint inside an End Site")
                joints.append(_Joint(tokens[pos + 1], parent, (0.0, 0.0, 0.0), []))
                if tokens[pos + 2] != "{":
                    raise fail(f"has no '{{' after {word} {tokens[pos + 1]}")
                stack.append(len(joints) - 1)
                pos += 3
            elif word == "End":
                if tokens[pos + 1] != "Site" or tokens[pos + 2] != "{":
                    raise fail("has an 'End' that is not 'End Site {'")
                stack.append(-2)
                pos += 3
            elif word == "OFFSET":
                values = tuple(float(v) for v in tokens[pos + 1:pos + 4])
                if not all(math.isfinite(v) for v in values):
                    raise fail("has a non-finite OFFSET")
                if stack and stack[-1] >= 0:
                    joints[stack[-1]].offset = values  # type: ignore[assignment]
                pos += 4
            elif word == "CHANNELS":
                count = int(tokens[pos + 1])
                if not stack or stack[-1] < 0 or not 0 <= count <= 6:
                    raise fail("has a CHANNELS line outside a joint or with more than 6 channels")
                joints[stack[-1]].channels = tokens[pos + 2:pos + 2 + count]
                pos += 2 + count
            elif word == "}":
                if not stack:
                    raise fail("closes more braces than it opens")
                stack.pop()
                pos += 1
            else:
                raise fail(f"has the unexpected word {word!r}")
    except IndexError:
        raise fail("ends before the MOTION section") from None
    except ValueError:
        raise fail("has a number that cannot be read") from None
    if stack:
        raise fail("leaves braces open before MOTION")
    return joints, pos + 1


def _match_joints(joints: list[_Joint], p: Path) -> list[int]:
    """Listing index -> SMPL joint index, after checking names, parents and channels."""
    names = [j.name for j in joints]
    if sorted(names) != sorted(JOINT_NAMES):
        raise PoseFormatError(f"received {str(p)!r}, a BVH file with the joints {names}; expected the 22 SMPL joints "
                              f"{list(JOINT_NAMES)}. Retarget the clip to this skeleton first.")
    to_smpl = [JOINT_INDEX[n] for n in names]
    for listed, joint in enumerate(joints):
        smpl = to_smpl[listed]
        parent = -1 if joint.parent < 0 else to_smpl[joint.parent]
        if parent != PARENTS[smpl]:
            expected = "none (the root)" if PARENTS[smpl] < 0 else JOINT_NAMES[PARENTS[smpl]]
            found = "none (the root)" if parent < 0 else JOINT_NAMES[parent]
            raise PoseFormatError(f"received {str(p)!r}, where joint {joint.name!r} has the parent {found}; expected "
                                  f"{expected} (the SMPL tree). Retarget the clip to this skeleton first.")
        rotations = [c for c in joint.channels if c in _ROTATION_CHANNELS]
        unknown = [c for c in joint.channels if c not in _ROTATION_CHANNELS and c not in _POSITION_CHANNELS]
        if len(rotations) != 3 or len(set(rotations)) != 3 or unknown:
            raise PoseFormatError(f"received {str(p)!r}, where joint {joint.name!r} has the channels "
                                  f"{joint.channels}; expected three distinct rotation channels (Xrotation, "
                                  f"Yrotation, Zrotation in any order), plus X/Y/Zposition on the root.")
    return to_smpl


def _guess_scale(offsets: np.ndarray) -> float:
    """File units per metre: a body's leg is ~0.8 m, so a skeleton taller than 10 units is in centimetres."""
    return 100.0 if float(np.abs(offsets).sum(axis=1).max()) > 5.0 else 1.0


def read_bvh(path: str | os.PathLike, *, units: str = "auto") -> BvhClip:
    """Read a BVH file with the SMPL 22-joint hierarchy (see the module doc). `units` is 'm', 'cm' or 'auto'
    (centimetres when the skeleton's bones are longer than 5 units)."""
    if units != "auto" and units not in UNITS:
        raise InvalidInputError(f"received units={units!r}; expected 'auto', 'm' or 'cm'.")
    fix = "Name a BVH file written by unipose (or with the same 22-joint hierarchy)."
    with open_regular_file(path, "BVH file", PoseFormatError, fix) as handle:
        data = handle.read(MAX_BVH_BYTES + 1)
    p = Path(path).expanduser()
    if len(data) > MAX_BVH_BYTES:
        raise PoseFormatError(f"received {str(p)!r}, a file over {MAX_BVH_BYTES} bytes; expected a BVH clip of at "
                              f"most that size. Split the clip into shorter files.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoseFormatError(f"received {str(p)!r}, which is not UTF-8 text ({exc}); expected a BVH file.") from None
    tokens = text.split()
    joints, pos = _parse_hierarchy(tokens, p)
    to_smpl = _match_joints(joints, p)
    try:
        if tokens[pos] != "Frames:" or tokens[pos + 2:pos + 4] != ["Frame", "Time:"]:
            raise ValueError
        frames = int(tokens[pos + 1])
        frame_time = float(tokens[pos + 4])
    except (IndexError, ValueError):
        raise PoseFormatError(f"received {str(p)!r}, whose MOTION section does not start with 'Frames: N' and "
                              f"'Frame Time: T'; expected a complete BVH file.") from None
    width = sum(len(j.channels) for j in joints)
    values_text = tokens[pos + 5:]
    if frames < 1 or len(values_text) != frames * width:
        raise PoseFormatError(f"received {str(p)!r} declaring {frames} frames of {width} channels but holding "
                              f"{len(values_text)} numbers; expected {max(frames, 1) * width}. The file may be cut "
                              f"short; re-export it.")
    try:
        values = np.array(values_text, dtype=np.float64).reshape(frames, width)
    except ValueError:
        raise PoseFormatError(f"received {str(p)!r}, whose MOTION section holds a value that is not a number; "
                              f"expected numbers only.") from None
    if not np.all(np.isfinite(values)):
        raise InvalidPoseError(f"received {str(p)!r} with NaN or infinite channel values; expected finite numbers.")
    offsets = np.zeros((NUM_JOINTS, 3))
    for listed, joint in enumerate(joints):
        offsets[to_smpl[listed]] = joint.offset
    scale = _guess_scale(offsets) if units == "auto" else UNITS[units]
    rotmat = np.zeros((frames, NUM_JOINTS, 3, 3))
    transl = np.zeros((frames, 3))
    column = 0
    for listed, joint in enumerate(joints):
        order = "".join(_ROTATION_CHANNELS[c] for c in joint.channels if c in _ROTATION_CHANNELS)
        rot_columns = [column + n for n, c in enumerate(joint.channels) if c in _ROTATION_CHANNELS]
        for n, c in enumerate(joint.channels):
            if c in _POSITION_CHANNELS and joint.parent < 0:
                transl[:, _POSITION_CHANNELS[c]] = values[:, column + n]
        rotmat[:, to_smpl[listed]] = euler_to_matrix(np.radians(values[:, rot_columns]), order)
        column += len(joint.channels)
    root_offset = offsets[0].copy()
    offsets[0] = 0.0
    return BvhClip(rotmat, (transl + root_offset) / scale, offsets / scale, frame_time)
