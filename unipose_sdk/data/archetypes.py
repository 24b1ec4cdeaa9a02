"""A library of named body postures, written as per-joint Euler angles in SMPL's local joint frames.

Every archetype is a [22, 3] array of Euler angles in DEGREES, (x, y, z) per joint, composed as
R = Rz(z) @ Ry(y) @ Rx(x) (see `unipose_sdk.data.poses.euler_deg_to_matrix`). Row 0 is the global orientation.

Axis conventions, checked with forward kinematics on the built-in skeleton (rest pose = T-pose, every local frame
aligned with the world: +x = the body's left, +y = up, +z = forward):
  knee   +x flexes (the ankle moves backwards);              hip  -x raises the thigh forwards, +x extends it back
  hip    +z moves the LEFT leg outwards (abduction);         the right side mirrors y and z (see below)
  shoulder (left) -z lowers the arm, +z raises it, -y swings it forwards, +x twists it about its own axis
  elbow  (left) -y flexes (forearm comes forwards in the T-pose)
  spine  +x bends forwards, +z leans to the body's RIGHT, +y twists the chest to the left
  neck/head +x nods down, +y turns the face to the left, +z tilts the head to the right
  root   -90 about x lays the body on its back (face up), +90 on its front

Mirroring a pose across the body's sagittal plane keeps every x angle and negates y and z (rotation vectors are
pseudo-vectors), and swaps left and right joints. Archetypes are therefore written for the LEFT side, with
helper keys that set both sides at once: "hips", "knees", "ankles", "feet", "collars", "shoulders", "elbows",
"wrists" give the LEFT value and the mirrored RIGHT value.
"""

from __future__ import annotations

import numpy as np

from unipose_sdk.body.skeleton import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS

_BOTH_SIDES = ("hip", "knee", "ankle", "foot", "collar", "shoulder", "elbow", "wrist")


def mirror_euler_deg(euler_deg: np.ndarray) -> np.ndarray:
    """[..., 22, 3] Euler angles -> the left/right mirror image: joints swapped, y and z negated."""
    from unipose_sdk.body.skeleton import mirror_joint_index

    order = [mirror_joint_index(j) for j in range(NUM_JOINTS)]
    mirrored = euler_deg[..., order, :].copy()
    mirrored[..., 1:] *= -1.0
    return mirrored


def _make(**joint_deg: tuple[float, float, float]) -> np.ndarray:
    """Build a [22, 3] Euler-degree pose from keyword joint angles (unset joints stay at 0)."""
    euler = np.zeros((NUM_JOINTS, 3), dtype=np.float64)
    for key, (x, y, z) in joint_deg.items():
        if key == "root":
            euler[0] = (x, y, z)
        elif key.endswith("s") and key[:-1] in _BOTH_SIDES or key == "feet":
            part = "foot" if key == "feet" else key[:-1]
            euler[JOINT_INDEX[f"left_{part}"]] = (x, y, z)
            euler[JOINT_INDEX[f"right_{part}"]] = (x, -y, -z)
        else:
            euler[JOINT_INDEX[key]] = (x, y, z)
    return euler


# Arms hanging relaxed at the sides: the collar drops slightly and the shoulder lowers the arm ~75 degrees.
_ARMS_DOWN = {"collars": (0, 0, -5), "shoulders": (0, 0, -72), "elbows": (0, -12, 0)}

