"""Pose sampler: anatomically plausible random poses, archetype variations, and their joints.

A pose is sampled as per-joint Euler angles (degrees, R = Rz @ Ry @ Rx in SMPL's local joint frames, see
`archetypes.py` for the axis conventions) and handed out as SMPL axis-angle [n, 66] float32.

Three ways to draw a pose, mixed by `mix` weights:
  archetype  one named posture from `ARCHETYPES` (randomly mirrored), every angle perturbed by Gaussian noise
  blend      a random convex mix of two archetypes' angles, then perturbed
  free       per-joint angles around a relaxed stance, with the couplings real bodies show: left and right
             limbs move together (symmetric), in anti-phase (gait) or independently; the three spine joints
             share one bend / twist / lean, split along the chain
Every body joint is clipped to the limits table `LIMITS_DEG`, so knees and elbows only ever flex one way.
The global orientation is the archetype's (e.g. lying down) plus, if `global_orient="random"`, any yaw and a
small pitch / roll, like the root perturbation used to train the official pose tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from unipose_sdk.body.rotations import matrix_to_axis_angle
from unipose_sdk.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, forward_kinematics
from unipose_sdk.data.archetypes import ARCHETYPE_NAMES, ARCHETYPES, mirror_euler_deg

# Per-joint limits, degrees, for the Euler axes (x, y, z) of the LEFT side and the centre joints. The right
# side is the mirror image (x kept, y and z negated, so min/max swap). Ranges are generous adult active ranges
# of motion; what they exclude is what matters: knees flex only forwards (+x), elbows only one way (left -y).
#
# | joint    | x (min, max)            | y (min, max)               | z (min, max)                  |
# |----------|-------------------------|----------------------------|-------------------------------|
# | hip      | -125 flex .. 35 extend  | -45 .. 50 (rotation)       | -30 adduct .. 75 abduct       |
# | knee     | 0 .. 150 flex           | -10 .. 10                  | -5 .. 5                       |
# | ankle    | -30 .. 50 (toes down +) | -25 .. 25                  | -25 .. 25                     |
# | foot     | -30 .. 30 (toes)        | -5 .. 5                    | -5 .. 5                       |
# | collar   | -15 .. 15               | -25 .. 15 (forwards -)     | -15 .. 30 (shrug +)           |
# | shoulder | -90 .. 90 (twist)       | -120 fwd .. 60 back        | -95 down .. 90 up             |
# | elbow    | -40 .. 40 (twist)       | -150 flex .. 0             | -10 .. 10                     |
# | wrist    | -60 .. 60               | -30 .. 30                  | -70 .. 70                     |
# | spine1   | -20 .. 45 (fwd +)       | -20 .. 20 (twist)          | -20 .. 20 (lean right +)      |
# | spine2   | -15 .. 30               | -20 .. 20                  | -20 .. 20                     |
# | spine3   | -15 .. 25               | -15 .. 15                  | -15 .. 15                     |
# | neck     | -45 .. 40 (nod down +)  | -60 .. 60 (turn left +)    | -30 .. 30 (tilt right +)      |
# | head     | -25 .. 25               | -30 .. 30                  | -20 .. 20                     |
_LEFT_AND_CENTRE_LIMITS_DEG: dict[str, tuple[tuple[float, float], ...]] = {
    "hip": ((-125, 35), (-45, 50), (-30, 75)),
    "knee": ((0, 150), (-10, 10), (-5, 5)),
    "ankle": ((-30, 50), (-25, 25), (-25, 25)),
    "foot": ((-30, 30), (-5, 5), (-5, 5)),
    "collar": ((-15, 15), (-25, 15), (-15, 30)),
    "shoulder": ((-90, 90), (-120, 60), (-95, 90)),
    "elbow": ((-40, 40), (-150, 0), (-10, 10)),
    "wrist": ((-60, 60), (-30, 30), (-70, 70)),
    "spine1": ((-20, 45), (-20, 20), (-20, 20)),
    "spine2": ((-15, 30), (-20, 20), (-20, 20)),
    "spine3": ((-15, 25), (-15, 15), (-15, 15)),
    "neck": ((-45, 40), (-60, 60), (-30, 30)),
    "head": ((-25, 25), (-30, 30), (-20, 20)),
}


def _limits_table() -> tuple[np.ndarray, np.ndarray]:
    low = np.full((NUM_JOINTS, 3), -180.0)
    high = np.full((NUM_JOINTS, 3), 180.0)  # row 0 (global orientation) is unconstrained
    for j, name in enumerate(JOINT_NAMES[1:], start=1):
        side, _, part = name.partition("_")
        if side not in ("left", "right"):
            part = name
        limits = np.array(_LEFT_AND_CENTRE_LIMITS_DEG[part], dtype=np.float64)  # [3 axes, (min, max)]
        if side == "right":
            limits[1:] = -limits[1:, ::-1]
        low[j], high[j] = limits[:, 0], limits[:, 1]
    return low, high


LIMITS_LOW_DEG, LIMITS_HIGH_DEG = _limits_table()  # [22, 3] each
LIMITS_DEG: np.ndarray = np.stack([LIMITS_LOW_DEG, LIMITS_HIGH_DEG], axis=-1)  # [22, 3, 2]

DEFAULT_MIX: dict[str, float] = {"archetype": 0.55, "blend": 0.25, "free": 0.20}
# Training pools add "compose": one archetype's legs, torso and root with the arms of another (both arms, or one),
# so that "squatting with both arms raised" or "lunging with the left hand on the hip" exist as poses; a blend of
# the two archetypes would half-bend both. Evaluation pools keep DEFAULT_MIX, so they never change.
TRAINING_MIX: dict[str, float] = {"archetype": 0.40, "blend": 0.15, "free": 0.15, "compose": 0.30}
MIX_KINDS = ("archetype", "blend", "free", "compose")
ARM_JOINTS: dict[str, tuple[int, ...]] = {
    side: tuple(JOINT_INDEX[f"{side}_{part}"] for part in ("collar", "shoulder", "elbow", "wrist"))
    for side in ("left", "right")}
_BODY_JOINTS = slice(1, NUM_JOINTS)


# ----------------------------------------------------------------------------------------------- conversions
def euler_deg_to_matrix(euler_deg: np.ndarray) -> np.ndarray:
    """[..., 3] Euler angles (x, y, z) in degrees -> [..., 3, 3] rotation R = Rz(z) @ Ry(y) @ Rx(x)."""
    x, y, z = np.moveaxis(np.deg2rad(euler_deg), -1, 0)
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rows = [
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ]
    return np.stack(rows, axis=-1).reshape(np.shape(euler_deg)[:-1] + (3, 3))


def euler_deg_to_axis_angle(euler_deg: np.ndarray) -> np.ndarray:
    """[n, 22, 3] Euler degrees -> [n, 66] float32 axis-angle."""
    aa = matrix_to_axis_angle(euler_deg_to_matrix(np.asarray(euler_deg, dtype=np.float64)))
    return aa.reshape(aa.shape[0], -1).astype(np.float32)


def joints_from_axis_angle(axis_angle: np.ndarray, grounded: bool = True) -> np.ndarray:
    """[n, 66] axis-angle -> [n, 22, 3] float64 joint positions in metres (built-in skeleton).

    grounded: shift every body so its lowest joint touches y = 0 and its pelvis sits above x = z = 0, the
    frame captions and renders measure in (a body alone cannot tell standing from floating, so the lowest
    point is taken as the floor).
    """
    joints, _ = joints_and_rotations(axis_angle, grounded)
    return joints


def joints_and_rotations(axis_angle: np.ndarray, grounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Like `joints_from_axis_angle`, also returning the [n, 22, 3, 3] global joint rotations."""
    from unipose_sdk.body.rotations import axis_angle_to_matrix

    aa = np.asarray(axis_angle, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    rotmat = torch.from_numpy(axis_angle_to_matrix(aa))
    joints_t, global_rot = forward_kinematics(rotmat)
    joints = joints_t.numpy()
    if grounded:
        joints = joints - np.stack(
            [joints[:, 0, 0], joints[:, :, 1].min(axis=1), joints[:, 0, 2]], axis=-1
        )[:, None, :]
    return joints, global_rot.numpy()


# ----------------------------------------------------------------------------------------------- sampling
def clip_to_limits(euler_deg: np.ndarray) -> np.ndarray:
    """Clip the body joints (not the root) of [..., 22, 3] Euler degrees to `LIMITS_DEG`."""
    out = np.array(euler_deg, dtype=np.float64, copy=True)
    out[..., _BODY_JOINTS, :] = np.clip(out[..., _BODY_JOINTS, :], LIMITS_LOW_DEG[_BODY_JOINTS],
                                        LIMITS_HIGH_DEG[_BODY_JOINTS])
    return out


def _perturb(euler_deg: np.ndarray, rng: np.random.Generator, scale_deg: float) -> np.ndarray:
    # Noise proportional to each joint's range (a 150-degree knee wobbles more than a 10-degree twist).
    span = (LIMITS_HIGH_DEG - LIMITS_LOW_DEG)[_BODY_JOINTS]
    noise = rng.normal(size=euler_deg.shape[:-2] + span.shape) * span / 120.0 * scale_deg
    out = euler_deg.copy()
    out[..., _BODY_JOINTS, :] += noise
    return out


def _free_pose(rng: np.random.Generator) -> np.ndarray:
    """One pose from the coupled per-joint model (see the module docstring)."""
    span = LIMITS_HIGH_DEG - LIMITS_LOW_DEG
    centre = ARCHETYPES["standing"].copy()
    z = rng.normal(size=(NUM_JOINTS, 3))  # standardised deviations
    # Left/right coupling: right = rho * mirror(left) + sqrt(1 - rho^2) * own noise.
    rho = rng.choice([0.9, -0.7, 0.0], p=[0.4, 0.3, 0.3])
    mirrored = mirror_euler_deg(z[None])[0]
    right = [j for j, n in enumerate(JOINT_NAMES) if n.startswith("right_")]
    z[right] = rho * mirrored[right] + np.sqrt(1.0 - rho**2) * z[right]
    # Spine chain: one shared bend / twist / lean split 40/35/25 over spine1..3, plus a little own noise.
    shared = rng.normal(size=3)
    for name, share in (("spine1", 0.4), ("spine2", 0.35), ("spine3", 0.25)):
        z[JOINT_INDEX[name]] = 2.0 * share * shared + 0.3 * z[JOINT_INDEX[name]]
    euler = centre + z * span / 4.0
    euler[0] = 0.0
    # Flexion-only joints drawn from half-normals so bent knees/elbows are common, straight ones too.
    for name, axis, sign in (("knee", 0, 1.0), ("elbow", 1, -1.0)):
        for side, mirror in (("left", 1.0), ("right", -1.0 if axis else 1.0)):
            flex = abs(rng.normal(0.0, 55.0))
            euler[JOINT_INDEX[f"{side}_{name}"], axis] = sign * mirror * flex
    return euler


def _random_root(rng: np.random.Generator, n: int, max_tilt_deg: float) -> np.ndarray:
    """[n, 3, 3] rotations: any yaw about +y, then pitch / roll within +-max_tilt_deg."""
    yaw = rng.uniform(-180.0, 180.0, size=n)
    tilt = np.clip(rng.normal(0.0, max_tilt_deg / 2.0, size=(n, 2)), -max_tilt_deg, max_tilt_deg)
    return euler_deg_to_matrix(np.stack([tilt[:, 0], yaw, tilt[:, 1]], axis=-1))


def sample_euler_deg(
    n: int,
    rng: np.random.Generator,
    mix: Mapping[str, float] | None = None,
    archetypes: tuple[str, ...] | None = None,
    noise_deg: float = 8.0,
) -> tuple[np.ndarray, list[str]]:
    """[n, 22, 3] clipped Euler degrees (root = the archetype's own root) and one label per pose.

    Labels: the archetype name, "blend:a+b", "compose:a+b:SIDES" (a's body with b's arms on SIDES) or "free".
    Mirrored archetypes keep their name.
    """
    weights = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(weights) - set(MIX_KINDS)
    if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"mix must weight some of {list(MIX_KINDS)} with non-negative numbers, got {dict(weights)}")
    kinds = list(weights)
    probs = np.array([weights[k] for k in kinds], dtype=np.float64)
    names = tuple(ARCHETYPE_NAMES if archetypes is None else archetypes)
    out = np.zeros((n, NUM_JOINTS, 3))
    labels: list[str] = []
    for i, kind in enumerate(rng.choice(len(kinds), size=n, p=probs / probs.sum())):
        kind = kinds[kind]
        if kind == "archetype":
            name = names[rng.integers(len(names))]
            euler, label = ARCHETYPES[name].copy(), name
            euler = _perturb(euler, rng, noise_deg)
        elif kind == "blend":
            a, b = rng.choice(len(names), size=2, replace=False)
            w = rng.uniform(0.2, 0.8)
            # Blend only body joints; the root comes from the heavier partner so a blend never half-lies.
            euler = w * ARCHETYPES[names[a]] + (1 - w) * ARCHETYPES[names[b]]
            euler[0] = ARCHETYPES[names[a] if w >= 0.5 else names[b]][0]
            euler = _perturb(euler, rng, noise_deg)
            label = f"blend:{names[a]}+{names[b]}"
        elif kind == "compose":
            a, b = rng.choice(len(names), size=2, replace=False)
            euler = ARCHETYPES[names[a]].copy()
            sides = ("left", "right") if rng.random() < 0.5 else (("left", "right")[rng.integers(2)],)
            for side in sides:
                # The arm of b (possibly mirrored: b's right arm on a's left side keeps one-arm archetypes useful).
                source = mirror_euler_deg(ARCHETYPES[names[b]]) if rng.random() < 0.5 else ARCHETYPES[names[b]]
                euler[list(ARM_JOINTS[side])] = source[list(ARM_JOINTS[side])]
            euler = _perturb(euler, rng, noise_deg)
            label = f"compose:{names[a]}+{names[b]}:{'+'.join(sides)}"
        else:
            euler, label = _free_pose(rng), "free"
        if rng.random() < 0.5:
            euler = mirror_euler_deg(euler)
        out[i] = clip_to_limits(euler)
        labels.append(label)
    return out, labels


