"""`Pose`: a batch of body poses in UniPose's 22-joint layout, the type every task takes and returns.

A Pose stores one thing, `rotmat` [B, 22, 3, 3] float32: the local rotation of each joint relative to its
parent (joint 0 = global orientation), in SMPL joint order. Every other form (axis-angle, 6D, SMPL parameters,
joint positions) is computed from it on demand, so there is never a second copy to keep in sync.

Construction validates: the shape must be one of the accepted layouts (the message lists them), values must be
finite, floats only, and matrices must be rotations within a tolerance. Conversions run in float64 and are
stored as float32, so round trips through axis-angle or 6D lose nothing a float32 can hold.

Inputs with more joints than 22 (SMPL's 24, SMPL-H's 52, SMPL-X's 55; their first 22 joints are ours) are
accepted by `from_axis_angle`, `from_rotmat` and `from_any`; the extra hand / face joints are dropped.

Pose files (`Pose.load`, `Pose.save`, `read_pose_file`, `load_pose`, `save_pose`) live below the type: a Pose
loads and saves itself and `from_any` takes a path, while the readers build Poses, so type and files are one
module (the layouts are tabled in `unipose_sdk.body.io`, their public name).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

import unipose_sdk.body.rotations as rotations
from unipose_sdk.body.skeleton import JOINT_NAMES, NUM_JOINTS, forward_kinematics
from unipose_sdk.errors import InvalidInputError, InvalidPoseError, PoseFormatError
from unipose_sdk.fileio import atomic_write, open_regular_file, parse_json

# Joint counts of the body models whose first 22 joints are UniPose's, and what they are called.
_SOURCE_JOINT_COUNTS = {22: "UniPose/SMPL body", 24: "SMPL", 52: "SMPL-H", 55: "SMPL-X"}
# How far from a rotation (max |R R^T - I| + |det R - 1|) an input matrix may be. Loose enough for matrices
# written in float32 or produced by a network, tight enough to catch scales, shears and reflections.
ROTATION_ATOL = 1e-3
_ROTATION_ATOL_HALF = 1e-2  # float16 / bfloat16 inputs carry ~1e-3 relative error per entry
# Largest accepted axis-angle rotation (radians, ~1592 turns). Producers write angles within a few turns; beyond
# this a float32 angle's spacing exceeds 1e-3 rad, so the rotation it names is noise (and at ~1e154 the norm of
# the vector overflows to a NaN matrix). Wrap angles into [-pi, pi] before passing them.
MAX_AXIS_ANGLE_RAD = 1e4
_TORCH_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_AA_SHAPES = ("[B, 66], [B, 22, 3], [66] or [22, 3] (axis-angle, radians; [B, 72 | 156 | 165] and "
              "[B, 24 | 52 | 55, 3] SMPL / SMPL-H / SMPL-X full poses also work, their first 22 joints are kept)")
_ROTMAT_SHAPES = "[B, 22, 3, 3] or [22, 3, 3] (rotation matrices; [B, 24 | 52 | 55, 3, 3] also work)"
_6D_SHAPES = "[B, 22, 6], [22, 6], [B, 132] or [132] (first two rows of each rotation matrix)"


def _describe(x: Any) -> str:
    if isinstance(x, (Tensor, np.ndarray)):
        kind = "torch.Tensor" if isinstance(x, Tensor) else "numpy array"
        return f"a {kind} of shape {list(x.shape)} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


def _as_float_tensor(x: Any, what: str) -> Tensor:
    """Any array-like of floats -> a torch tensor (same device for tensors); rejects ints, bools and non-arrays."""
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidPoseError(f"received a {type(x).__name__} that is not a rectangular array of numbers "
                                   f"({exc}); expected {what}. Pass a numpy array or torch tensor.") from None
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise InvalidPoseError(f"received {_describe(x)}; expected a floating-point array for {what}. "
                                   f"Convert it first, e.g. `x.astype(np.float32)`.")
        if x.dtype not in (np.float16, np.float32, np.float64):
            x = x.astype(np.float64)  # long double has no torch equivalent
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, Tensor):
        if x.dtype not in _TORCH_FLOATS:
            raise InvalidPoseError(f"received {_describe(x)}; expected a floating-point tensor for {what}. "
                                   f"Convert it first, e.g. `x.float()`.")
        return x
    raise InvalidPoseError(f"received {_describe(x)}; expected {what} as a numpy array or torch tensor. "
                           f"Wrap the values with `np.asarray(...)` or `torch.tensor(...)`.")


def _check_finite(x: Tensor, what: str) -> None:
    finite = torch.isfinite(x.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = tuple(int(i) for i in torch.nonzero(~finite)[0])
        raise InvalidPoseError(f"received {what} with {bad} NaN or infinite value(s) (first at index {first}); "
                               f"expected finite numbers. Check the source of the pose (a failed fit or a "
                               f"division by zero upstream) and drop or repair those rows.")


def _check_angles(axis_angle: Tensor) -> None:
    """Every rotation angle (the vector's length) at most MAX_AXIS_ANGLE_RAD."""
    if axis_angle.numel() == 0:
        return
    values = axis_angle.detach().double()
    scale = values.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    angles = (torch.linalg.vector_norm(values / scale, dim=-1, keepdim=True) * scale)[..., 0]  # [B, 22], no overflow
    worst = int(angles.argmax())
    b, j = divmod(worst, angles.shape[1])
    largest = float(angles.reshape(-1)[worst])
    if not largest <= MAX_AXIS_ANGLE_RAD:  # also catches an overflow to inf
        raise InvalidPoseError(
            f"received axis-angle rotations of up to {largest:.3g} rad (joint {j} ({JOINT_NAMES[j]}) of pose {b}); "
            f"expected angles of at most {MAX_AXIS_ANGLE_RAD:g} rad. Wrap the angles into [-pi, pi] (or check "
            f"the units: degrees passed as radians, or a failed fit upstream).")


def _check_rotations(rotmat: Tensor, source_dtype: torch.dtype, atol: float | None, what: str) -> None:
    if rotmat.shape[0] == 0:
        return
    if atol is None:
        atol = _ROTATION_ATOL_HALF if source_dtype in (torch.float16, torch.bfloat16) else ROTATION_ATOL
    error = rotations.rotation_matrix_error(rotmat.detach().double())  # [B, 22]
    # Entries near float64's limit make inf - inf = NaN in R R^T: such a matrix is as far from a rotation as can be.
    error = torch.nan_to_num(error, nan=float("inf"))
    worst = int(error.argmax())
    b, j = divmod(worst, error.shape[1])
    worst_error = float(error.reshape(-1)[worst])
    if not worst_error <= atol:
        raise InvalidPoseError(
            f"received {what} that are not all rotations: the worst is joint {j} ({JOINT_NAMES[j]}) of "
            f"pose {b}, error {worst_error:.3g} (max |R R^T - I| + |det R - 1|), "
            f"{int((error > atol).sum())} matrices over the tolerance; expected proper rotations within {atol:g}. "
            f"Re-orthonormalise them (e.g. through `Pose.from_6d(matrix[..., :2, :])`) or, for row/column "
            f"mix-ups, check that the matrices are not transposed or mirrored.")


def _batched(x: Tensor, event_ndim: int) -> Tensor:
    """Add the batch dimension to an unbatched input."""
    return x.unsqueeze(0) if x.ndim == event_ndim else x


def _first_22(x: Tensor, joint_dim: int) -> Tensor:
    return x.narrow(joint_dim, 0, NUM_JOINTS)


class Pose:
    """A batch of B poses, stored as local rotation matrices [B, 22, 3, 3] float32 (SMPL joint order).

    Build one with a named constructor (`from_axis_angle`, `from_rotmat`, `from_6d`, `from_smpl`, `from_any`,
    `load`); `Pose(rotmat)` validates like `from_rotmat` with the batched shape only.
    """

    __slots__ = ("_rotmat",)

    def __init__(self, rotmat: Tensor | np.ndarray, *, atol: float | None = None) -> None:
        x = _as_float_tensor(rotmat, "rotation matrices [B, 22, 3, 3]")
        if x.ndim != 4 or tuple(x.shape[1:]) != (NUM_JOINTS, 3, 3):
            raise InvalidPoseError(f"received {_describe(x)}; expected rotation matrices [B, 22, 3, 3]. Use "
                                   f"`Pose.from_rotmat` / `Pose.from_any` for other layouts.")
        _check_finite(x, "rotation matrices")
        _check_rotations(x, x.dtype, atol, "rotation matrices")
        self._rotmat = x.to(torch.float32).clone()

    @classmethod
    def _trusted(cls, rotmat_f32: Tensor) -> Pose:
        """Wrap an already valid [B, 22, 3, 3] float32 tensor without checks (slicing, cat, conversions)."""
        pose = cls.__new__(cls)
        pose._rotmat = rotmat_f32
        return pose

    # ------------------------------------------------------------------ constructors
    @classmethod
    def identity(cls, batch_size: int = 1, device: str | torch.device = "cpu") -> Pose:
        """The rest pose (every local rotation = identity): a T-pose facing +z."""
        if not isinstance(batch_size, int) or batch_size < 0:
            raise InvalidPoseError(f"received batch_size={batch_size!r}; expected an int >= 0. Pass e.g. 1.")
        eye = torch.eye(3, dtype=torch.float32, device=device)
        return cls._trusted(eye.expand(batch_size, NUM_JOINTS, 3, 3).clone())

    @classmethod
    def from_axis_angle(cls, axis_angle: Tensor | np.ndarray) -> Pose:
        """[B, 66], [B, 22, 3], [66] or [22, 3] axis-angle vectors (radians); see the module doc for SMPL poses."""
        x = _as_float_tensor(axis_angle, f"axis-angle of shape {_AA_SHAPES}")
        flat_joints = {3 * j: j for j in _SOURCE_JOINT_COUNTS}
        if x.ndim in (1, 2) and x.shape[-1] in flat_joints:
            x = _batched(x, 1).reshape(-1, flat_joints[x.shape[-1]], 3)
        elif x.ndim in (2, 3) and x.shape[-1] == 3 and x.shape[-2] in _SOURCE_JOINT_COUNTS:
            x = _batched(x, 2)
        else:
            raise InvalidPoseError(f"received {_describe(x)}; expected axis-angle of shape {_AA_SHAPES}. "
                                   f"Reshape the array, or use `Pose.from_rotmat` / `Pose.from_6d` for "
                                   f"matrices or 6D rotations.")
        _check_finite(x, "axis-angle")
        x = _first_22(x, 1)
        _check_angles(x)
        rotmat = rotations.axis_angle_to_matrix(x.double())
        return cls._trusted(rotmat.to(torch.float32))

    @classmethod
    def from_rotmat(cls, rotmat: Tensor | np.ndarray, atol: float | None = None) -> Pose:
        """[B, 22, 3, 3] or [22, 3, 3] rotation matrices (the official demo's .npy layout); `atol` overrides the
        rotation tolerance (default 1e-3, 1e-2 for half-precision input)."""
        x = _as_float_tensor(rotmat, f"rotation matrices of shape {_ROTMAT_SHAPES}")
        if not (x.ndim in (3, 4) and tuple(x.shape[-2:]) == (3, 3) and x.shape[-3] in _SOURCE_JOINT_COUNTS):
            raise InvalidPoseError(f"received {_describe(x)}; expected rotation matrices of shape "
                                   f"{_ROTMAT_SHAPES}. Use `Pose.from_axis_angle` / `Pose.from_6d` for other "
                                   f"rotation formats.")
        x = _first_22(_batched(x, 3), 1)
        _check_finite(x, "rotation matrices")
        _check_rotations(x, x.dtype, atol, "rotation matrices")
        return cls._trusted(x.to(torch.float32).clone())

    @classmethod
    def from_6d(cls, rotation_6d: Tensor | np.ndarray) -> Pose:
        """[B, 22, 6], [22, 6], [B, 132] or [132]: the first two rows of each matrix, made orthonormal by
        Gram-Schmidt (so any non-degenerate network output is accepted)."""
        x = _as_float_tensor(rotation_6d, f"6D rotations of shape {_6D_SHAPES}")
        if x.ndim in (1, 2) and x.shape[-1] == 6 * NUM_JOINTS:
            x = _batched(x, 1).reshape(-1, NUM_JOINTS, 6)
        elif x.ndim in (2, 3) and tuple(x.shape[-2:]) == (NUM_JOINTS, 6):
            x = _batched(x, 2)
        else:
            raise InvalidPoseError(f"received {_describe(x)}; expected 6D rotations of shape {_6D_SHAPES}. "
                                   f"Reshape the array, or use `Pose.from_rotmat` / `Pose.from_axis_angle`.")
        _check_finite(x, "6D rotations")
        # Gram-Schmidt does not depend on the scale of a joint's six values; dividing by their largest magnitude
        # keeps values near float64's limit from overflowing to NaN matrices.
        scale = x.detach().double().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        given, x = x, x.double() / scale
        halves = x.detach().reshape(x.shape[0], NUM_JOINTS, 2, 3)
        norms = torch.linalg.vector_norm(halves, dim=-1)  # [B, 22, 2]
        cross = torch.linalg.vector_norm(torch.linalg.cross(halves[..., 0, :], halves[..., 1, :], dim=-1), dim=-1)
        degenerate = (norms.amin(dim=-1) < 1e-6) | (cross < 1e-6 * norms.prod(dim=-1).clamp_min(1e-30))
        if bool(degenerate.any()):
            b, j = (int(i) for i in torch.nonzero(degenerate)[0])
            raise InvalidPoseError(f"received 6D rotations where joint {j} ({JOINT_NAMES[j]}) of pose {b} is "
                                   f"degenerate ({given[b, j].tolist()}: a zero half or two parallel halves); "
                                   f"expected two independent 3-vectors per joint. Check the producer.")
        rotmat = rotations.rotation_6d_to_matrix(x)
        _check_finite(rotmat, "rotation matrices made from the 6D input")
        return cls._trusted(rotmat.to(torch.float32))

    @classmethod
    def from_smpl(cls, global_orient_aa: Tensor | np.ndarray, body_pose_aa: Tensor | np.ndarray) -> Pose:
        """SMPL parameters: global_orient [B, 3] (or [3]) and body_pose [B, 63] / [B, 21, 3] (or unbatched),
        axis-angle radians, as smplx names them."""
        root = _as_float_tensor(global_orient_aa, "global_orient [B, 3] (axis-angle)")
        body = _as_float_tensor(body_pose_aa, "body_pose [B, 63] or [B, 21, 3] (axis-angle)")
        if not (root.ndim in (1, 2) and root.shape[-1] == 3):
            raise InvalidPoseError(f"received global_orient as {_describe(root)}; expected [B, 3] or [3] "
                                   f"axis-angle. Reshape it, e.g. `global_orient.reshape(-1, 3)`.")
        if body.ndim in (2, 3) and tuple(body.shape[-2:]) == (NUM_JOINTS - 1, 3):
            body = _batched(body, 2).reshape(-1, 3 * (NUM_JOINTS - 1))
        elif not (body.ndim in (1, 2) and body.shape[-1] == 3 * (NUM_JOINTS - 1)):
            raise InvalidPoseError(f"received body_pose as {_describe(body)}; expected [B, 63], [B, 21, 3], "
                                   f"[63] or [21, 3] axis-angle (the 21 body joints after the pelvis). For a "
                                   f"full SMPL [B, 69] body_pose use `Pose.from_axis_angle` on the full pose.")
        root, body = _batched(root, 1), _batched(body, 1)
        if root.shape[0] != body.shape[0]:
            raise InvalidPoseError(f"received global_orient for {root.shape[0]} poses and body_pose for "
                                   f"{body.shape[0]}; expected the same batch size. Pass matching rows.")
        return cls.from_axis_angle(torch.cat([root.double(), body.to(device=root.device).double()], dim=1))

    @classmethod
    def from_any(cls, x: Any) -> Pose:
        """A Pose (returned as is), a file path (see the pose files below), a dict of SMPL parameters
        (`global_orient`, `body_pose`), or an array whose shape says its format:
        [..., 66] / [..., 22, 3] axis-angle, [..., 22, 3, 3] matrices, [..., 22, 6] / [..., 132] 6D."""
        if isinstance(x, Pose):
            return x
        if isinstance(x, (str, os.PathLike)):
            return cls.load(x)
        if isinstance(x, dict):
            if "global_orient" in x and "body_pose" in x:
                return cls.from_smpl(x["global_orient"], x["body_pose"])
            raise InvalidPoseError(f"received a dict with keys {sorted(map(str, x))}; expected SMPL parameters "
                                   f"'global_orient' and 'body_pose'. Rename the keys or pass an array.")
        t = _as_float_tensor(x, "a pose array, a Pose or a file path")
        shape = tuple(t.shape)
        if t.ndim in (3, 4) and shape[-2:] == (3, 3) and shape[-3] in _SOURCE_JOINT_COUNTS:
            return cls.from_rotmat(t)
        if (t.ndim in (2, 3) and shape[-2:] == (NUM_JOINTS, 6)) or (t.ndim in (1, 2) and shape[-1] == 6 * NUM_JOINTS):
            return cls.from_6d(t)
        if (t.ndim in (2, 3) and shape[-1] == 3 and shape[-2] in _SOURCE_JOINT_COUNTS) or (
            t.ndim in (1, 2) and shape[-1] in {3 * j for j in _SOURCE_JOINT_COUNTS}
        ):
            return cls.from_axis_angle(t)
        raise InvalidPoseError(f"received {_describe(x)}, which matches no pose layout; expected axis-angle "
                               f"{_AA_SHAPES}, rotation matrices {_ROTMAT_SHAPES} or 6D {_6D_SHAPES}. Reshape "
                               f"the array or call the matching `Pose.from_*` constructor.")

    @classmethod
    def cat(cls, poses: Iterable[Pose]) -> Pose:
        """Concatenate along the batch (on the first pose's device)."""
        poses = list(poses)
        if not poses or not all(isinstance(p, Pose) for p in poses):
            kinds = sorted({type(p).__name__ for p in poses}) or ["nothing"]
            raise InvalidPoseError(f"received a list of {len(poses)} items of type {', '.join(kinds)}; expected "
                                   f"a non-empty list of Pose. Build each item with `Pose.from_any` first.")
        device = poses[0].device
        return cls._trusted(torch.cat([p._rotmat.to(device) for p in poses], dim=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Pose:
        """Read a pose file (.npz smplx / AMASS keys, .npy matrices, JSON), format detected from the content."""
        return load_pose(path)

    def save(self, path: str | os.PathLike, transl_m: Any = None, betas: Any = None) -> None:
        """Write atomically; the format follows the extension (.npz smplx keys, .npy matrices, .json, .bvh, .glb)."""
        save_pose(self, path, transl_m=transl_m, betas=betas)

    # ------------------------------------------------------------------ views
    @property
    def rotmat(self) -> Tensor:
        """[B, 22, 3, 3] float32 local rotations: the canonical storage (treat as read-only)."""
        return self._rotmat

    @property
    def batch_size(self) -> int:
        return int(self._rotmat.shape[0])

    @property
    def device(self) -> torch.device:
        return self._rotmat.device

    def axis_angle(self) -> Tensor:
        """[B, 66] float32 axis-angle (radians, angle in [0, pi]): global orientation then 21 body joints."""
        aa = rotations.matrix_to_axis_angle(self._rotmat.double())
        return aa.reshape(self.batch_size, 3 * NUM_JOINTS).to(torch.float32)

    def rotation_6d(self) -> Tensor:
        """[B, 22, 6] float32: the first two rows of each matrix, what the pose tokenizer reads."""
        return rotations.matrix_to_rotation_6d(self._rotmat)

    @property
    def global_orient_aa(self) -> Tensor:
        """[B, 3] axis-angle of the pelvis (smplx `global_orient`)."""
        return self.axis_angle()[:, :3]

    @property
    def body_pose_aa(self) -> Tensor:
        """[B, 63] axis-angle of joints 1..21 (smplx `body_pose`)."""
        return self.axis_angle()[:, 3:]

    def joints(self, transl_m: Any = None, offsets_m: Tensor | None = None) -> Tensor:
        """[B, 22, 3] float32 joint positions in metres by forward kinematics on the built-in skeleton (or the
        given rest offsets [22, 3] / [B, 22, 3]); `transl_m` [3] or [B, 3] moves the pelvis."""
        transl = None
        if transl_m is not None:
            transl = _as_float_tensor(transl_m, "transl_m [B, 3] or [3] (metres)")
            if not (transl.ndim in (1, 2) and transl.shape[-1] == 3 and (transl.ndim == 1
                                                                        or transl.shape[0] in (1, self.batch_size))):
                raise InvalidPoseError(f"received transl_m as {_describe(transl)}; expected [3] or "
                                       f"[{self.batch_size}, 3] metres for this batch of {self.batch_size} poses.")
            _check_finite(transl, "transl_m")
            transl = transl.to(device=self.device, dtype=torch.float64).reshape(-1, 3).expand(self.batch_size, 3)
        joints_m, _ = forward_kinematics(self._rotmat.double(), offsets_m=offsets_m, transl_m=transl)
        return joints_m.to(torch.float32)

    def to(self, device: str | torch.device) -> Pose:
        return Pose._trusted(self._rotmat.to(device))

    def numpy(self) -> np.ndarray:
        """[B, 22, 3, 3] float32 rotation matrices as a numpy array (a copy)."""
        return self._rotmat.detach().cpu().numpy().copy()

    def to_smpl(self) -> dict[str, Tensor]:
        """{'global_orient': [B, 3], 'body_pose': [B, 63]} axis-angle, ready for smplx's forward()."""
        aa = self.axis_angle()
        return {"global_orient": aa[:, :3], "body_pose": aa[:, 3:]}

    def allclose(self, other: Pose, atol: float = 1e-5) -> bool:
        """Same batch size and every matrix entry within `atol`."""
        return (isinstance(other, Pose) and self.batch_size == other.batch_size
                and bool(torch.allclose(self._rotmat, other._rotmat.to(self.device), atol=atol, rtol=0)))

    # ------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor | np.ndarray) -> Pose:
        """Rows of the batch as a Pose; an integer keeps the batch dimension (a Pose of length 1)."""
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -self.batch_size <= i < self.batch_size:
                raise IndexError(f"pose index {i} is out of range for a batch of {self.batch_size}")
            i %= self.batch_size
            return Pose._trusted(self._rotmat[i:i + 1])
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long) if len(index) else torch.zeros(0, dtype=torch.long)
        if isinstance(index, Tensor) and index.dtype not in (torch.bool, torch.long, torch.int, torch.int16):
            raise IndexError(f"a Pose is indexed by ints, slices, integer or boolean arrays; got dtype {index.dtype}")
        if not isinstance(index, (slice, Tensor)):
            raise IndexError(f"a Pose is indexed by ints, slices, integer or boolean arrays; got "
                             f"{type(index).__name__}")
        return Pose._trusted(self._rotmat[index.to(self.device) if isinstance(index, Tensor) else index])

    def __iter__(self):
        return (self[i] for i in range(self.batch_size))

    def __repr__(self) -> str:
        return f"Pose(batch_size={self.batch_size}, device={self.device})"


# ================================================================================================ pose files
# The layouts, the atomic writes and the checks before reading are described in `unipose_sdk.body.io`.
JSON_FORMAT_NAME = "unipose-pose"
JSON_FORMAT_VERSION = 1
_JSON_ROTATION_FORMATS = {"axis_angle": 3, "rotmat": (3, 3), "rotation_6d": 6}
WRITE_EXTENSIONS = (".npz", ".npy", ".json", ".bvh", ".glb")  # .bvh / .glb: unipose_sdk.body.bvh / .gltf
# The pose JSON nests 5 levels at most (document, poses, pose, joint, matrix row); deeper input is refused before
# it is parsed (a deep enough document would exhaust the parser's recursion).
MAX_JSON_DEPTH = 8

_ACCEPTED_LAYOUTS = (
    "a .npz with smplx keys (global_orient + body_pose [+ transl, betas]) or AMASS keys (root_orient + pose_body, "
    "or poses [N, 66|72|156|165] [+ trans, betas]); a .npy of (22, 3, 3) or (B, 22, 3, 3) rotation matrices; or a "
    f"JSON document with \"format\": \"{JSON_FORMAT_NAME}\"; or a BVH file with the 22-joint SMPL hierarchy"
)


@dataclass(frozen=True)
class PoseFile:
    """What a pose file holds: the poses and, when the file has them, root translation and body shape."""

    pose: Pose
    transl_m: np.ndarray | None  # [B, 3] float32 metres
    betas: np.ndarray | None  # [B, K] or [K] float32 shape coefficients (unused by UniPose, kept for round trips)
    layout: str  # "smplx-npz", "amass-npz", "amass-poses-npz", "npy", "json", "bvh"




# ---------------------------------------------------------------------------------------------- reading
_FILE_FIX = f"Name a pose file ({_ACCEPTED_LAYOUTS})."


def detect_pose_format(path: str | os.PathLike) -> str:
    """'npz', 'npy' or 'json', from the file's first bytes (not its extension)."""
    with open_regular_file(path, "pose file", PoseFormatError, _FILE_FIX) as handle:
        return _format_of(Path(path).expanduser(), handle.read(64))


def _format_of(p: Path, head: bytes) -> str:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
        return "json"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"HIERARCHY"):
        return "bvh"
    if not head:
        found = "an empty file"
    elif head[:1] == b"\x80":
        found = "a Python pickle (e.g. a torch checkpoint or an SMPL model file), which is never unpickled"
    else:
        found = f"a file starting with the bytes {head[:16]!r}"
    raise PoseFormatError(f"received {str(p)!r}: {found}; expected {_ACCEPTED_LAYOUTS}. Convert the pose to one "
                          f"of these layouts (see unipose_sdk.body.io).")


def _pose_error_in(p: Path, exc: InvalidPoseError) -> InvalidPoseError:
    return InvalidPoseError(f"in {str(p)!r}: {exc}")


def _float_array(value: np.ndarray, p: Path, key: str) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.floating):
        raise PoseFormatError(f"received {str(p)!r} whose '{key}' has dtype {value.dtype} and shape "
                              f"{list(value.shape)}; expected floating-point numbers. Re-save it as float32.")
    if not np.all(np.isfinite(value)):
        raise InvalidPoseError(f"received {str(p)!r} whose '{key}' holds NaN or infinite values; expected finite "
                               f"numbers. Repair or drop those rows.")
    with np.errstate(over="ignore"):
        single = value.astype(np.float32)
    if not np.all(np.isfinite(single)):
        worst = float(np.max(np.abs(value)))
        raise InvalidPoseError(f"received {str(p)!r} whose '{key}' holds values up to {worst:.3g}, beyond float32's "
                               f"range (3.4e38); expected values a float32 pose file can hold. Repair the producer.")
    return single