ARCHETYPES: dict[str, np.ndarray] = {
    "standing": _make(**_ARMS_DOWN, spine1=(2, 0, 0)),
    "t_pose": _make(),
    "a_pose": _make(shoulders=(0, 0, -40)),
    "walking": _make(
        collars=(0, 0, -5), left_shoulder=(0, 22, -72), right_shoulder=(0, 22, 72),
        elbows=(0, -25, 0), left_hip=(-28, 0, 0), right_hip=(15, 0, 0), left_knee=(8, 0, 0),
        right_knee=(35, 0, 0), left_ankle=(-5, 0, 0), right_ankle=(15, 0, 0),
    ),
    "running": _make(
        collars=(0, 0, -5), left_shoulder=(0, 45, -70), right_shoulder=(0, 45, 70), elbows=(0, -95, 0),
        left_hip=(-65, 0, 0), right_hip=(20, 0, 0), left_knee=(75, 0, 0), right_knee=(95, 0, 0),
        left_ankle=(10, 0, 0), right_ankle=(30, 0, 0), spine1=(12, 0, 0), spine2=(5, 0, 0),
    ),
    "sitting": _make(
        **{**_ARMS_DOWN, "shoulders": (0, -20, -72), "elbows": (0, -60, 0)},
        hips=(-88, 0, 4), knees=(88, 0, 0), spine1=(-5, 0, 0),
    ),
    "sitting_cross_legged": _make(
        shoulders=(0, -25, -70), elbows=(0, -45, 0), hips=(-110, 20, -24), knees=(131, 10, 5), spine1=(5, 0, 0),
    ),
    # Deep squat: the pelvis tips forwards (root +25) so thighs end near horizontal, shanks lean forwards.
    "squatting": _make(
        root=(25, 0, 0), shoulders=(0, -70, -20), elbows=(0, -10, 0), hips=(-105, 0, 30), knees=(120, 0, 0),
        ankles=(-30, 0, 0), spine1=(10, 0, 0), spine2=(5, 0, 0), neck=(-25, 0, 0),
    ),
    "kneeling": _make(
        **_ARMS_DOWN, hips=(-5, 0, 3), knees=(95, 0, 0), ankles=(40, 0, 0),
    ),
    "kneeling_one_knee": _make(
        **_ARMS_DOWN, left_hip=(-90, 0, 5), left_knee=(92, 0, 0), right_hip=(2, 0, -3),
        right_knee=(92, 0, 0), right_ankle=(40, 0, 0),
    ),
    "lunging": _make(
        collars=(0, 0, 10), shoulders=(0, 0, 70), elbows=(0, -5, 0), left_hip=(-80, 0, 3), left_knee=(88, 0, 0),
        right_hip=(35, 0, -3), right_knee=(15, 0, 0), right_ankle=(-25, 0, 0),
    ),
    "jumping_star": _make(
        collars=(0, 0, 10), shoulders=(0, 0, 45), hips=(0, 0, 30), knees=(10, 0, 0), ankles=(25, 0, 0),
    ),
    "jumping_tuck": _make(
        shoulders=(0, -60, -40), elbows=(0, -70, 0), hips=(-95, 0, 10), knees=(120, 0, 0), ankles=(30, 0, 0),
        spine1=(15, 0, 0),
    ),
    # Twisting the upper arm about its own axis (+x on the left) turns elbow flexion towards the midline.
    "arms_crossed": _make(
        collars=(0, 0, -5), left_shoulder=(68, -28, -95), left_elbow=(40, -100, 10), right_shoulder=(72, 21, 94),
        right_elbow=(40, 98, -10),
    ),
    "hands_on_hips": _make(collars=(0, 0, -5), shoulders=(80, 5, -58), elbows=(39, -83, -10)),
    "reaching_up": _make(collars=(0, 0, 15), shoulders=(0, 0, 72), elbows=(0, -5, 0), neck=(-20, 0, 0)),
    "reaching_forward": _make(collars=(0, -10, 0), shoulders=(0, -85, -5), elbows=(0, -5, 0), spine1=(15, 0, 0)),
    "bending_forward": _make(
        shoulders=(0, -75, -10), elbows=(0, -5, 0), hips=(-55, 0, 0), spine1=(40, 0, 0), spine2=(25, 0, 0),
        spine3=(15, 0, 0), neck=(-15, 0, 0),
    ),
    "lying_on_back": _make(root=(-90, 0, 0), **_ARMS_DOWN),
    "lying_on_front": _make(root=(90, 0, 0), shoulders=(0, 0, 60), elbows=(0, -60, 0), neck=(-30, 0, 0)),
    "lying_on_side": _make(root=(0, 0, 90), left_shoulder=(0, -80, 0), right_shoulder=(0, 0, 72),
                           hips=(-30, 0, 0), knees=(50, 0, 0), neck=(0, 0, -20)),
    "tree_pose": _make(
        collars=(0, 0, 15), shoulders=(0, 0, 80), elbows=(0, -15, 0), left_hip=(-36, 50, 25),
        left_knee=(131, 6, 5), left_ankle=(30, 0, 0),
    ),
    "warrior_two": _make(
        left_hip=(-25, -45, 45), left_knee=(85, 0, 0), right_hip=(5, 15, -35), right_knee=(5, 0, 0),
        neck=(0, 60, 0),
    ),
    "airplane_balance": _make(
        root=(75, 0, 0), collars=(0, 0, 15), shoulders=(0, 0, 75), left_hip=(-75, 0, 0), left_knee=(5, 0, 0),
        right_hip=(5, 0, 0), neck=(-40, 0, 0),
    ),
    "waving": _make(
        **_ARMS_DOWN, left_collar=(0, 0, 5), left_shoulder=(-90, 0, 20), left_elbow=(0, -100, 0),
    ),
    "thinking": _make(
        left_shoulder=(37, -59, -95), left_elbow=(40, -127, 10), right_shoulder=(90, 41, 87),
        right_elbow=(39, 84, -6), neck=(15, 0, 0),
    ),
}

# The postures every pool is drawn from; the evaluation pool is drawn from these alone, so every evaluation since
# unipose-tiny v1 scores the same poses.
ARCHETYPE_NAMES: tuple[str, ...] = tuple(ARCHETYPES)

