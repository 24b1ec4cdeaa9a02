"""Rotation conversions: round trips (torch and numpy, float32 and float64, batched), edge angles, the 6D rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from unipose_sdk.body import rotations as R

SETTINGS = settings(max_examples=40, deadline=None)
# float64 round trips must be exact to 1e-5; float32 ones lose ~1e-6 per op.
ATOL = {np.float64: 1e-5, np.float32: 1e-4}


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@st.composite
def axis_angles(draw, max_angle: float = math.pi - 1e-3):
    """[B, 3] axis-angles with angles in [0, max_angle] (below pi: the axis-angle of 180 degrees is not unique)."""
    batch = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    angles = draw(arrays(np.float64, (batch,), elements=st.floats(0.0, max_angle)))
    return _unit_vectors(rng, batch) * angles[:, None]


def _random_rotmats(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=shape + (4,))
    return R.quaternion_to_matrix(q)


def _as(kind: str, x: np.ndarray, dtype):
    x = x.astype(dtype)
    return torch.from_numpy(x) if kind == "torch" else x


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(aa=axis_angles())
def test_axis_angle_matrix_round_trip(kind, dtype, aa) -> None:
    x = _as(kind, aa, dtype)
    mat = R.axis_angle_to_matrix(x)
    assert type(mat) is type(x) and mat.shape == aa.shape + (3,)
    assert _np(mat).dtype == dtype  # same kind and dtype out as in
    back = R.matrix_to_axis_angle(mat)
    assert type(back) is type(x) and _np(back).dtype == dtype
    np.testing.assert_allclose(_np(back), aa, atol=ATOL[dtype])


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5))
def test_matrix_6d_round_trip_and_quaternion_round_trip(kind, dtype, seed, batch) -> None:
    mats = _random_rotmats(seed, (batch, 2))
    x = _as(kind, mats, dtype)
    six = R.matrix_to_rotation_6d(x)
    assert six.shape == (batch, 2, 6)
    np.testing.assert_allclose(_np(R.rotation_6d_to_matrix(six)), mats, atol=ATOL[dtype])
    quat = R.matrix_to_quaternion(x)
    assert np.all(_np(quat)[..., 0] >= 0), "w >= 0 convention"
    np.testing.assert_allclose(np.linalg.norm(_np(quat), axis=-1), 1.0, atol=ATOL[dtype])
    np.testing.assert_allclose(_np(R.quaternion_to_matrix(quat)), mats, atol=ATOL[dtype])


@SETTINGS
@given(aa=axis_angles())
def test_quaternion_axis_angle_round_trip_float64(aa) -> None:
    quat = R.matrix_to_quaternion(R.axis_angle_to_matrix(aa))
    np.testing.assert_allclose(R.quaternion_to_axis_angle(quat), aa, atol=1e-5)
    # q and -q are the same rotation; the conversion must not care
    np.testing.assert_allclose(R.quaternion_to_axis_angle(-quat), aa, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_gram_schmidt_of_random_6d_is_a_proper_rotation(seed) -> None:
    six = np.random.default_rng(seed).normal(size=(8, 6)) * 3.0
    mat = R.rotation_6d_to_matrix(six)
    np.testing.assert_allclose(mat @ np.swapaxes(mat, -1, -2), np.broadcast_to(np.eye(3), mat.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(mat), 1.0, atol=1e-10)
    assert np.all(R.rotation_matrix_error(mat) < 1e-9)
    # the first row is the normalised first half: Gram-Schmidt keeps its direction
    np.testing.assert_allclose(mat[:, 0], six[:, :3] / np.linalg.norm(six[:, :3], axis=-1, keepdims=True), atol=1e-12)


def test_6d_is_the_first_two_rows() -> None:
    mat = _random_rotmats(3, (4,))
    six = R.matrix_to_rotation_6d(mat)
    np.testing.assert_array_equal(six[:, :3], mat[:, 0, :])
    np.testing.assert_array_equal(six[:, 3:], mat[:, 1, :])
    # and not the columns: a rotation about z by 90 deg has rows (0,-1,0), (1,0,0)
    rz = R.axis_angle_to_matrix(np.array([0.0, 0.0, math.pi / 2]))
    np.testing.assert_allclose(R.matrix_to_rotation_6d(rz), [0, -1, 0, 1, 0, 0], atol=1e-12)


def test_rodrigues_matches_known_rotations() -> None:
    # +90 deg about z maps +x to +y (right-handed); about x maps +y to +z
    rz = R.axis_angle_to_matrix(np.array([0.0, 0.0, math.pi / 2]))
    np.testing.assert_allclose(rz @ np.array([1.0, 0, 0]), [0, 1, 0], atol=1e-12)
    rx = R.axis_angle_to_matrix(np.array([math.pi / 2, 0.0, 0.0]))
    np.testing.assert_allclose(rx @ np.array([0, 1.0, 0]), [0, 0, 1], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-8, 1e-6, 1e-4 * 0.999, 1e-4 * 1.001, 1e-3])
def test_near_zero_angles_stay_exact(dtype, angle) -> None:
    aa = (_unit_vectors(np.random.default_rng(1), 5) * angle).astype(dtype)
    mat = R.axis_angle_to_matrix(aa)
    assert np.all(np.isfinite(mat))
    np.testing.assert_allclose(R.matrix_to_axis_angle(mat), aa, atol=ATOL[dtype] * 0.1)
    # the Taylor branch and the closed form agree at the switch
    expected = np.eye(3) + np.stack([np.cross(np.eye(3), v) for v in aa.astype(np.float64)])
    np.testing.assert_allclose(mat, expected, atol=max(angle**2, 1e-7))


@pytest.mark.parametrize("delta", [0.0, 1e-7, 1e-5, 1e-3])
def test_near_pi_rotations(delta) -> None:
    axes = _unit_vectors(np.random.default_rng(2), 16)
    aa = axes * (math.pi - delta)
    mat = R.axis_angle_to_matrix(aa)
    back = R.matrix_to_axis_angle(mat)
    np.testing.assert_allclose(np.linalg.norm(back, axis=-1), math.pi - delta, atol=1e-6)
    # at pi itself the axis sign is ambiguous: compare rotations, not vectors
    np.testing.assert_allclose(R.axis_angle_to_matrix(back), mat, atol=1e-6)
    if delta >= 1e-5:
        np.testing.assert_allclose(back, aa, atol=1e-5)


def test_quaternion_to_matrix_normalises_its_input() -> None:
    q = np.array([[2.0, 0.0, 0.0, 2.0]])  # 90 deg about z, not unit length
    np.testing.assert_allclose(R.quaternion_to_matrix(q)[0], R.axis_angle_to_matrix(np.array([0, 0, math.pi / 2])),
                               atol=1e-12)


def test_rotation_matrix_error_flags_non_rotations() -> None:
    mat = _random_rotmats(5, (3,))
    assert np.all(R.rotation_matrix_error(mat) < 1e-12)
    assert R.rotation_matrix_error(-np.eye(3)) == pytest.approx(2.0)  # a reflection: orthogonal but det -1
    assert R.rotation_matrix_error(1.1 * np.eye(3)) > 0.2  # a scale
    np.testing.assert_allclose(R.rotation_matrix_error(np.zeros((2, 4, 3, 3))), np.full((2, 4), 2.0))


def test_integer_input_is_promoted_and_bad_input_rejected() -> None:
    out = R.axis_angle_to_matrix(np.zeros((2, 3), dtype=np.int64))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.broadcast_to(np.eye(3), (2, 3, 3)))
    out_t = R.axis_angle_to_matrix(torch.zeros(2, 3, dtype=torch.int32))
    assert out_t.dtype == torch.float64
    with pytest.raises(TypeError, match="list"):
        R.axis_angle_to_matrix([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"trailing shape \(3, 3\)"):
        R.matrix_to_quaternion(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"trailing shape \(6,\)"):
        R.rotation_6d_to_matrix(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"trailing shape \(3, 3\)"):
        R.matrix_to_rotation_6d(np.zeros(3))


def test_torch_gradients_are_finite_at_zero() -> None:
    aa = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    R.axis_angle_to_matrix(aa).sum().backward()
    assert torch.all(torch.isfinite(aa.grad))


@pytest.mark.parametrize("x", [np.eye(3, dtype=np.float16)[None], torch.eye(3, dtype=torch.bfloat16)[None],
                               torch.eye(3, dtype=torch.float16)[None]])
def test_half_precision_inputs_work_and_keep_their_dtype(x) -> None:
    """torch.linalg.det has no half kernels on CPU: rotation_matrix_error must still answer (a bug fixed here)."""
    error = R.rotation_matrix_error(x)
    assert error.dtype == x.dtype and float(error[0]) == 0.0
    assert R.matrix_to_axis_angle(x).dtype == x.dtype
    assert R.rotation_6d_to_matrix(R.matrix_to_rotation_6d(x)).dtype == x.dtype