def _optional_transl(value: np.ndarray | None, batch: int, p: Path, key: str) -> np.ndarray | None:
    if value is None:
        return None
    value = _float_array(value, p, key)
    if value.shape == (3,):
        value = value[None]
    if value.ndim != 2 or value.shape[1] != 3 or value.shape[0] not in (1, batch):
        raise PoseFormatError(f"received {str(p)!r} whose '{key}' has shape {list(value.shape)}; expected [{batch}, "
                              f"3] (one translation per pose). Fix or remove '{key}'.")
    return np.broadcast_to(value, (batch, 3)).copy()


def _optional_betas(value: np.ndarray | None, p: Path) -> np.ndarray | None:
    if value is None:
        return None
    value = _float_array(value, p, "betas")
    if value.ndim not in (1, 2):
        raise PoseFormatError(f"received {str(p)!r} whose 'betas' has shape {list(value.shape)}; expected [K] or "
                              f"[B, K]. Fix or remove 'betas'.")
    return value


def _smplx_pose(root: np.ndarray, body: np.ndarray, p: Path) -> Pose:
    """smplx keys hold axis-angle ([B, 3] + [B, 63]) or, for `pose2rot=False` users, matrices."""
    if body.shape[-2:] == (3, 3):
        root_m = root.reshape(-1, 1, 3, 3)
        body_m = body.reshape(-1, body.shape[-3], 3, 3)
        if root_m.shape[0] != body_m.shape[0]:
            raise PoseFormatError(f"received {str(p)!r} with global_orient {list(root.shape)} and body_pose "
                                  f"{list(body.shape)}; expected the same number of poses in both.")
        return Pose.from_rotmat(np.concatenate([root_m, body_m], axis=1))
    return Pose.from_smpl(root, body)