# Postures the free-form prompts ask for that the archetypes above never produce (the v2 training pool held no
# upside-down pose, and hands on the head, knees or shoulders in 1-2 % of its poses): hands touching the body,
# sitting on the floor, leaning sideways or back, a handstand, a leg out to the side, a knee raised, hands on the
# floor. Training pools
# also draw from these (`TRAINING_ARCHETYPE_NAMES`). The arm angles were solved so that the wrists reach their
# targets on the built-in skeleton; `tests/test_data_poses.py` checks the facts each one shows.
_TRAINING_ONLY: dict[str, np.ndarray] = {
    "hand_on_head": _make(left_shoulder=(-56, 19, 81), left_elbow=(-1, -97, 0), right_collar=(0, 0, 5),
                          right_shoulder=(0, 0, 72), right_elbow=(0, 12, 0)),
    "hands_on_head": _make(shoulders=(-57, 20, 74), elbows=(-1, -104, 0)),
    "hand_on_shoulder": _make(left_shoulder=(0, -120, -4), left_elbow=(0, -90, 0), right_collar=(0, 0, 5),
                              right_shoulder=(0, 0, 72), right_elbow=(0, 12, 0)),
    "hand_on_chest": _make(left_shoulder=(11, -96, 14), left_elbow=(0, -104, 0), right_collar=(0, 0, 5),
                           right_shoulder=(0, 0, 72), right_elbow=(0, 12, 0)),
    "palms_together": _make(shoulders=(14, -78, 6), elbows=(0, -88, 0)),
    "hands_behind_back": _make(shoulders=(50, 45, -84), elbows=(1, -68, 0)),
    # The pelvis tips forwards (root) and the hips flex as much, so the legs stay vertical under a bent torso.
    "hands_on_knees": _make(root=(55, 0, 0), hips=(-90, 0, 4), knees=(65, 0, 0), ankles=(-20, 0, 0),
                            spine1=(15, 0, 0), neck=(-40, 0, 0), shoulders=(50, -45, -95), elbows=(3, -19, 0)),
    "sitting_on_floor": _make(hips=(-88, 0, 6), knees=(4, 0, 0), ankles=(10, 0, 0), spine1=(-12, 0, 0),
                              shoulders=(-2, 24, -87), elbows=(1, 0, 0)),
    "side_bend": _make(left_collar=(0, 0, 15), left_shoulder=(0, 0, 80), left_elbow=(0, -15, 0),
                       right_collar=(0, 0, 5), right_shoulder=(0, 0, 60), right_elbow=(0, 20, 0), spine1=(0, 0, 12),
                       spine2=(0, 0, 12), spine3=(0, 0, 10), neck=(0, 0, 5)),
    "leaning_back": _make(**_ARMS_DOWN, spine1=(-15, 0, 0), spine2=(-12, 0, 0), spine3=(-8, 0, 0), neck=(-15, 0, 0),
                          knees=(15, 0, 0), hips=(5, 0, 0)),
    "handstand": _make(root=(180, 0, 0), collars=(0, 0, 15), shoulders=(0, 0, 78), elbows=(0, -5, 0), hips=(0, 0, 6),
                       neck=(-30, 0, 0)),
    "side_leg_raise": _make(collars=(0, 0, 5), shoulders=(0, 0, -10), left_hip=(0, 0, 50), right_hip=(0, 0, -5),
                            spine1=(0, 0, -8)),
    "knee_up": _make(**_ARMS_DOWN, left_hip=(-95, 0, 4), left_knee=(95, 0, 0), left_ankle=(20, 0, 0)),
    # Hands down on the floor: bent over with the knees bent (picking something up), and a squat reaching forward
    # to the floor. The skeleton's arms cannot reach the floor from a straight-legged fold.
    "reaching_down": _make(root=(55, 0, 0), hips=(-125, 0, 3), knees=(100, 0, 0), ankles=(-30, 0, 0),
                           spine1=(30, 0, 0), spine2=(10, 0, 0), neck=(-25, 0, 0), shoulders=(0, -90, -30),
                           elbows=(0, -5, 0)),
    "squat_hands_on_floor": _make(root=(25, 0, 0), hips=(-105, 0, 30), knees=(120, 0, 0), ankles=(-30, 0, 0),
                                  spine1=(40, 0, 0), spine2=(20, 0, 0), neck=(-35, 0, 0), shoulders=(0, -80, -50),
                                  elbows=(0, -5, 0)),
}
ARCHETYPES.update(_TRAINING_ONLY)
TRAINING_ARCHETYPE_NAMES: tuple[str, ...] = ARCHETYPE_NAMES + tuple(_TRAINING_ONLY)


def archetype_euler_deg(name: str) -> np.ndarray:
    """A copy of one archetype's [22, 3] Euler angles (degrees)."""
    try:
        return ARCHETYPES[name].copy()
    except KeyError:
        raise KeyError(f"unknown archetype {name!r}; known: {', '.join(ARCHETYPE_NAMES)}") from None


assert all(a.shape == (NUM_JOINTS, 3) for a in ARCHETYPES.values()), JOINT_NAMES