def sample_poses(
    n: int,
    seed: int | np.random.Generator = 0,
    mix: Mapping[str, float] | None = None,
    global_orient: str = "upright",
    archetypes: tuple[str, ...] | None = None,
    noise_deg: float = 8.0,
    max_tilt_deg: float = 15.0,
) -> tuple[np.ndarray, list[str]]:
    """Sample n plausible poses.

    seed: an int or a numpy Generator (deterministic given either).
    mix: weights for "archetype", "blend", "free", "compose" (default `DEFAULT_MIX`; training pools use
        `TRAINING_MIX`).
    global_orient: "upright" keeps each archetype's own root (facing +z); "random" adds any yaw and a
        pitch / roll within +-max_tilt_deg on top of it.
    Returns (axis_angle [n, 66] float32, labels: list of n strings).
    """
    if global_orient not in ("upright", "random"):
        raise ValueError(f"global_orient must be 'upright' or 'random', got {global_orient!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    euler, labels = sample_euler_deg(n, rng, mix, archetypes, noise_deg)
    rotmat = euler_deg_to_matrix(euler)  # [n, 22, 3, 3]
    if global_orient == "random":
        rotmat[:, 0] = _random_root(rng, n, max_tilt_deg) @ rotmat[:, 0]
    aa = matrix_to_axis_angle(rotmat)
    return aa.reshape(n, NUM_JOINTS * 3).astype(np.float32), labels