# What numpy and zipfile raise for damaged archives and members (a bad CRC, a truncated stream, a bad header).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, NotImplementedError)


def _read_npz(p: Path, handle: BinaryIO) -> PoseFile:
    try:
        archive = np.load(handle, allow_pickle=False)
    except _DAMAGED as exc:
        raise PoseFormatError(f"received {str(p)!r}, which looks like a .npz archive but cannot be read ({exc}); "
                              f"expected {_ACCEPTED_LAYOUTS}. Re-create the file.") from None
    with archive:
        keys = set(archive.files)

        def get(key: str) -> np.ndarray | None:
            if key not in keys:
                return None
            try:
                value = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):  # an object array: would need unpickling
                    raise PoseFormatError(f"received {str(p)!r} whose '{key}' is a pickled object array; expected "
                                          f"a numeric array. Re-save it with numeric dtypes.") from None
                raise _damaged_member(p, key, exc) from None
            except _DAMAGED as exc:
                raise _damaged_member(p, key, exc) from None
            if not isinstance(value, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
                raise PoseFormatError(f"received {str(p)!r} whose member '{key}' is not a .npy array "
                                      f"({len(value)} bytes without the NumPy header); expected numeric arrays. "
                                      f"Re-create the file with np.savez.")
            return value

        if {"global_orient", "body_pose"} <= keys:
            layout, rot = "smplx-npz", lambda: _smplx_pose(
                _float_array(get("global_orient"), p, "global_orient"), _float_array(get("body_pose"), p,
                                                                                     "body_pose"), p)
            transl_key = "transl"
        elif {"root_orient", "pose_body"} <= keys:
            layout, rot = "amass-npz", lambda: Pose.from_smpl(
                _float_array(get("root_orient"), p, "root_orient"), _float_array(get("pose_body"), p, "pose_body"))
            transl_key = "trans"
        elif "poses" in keys:
            layout, rot = "amass-poses-npz", lambda: Pose.from_any(_float_array(get("poses"), p, "poses"))
            transl_key = "trans"
        else:
            raise PoseFormatError(f"received {str(p)!r}, a .npz with keys {sorted(keys)}; expected "
                                  f"{_ACCEPTED_LAYOUTS}. Rename the arrays to one of these key sets.")
        try:
            pose = rot()
        except PoseFormatError:
            raise
        except InvalidPoseError as exc:
            raise _pose_error_in(p, exc) from None
        transl_key = transl_key if transl_key in keys else ("transl" if "transl" in keys else "trans")
        transl = _optional_transl(get(transl_key), len(pose), p, transl_key)
        return PoseFile(pose, transl, _optional_betas(get("betas"), p), layout)


def _damaged_member(p: Path, key: str, exc: BaseException) -> PoseFormatError:
    return PoseFormatError(f"received {str(p)!r} whose member '{key}' is damaged ({type(exc).__name__}: {exc}); "
                           f"expected a readable .npz archive. Re-create the file (a copy may have been cut short).")


def _read_npy(p: Path, handle: BinaryIO) -> PoseFile:
    try:
        array = np.load(handle, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise PoseFormatError(f"received {str(p)!r}, a .npy that cannot be read ({exc}); expected a numeric "
                                  f"(22, 3, 3) or (B, 22, 3, 3) array. Re-create the file.") from None
        raise PoseFormatError(f"received {str(p)!r}, a .npy that cannot be read without unpickling ({exc}); "
                              f"expected a numeric (22, 3, 3) or (B, 22, 3, 3) array. Re-save it with "
                              f"np.save(path, rotmat.astype(np.float32)).") from None
    except (EOFError, OSError) as exc:
        raise PoseFormatError(f"received {str(p)!r}, a .npy that cannot be read ({exc}); expected a complete "
                              f"numeric array file. Re-create the file (a copy may have been cut short).") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise PoseFormatError(f"received {str(p)!r}, a .npy of dtype {array.dtype} and shape {list(array.shape)}; "
                              f"expected floating-point rotation matrices (22, 3, 3) or (B, 22, 3, 3).")
    if np.issubdtype(array.dtype, np.floating) and array.size:
        array = _float_array(array, p, "array")
    try:
        return PoseFile(Pose.from_any(array), None, None, "npy")
    except InvalidPoseError as exc:
        if "matches no pose layout" in str(exc):
            raise PoseFormatError(f"received {str(p)!r}, a .npy of shape {list(array.shape)}; expected "
                                  f"(22, 3, 3) or (B, 22, 3, 3) rotation matrices (the UniPose demo layout), or "
                                  f"another shape Pose.from_any recognises ([B, 66], [B, 22, 3], [B, 22, 6])."
                                  ) from None
        raise _pose_error_in(p, exc) from None


def _json_numbers(value: Any, p: Path, key: str) -> np.ndarray | None:
    """A rectangular nest of JSON numbers -> float64 array; None when it is ragged or holds anything else
    (numpy alone would turn true into 1.0 and "1.5" into 1.5)."""
    try:
        nest = np.array(value, dtype=object)
    except (ValueError, RecursionError):
        return None
    flat = nest.reshape(-1)
    if not all(type(v) in (int, float) for v in flat):
        return None
    try:
        return nest.astype(np.float64)
    except OverflowError:  # an integer beyond float64
        raise InvalidPoseError(f"received {str(p)!r} whose \"{key}\" holds a number beyond float64's range; "
                               f"expected pose values. Repair the producer.") from None


def _read_json(p: Path, handle: BinaryIO) -> PoseFile:
    doc = parse_json(handle.read(), p, PoseFormatError, MAX_JSON_DEPTH,
                     f"a JSON document with \"format\": \"{JSON_FORMAT_NAME}\"")
    found = f"a JSON {type(doc).__name__}" + (f" with keys {sorted(doc)}" if isinstance(doc, dict) else "")
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT_NAME:
        format_found = doc.get("format") if isinstance(doc, dict) else None
        raise PoseFormatError(f"received {str(p)!r}: {found} and format {format_found!r}; "
                              f"expected a JSON object with \"format\": \"{JSON_FORMAT_NAME}\", \"version\": "
                              f"{JSON_FORMAT_VERSION}, \"rotation_format\" and \"poses\" (see unipose_sdk.body.io).")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > JSON_FORMAT_VERSION or version < 1:
        raise PoseFormatError(f"received {str(p)!r} with version {version!r}; expected version "
                              f"{JSON_FORMAT_VERSION} (an integer). A newer file needs a newer unipose-sdk: "
                              f"upgrade with `pip install -U unipose-sdk`.")
    rotation_format = doc.get("rotation_format")
    if not isinstance(rotation_format, str) or rotation_format not in _JSON_ROTATION_FORMATS or "poses" not in doc:
        raise PoseFormatError(f"received {str(p)!r} with rotation_format {rotation_format!r} and keys "
                              f"{sorted(doc)}; expected a \"poses\" array and rotation_format one of "
                              f"{sorted(_JSON_ROTATION_FORMATS)}.")
    names = doc.get("joint_names")
    if names is not None and (not isinstance(names, list) or names != list(JOINT_NAMES)):
        raise PoseFormatError(f"received {str(p)!r} with joint_names {names}; expected the SMPL order "
                              f"{list(JOINT_NAMES)}. Reorder the joints before saving.")
    event = _JSON_ROTATION_FORMATS[rotation_format]
    event_shape = (22,) + (event if isinstance(event, tuple) else (event,))
    poses = _json_numbers(doc["poses"], p, "poses")
    if poses is None or poses.ndim != 1 + len(event_shape) or poses.shape[1:] != event_shape:
        shape = "not a rectangular array of numbers" if poses is None else f"shape {list(poses.shape)}"
        raise PoseFormatError(f"received {str(p)!r} whose \"poses\" is {shape}; expected [B, "
                              f"{', '.join(map(str, event_shape))}] for rotation_format {rotation_format!r}.")
    constructor = {"axis_angle": Pose.from_axis_angle, "rotmat": Pose.from_rotmat, "rotation_6d": Pose.from_6d}
    try:
        pose = constructor[rotation_format](poses)
    except InvalidPoseError as exc:
        raise _pose_error_in(p, exc) from None

    def optional(key: str) -> np.ndarray | None:
        if doc.get(key) is None:
            return None
        values = _json_numbers(doc[key], p, key)
        if values is None:
            raise PoseFormatError(f"received {str(p)!r} whose \"{key}\" is not an array of numbers; expected "
                                  f"numbers. Fix or remove \"{key}\".")
        return values

    transl = _optional_transl(optional("transl_m"), len(pose), p, "transl_m")
    return PoseFile(pose, transl, _optional_betas(optional("betas"), p), "json")


def read_pose_file(path: str | os.PathLike) -> PoseFile:
    """Read poses and, where present, translation and betas; the layout is recognised from the content."""
    with open_regular_file(path, "pose file", PoseFormatError, _FILE_FIX) as handle:
        p = Path(path).expanduser()
        kind = _format_of(p, handle.read(64))
        if kind != "bvh":
            reader = {"npz": _read_npz, "npy": _read_npy, "json": _read_json}[kind]
            handle.seek(0)
            return reader(p, handle)
    from unipose_sdk.body.bvh import read_bvh  # imported on use: only BVH reads need it

    clip = read_bvh(path)
    try:
        pose = Pose.from_rotmat(clip.rotmat)
    except InvalidPoseError as exc:
        raise _pose_error_in(Path(path).expanduser(), exc) from None
    return PoseFile(pose, clip.transl_m.astype(np.float32), None, "bvh")


def load_pose(path: str | os.PathLike) -> Pose:
    """The poses in a file (see the table at the top of this module)."""
    return read_pose_file(path).pose


# ---------------------------------------------------------------------------------------------- writing
def _as_numpy_f32(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(f"received {what} of type {type(value).__name__}; expected an array of numbers."
                                ) from None
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"received {what} with NaN or infinite values; expected finite numbers.")
    return array


def save_pose(pose: Pose, path: str | os.PathLike, transl_m: Any = None, betas: Any = None) -> Path:
    """Write `pose` atomically; .npz (smplx keys), .npy (demo matrices), .json, .bvh (a clip of B frames, metres)
    or .glb (skeleton nodes and a mannequin; an animation for B > 1; needs the `gltf` extra) by extension.
    Returns the path."""
    if not isinstance(pose, Pose):
        raise InvalidInputError(f"received {type(pose).__name__}; expected a Pose. Build one with "
                                f"`Pose.from_any(x)`.")
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise PoseFormatError(f"received the output path {str(p)!r} with extension {ext or '(none)'!r}; expected "
                              f"one of {', '.join(WRITE_EXTENSIONS)}. Change the file name's extension.")
    batch = len(pose)
    transl = None
    if transl_m is not None:
        transl = _as_numpy_f32(transl_m, "transl_m")
        if transl.shape != (3,) and not (transl.ndim == 2 and transl.shape[1] == 3 and transl.shape[0] in (1, batch)):
            raise InvalidInputError(f"received transl_m of shape {list(transl.shape)}; expected [3] or "
                                    f"[{batch}, 3] metres. Pass one translation per pose.")
        transl = np.broadcast_to(transl.reshape(-1, 3), (batch, 3)).copy()
    betas_arr = None if betas is None else _as_numpy_f32(betas, "betas")
    if betas_arr is not None and betas_arr.ndim not in (1, 2):
        raise InvalidInputError(f"received betas of shape {list(betas_arr.shape)}; expected [K] or [B, K].")
    if ext == ".npy" and (transl is not None or betas_arr is not None):
        raise PoseFormatError(f"received transl_m/betas for {str(p)!r}; expected none: the .npy layout holds "
                              f"rotation matrices only. Save as .npz or .json to keep them.")
    if ext in (".bvh", ".glb") and betas_arr is not None:
        raise PoseFormatError(f"received betas for {str(p)!r}; expected none: {ext} files hold the built-in "
                              f"skeleton, not a body shape. Save as .npz or .json to keep them.")
    if ext == ".bvh":  # the writers are imported on use (the glTF one needs the optional pygltflib)
        from unipose_sdk.body.bvh import write_bvh

        return write_bvh(pose, p, transl_m=transl)
    if ext == ".glb":
        from unipose_sdk.body.gltf import write_glb

        return write_glb(pose, p, transl_m=transl)

    if ext == ".npz":
        aa = pose.axis_angle().detach().cpu().numpy()
        arrays = {"global_orient": aa[:, :3], "body_pose": aa[:, 3:]}
        if transl is not None:
            arrays["transl"] = transl
        if betas_arr is not None:
            arrays["betas"] = betas_arr
        return atomic_write(p, lambda f: np.savez(f, **arrays))
    if ext == ".npy":
        rotmat = pose.numpy()
        return atomic_write(p, lambda f: np.save(f, rotmat[0] if batch == 1 else rotmat))
    doc: dict[str, Any] = {
        "format": JSON_FORMAT_NAME, "version": JSON_FORMAT_VERSION, "rotation_format": "axis_angle",
        "joint_names": list(JOINT_NAMES),
        "poses": pose.axis_angle().detach().cpu().double().reshape(batch, 22, 3).tolist(),
    }
    if transl is not None:
        doc["transl_m"] = transl.astype(np.float64).tolist()
    if betas_arr is not None:
        doc["betas"] = betas_arr.astype(np.float64).tolist()
    payload = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
    return atomic_write(p, lambda f: f.write(payload))
