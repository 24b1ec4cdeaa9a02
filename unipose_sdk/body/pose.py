"""`Pose`: a batch of body poses in UniPose's 22-joint layout, the type every task takes and returns.

A Pose stores one thing, `rotmat` [B, 22, 3, 3] float32: the local rotation of each joint relative to its
parent (joint 0 = global orientation), in SMPL joint order. Every other form (axis-angle, 6D, SMPL parameters,
joint positions) is computed from it on demand, so there is never a second copy to keep in sync.

Construction validates: the shape must be one of the accepted layouts (the message lists them), values must be
finite, floats only, and matrices must be rotations within a tolerance. Conversions run in float64 and are
stored as float32, so round trips through axis-angle or 6D lose nothing a float32 can hold.

Inputs with more joints than 22 (SMPL's 24, SMPL-H's 52, SMPL-X's 55; their first 22 joints are ours) are
accepted by `from_axis_angle`, `from_rotmat` and `from_any`; the extra hand / face joints are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipose_sdk.body import rotations
from unipose_sdk.body.skeleton import JOINT_NAMES, NUM_JOINTS, forward_kinematics
from unipose_sdk.errors import InvalidPoseError

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
        """A Pose (returned as is), a file path (see `unipose_sdk.body.io`), a dict of SMPL parameters
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
        from unipose_sdk.body.io import load_pose

        return load_pose(path)

    def save(self, path: str | os.PathLike, transl_m: Any = None, betas: Any = None) -> None:
        """Write atomically; the format follows the extension (.npz smplx keys, .npy matrices, .json)."""
        from unipose_sdk.body.io import save_pose

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
