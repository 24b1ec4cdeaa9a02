"""Rotation conversions: axis-angle, rotation matrices, quaternions and the 6D form UniPose uses.

6D convention (PyTorch3D `matrix_to_rotation_6d`, the one UniPose trains with): the FIRST TWO ROWS of the 3x3
matrix, flattened row-major to 6 numbers. The way back is Gram-Schmidt on those two rows; the third row is their
cross product.

Every function is batched over leading dimensions and accepts a torch tensor or a numpy array; it returns the
same kind it was given (numpy in, numpy out, dtype kept). The maths is done once, in torch.
Quaternions are (w, x, y, z) with w >= 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

ArrayLike = TypeVar("ArrayLike", Tensor, np.ndarray)


def _accepts_numpy(fn: Callable[..., Tensor]) -> Callable[..., ArrayLike]:
    """Run a torch implementation on numpy input too, giving numpy back."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(x, np.ndarray):
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
            out = fn(torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)), *args, **kwargs)
            return out.numpy()
        if not isinstance(x, Tensor):
            raise TypeError(f"{fn.__name__} takes a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
        return fn(x if x.is_floating_point() else x.double(), *args, **kwargs)

    return wrapper


def _check_last_dims(x: Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        raise ValueError(f"{what} must have trailing shape {shape}, got {tuple(x.shape)}")


@_accepts_numpy
def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """[..., 3] axis-angle (radians, direction = axis) -> [..., 3, 3] rotation matrices (Rodrigues)."""
    _check_last_dims(axis_angle, (3,), "axis_angle")
    angle = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)  # [..., 1]
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor series near 0, so small rotations stay exact.
    small = angle < 1e-4
    safe = torch.where(small, torch.ones_like(angle), angle)
    sin_over = torch.where(small, 1 - angle**2 / 6, torch.sin(safe) / safe)
    one_minus_cos_over = torch.where(small, 0.5 - angle**2 / 24, (1 - torch.cos(safe)) / safe**2)
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(axis_angle.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + sin_over[..., None] * skew + one_minus_cos_over[..., None] * (skew @ skew)


@_accepts_numpy
def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 4] unit quaternion (w, x, y, z), w >= 0. Shepperd's method: stable at 180 degrees."""
    _check_last_dims(matrix, (3, 3), "matrix")
    m = matrix.reshape(matrix.shape[:-2] + (9,)).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    t = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )  # 4 * (w^2, x^2, y^2, z^2)
    candidates = torch.stack(
        [
            torch.stack([t[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, t[..., 1], m01 + m10, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m01 + m10, t[..., 2], m12 + m21], dim=-1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, t[..., 3]], dim=-1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4]
    candidates = candidates / (2 * torch.sqrt(t.clamp_min(1e-12)))[..., None]
    best = t.argmax(dim=-1, keepdim=True)[..., None].expand(t.shape[:-1] + (1, 4))
    quat = torch.gather(candidates, -2, best).squeeze(-2)
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    return quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)


@_accepts_numpy
def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """[..., 4] quaternion (w, x, y, z), any norm > 0 -> [..., 3, 3]."""
    _check_last_dims(quaternion, (4,), "quaternion")
    q = quaternion / torch.linalg.vector_norm(quaternion, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


@_accepts_numpy
def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z) -> [..., 3] axis-angle with angle in [0, pi]."""
    _check_last_dims(quaternion, (4,), "quaternion")
    q = quaternion / torch.linalg.vector_norm(quaternion, dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    xyz = q[..., 1:]
    sin_half = torch.linalg.vector_norm(xyz, dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    small = sin_half < 1e-6
    # angle / sin(angle/2) -> 2 as the angle -> 0 (first-order series keeps the tiny rotations exact).
    scale = torch.where(small, 2 + angle**2 / 12, angle / torch.where(small, torch.ones_like(sin_half), sin_half))
    return xyz * scale


@_accepts_numpy
def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 3] axis-angle (angle in [0, pi]), through quaternions for stability."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


@_accepts_numpy
def matrix_to_rotation_6d(matrix: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 6]: the first two rows, flattened (UniPose / PyTorch3D convention)."""
    _check_last_dims(matrix, (3, 3), "matrix")
    return matrix[..., :2, :].reshape(matrix.shape[:-2] + (6,))


@_accepts_numpy
def rotation_6d_to_matrix(rotation_6d: Tensor) -> Tensor:
    """[..., 6] -> [..., 3, 3] by Gram-Schmidt: row 1 = normalised a1, row 2 = a2 minus its row-1 part, normalised,
    row 3 = row 1 x row 2. Any 6 numbers with independent halves give a proper rotation."""
    _check_last_dims(rotation_6d, (6,), "rotation_6d")
    a1, a2 = rotation_6d[..., :3], rotation_6d[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


@_accepts_numpy
def axis_angle_to_rotation_6d(axis_angle: Tensor) -> Tensor:
    return matrix_to_rotation_6d(axis_angle_to_matrix(axis_angle))


@_accepts_numpy
def rotation_6d_to_axis_angle(rotation_6d: Tensor) -> Tensor:
    return matrix_to_axis_angle(rotation_6d_to_matrix(rotation_6d))


@_accepts_numpy
def rotation_matrix_error(matrix: Tensor) -> Tensor:
    """[..., 3, 3] -> [...]: how far each matrix is from a proper rotation: max(|R R^T - I|) + |det R - 1|."""
    _check_last_dims(matrix, (3, 3), "matrix")
    # torch.linalg.det has no float16 / bfloat16 kernels (on CPU): measure those in float32, report in their dtype
    work = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    eye = torch.eye(3, dtype=work.dtype, device=work.device)
    ortho = (work @ work.transpose(-1, -2) - eye).abs().amax(dim=(-1, -2))
    return (ortho + (torch.linalg.det(work) - 1).abs()).to(matrix.dtype)
