"""Pose sampler: limits, determinism, archetype sanity through forward kinematics."""

import numpy as np
import pytest

from unipose_sdk.body.rotations import axis_angle_to_matrix
from unipose_sdk.body.skeleton import JOINT_INDEX as J
from unipose_sdk.data.archetypes import ARCHETYPE_NAMES, ARCHETYPES, mirror_euler_deg
from unipose_sdk.data.poses import (
    LIMITS_DEG,
    clip_to_limits,
    euler_deg_to_axis_angle,
    euler_deg_to_matrix,
    joints_from_axis_angle,
    sample_poses,
)


def _joints(name: str) -> np.ndarray:
    return joints_from_axis_angle(euler_deg_to_axis_angle(ARCHETYPES[name][None]))[0]


def _angle_deg(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Interior angle at b of the chain a-b-c."""
    u, v = a - b, c - b
    return float(np.degrees(np.arccos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))))


def test_euler_matrix_matches_axis_angle_for_single_axes():
    for axis in range(3):
        euler = np.zeros(3)
        euler[axis] = 40.0
        aa = np.zeros(3)
        aa[axis] = np.radians(40.0)
        np.testing.assert_allclose(euler_deg_to_matrix(euler), axis_angle_to_matrix(aa), atol=1e-12)


def test_at_least_15_archetypes_all_within_limits():
    assert len(ARCHETYPE_NAMES) >= 15
    for name, euler in ARCHETYPES.items():
        np.testing.assert_allclose(clip_to_limits(euler), euler, err_msg=name)


def test_limits_make_knees_and_elbows_bend_one_way_only():
    assert LIMITS_DEG[J["left_knee"], 0].tolist() == [0, 150]
    assert LIMITS_DEG[J["right_knee"], 0].tolist() == [0, 150]
    assert LIMITS_DEG[J["left_elbow"], 1].tolist() == [-150, 0]
    assert LIMITS_DEG[J["right_elbow"], 1].tolist() == [0, 150]  # mirrored: right flexes with +y


def test_knee_flexion_moves_the_ankle_backwards_and_elbow_flexion_brings_the_hand_forwards():
    euler = np.zeros((1, 22, 3))
    euler[0, J["left_knee"], 0] = 90.0
    euler[0, J["right_elbow"], 1] = 90.0
    euler[0, J["left_elbow"], 1] = -90.0
    joints = joints_from_axis_angle(euler_deg_to_axis_angle(euler), grounded=False)[0]
    assert joints[J["left_ankle"], 2] < joints[J["left_knee"], 2] - 0.3
    for side in ("left", "right"):
        assert joints[J[f"{side}_wrist"], 2] > joints[J[f"{side}_elbow"], 2] + 0.2


def test_sampler_is_deterministic_and_in_limits():
    a, labels_a = sample_poses(200, seed=7, global_orient="random")
    b, labels_b = sample_poses(200, seed=7, global_orient="random")
    c, _ = sample_poses(200, seed=8, global_orient="random")
    assert a.shape == (200, 66) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert labels_a == labels_b
    assert not np.allclose(a, c)
    assert np.isfinite(a).all()
    # Knees never hyperextend: the ankle-knee-hip angle is at most 180 and the shank never swings forwards of
    # the thigh line by flexing the wrong way (angle measured through FK in the thigh's sagittal plane).
    joints = joints_from_axis_angle(a)
    assert joints[:, :, 1].min() == pytest.approx(0.0, abs=1e-9)
    assert set(labels_a) - {"free"} - {lab for lab in labels_a if lab.startswith("blend:")} <= set(ARCHETYPE_NAMES)


def test_mix_selects_the_source():
    _, labels = sample_poses(50, seed=1, mix={"archetype": 1.0})
    assert set(labels) <= set(ARCHETYPE_NAMES)
    _, labels = sample_poses(20, seed=1, mix={"free": 1.0})
    assert set(labels) == {"free"}
    with pytest.raises(ValueError):
        sample_poses(5, seed=1, mix={"bogus": 1.0})


def test_random_global_orient_keeps_upright_poses_nearly_upright():
    aa, _ = sample_poses(300, seed=2, mix={"archetype": 1.0}, archetypes=("standing",), global_orient="random")
    joints = joints_from_axis_angle(aa)
    spine = joints[:, J["neck"]] - joints[:, J["pelvis"]]
    tilt_deg = np.degrees(np.arccos(spine[:, 1] / np.linalg.norm(spine, axis=1)))
    assert tilt_deg.max() < 45.0
    forward = np.cross(joints[:, J["left_hip"]] - joints[:, J["right_hip"]], [0.0, 1.0, 0.0])
    yaw_deg = np.degrees(np.arctan2(forward[:, 0], forward[:, 2]))
    assert yaw_deg.min() < -120 and yaw_deg.max() > 120  # any heading


def test_mirroring_twice_is_identity_and_swaps_sides():
    euler = ARCHETYPES["waving"]
    np.testing.assert_allclose(mirror_euler_deg(mirror_euler_deg(euler)), euler)
    joints = joints_from_axis_angle(euler_deg_to_axis_angle(np.stack([euler, mirror_euler_deg(euler)])))
    assert joints[0, J["left_wrist"], 1] > joints[0, J["right_wrist"], 1] + 0.3  # left hand waves
    np.testing.assert_allclose(joints[1, J["right_wrist"]] * [-1, 1, 1], joints[0, J["left_wrist"]], atol=1e-6)


def test_squatting_knees_well_bent_and_hips_low():
    standing, squat = _joints("standing"), _joints("squatting")
    for side in ("left", "right"):
        knee_deg = _angle_deg(squat[J[f"{side}_hip"]], squat[J[f"{side}_knee"]], squat[J[f"{side}_ankle"]])
        assert knee_deg < 80.0  # interior angle: well bent
    assert squat[J["pelvis"], 1] < 0.6 * standing[J["pelvis"], 1]


def test_sitting_kneeling_lying_and_reaching_up_geometry():
    sit = _joints("sitting")
    for side in ("left", "right"):  # thighs roughly horizontal and forwards, shanks roughly vertical
        thigh = sit[J[f"{side}_knee"]] - sit[J[f"{side}_hip"]]
        shank = sit[J[f"{side}_ankle"]] - sit[J[f"{side}_knee"]]
        assert thigh[2] > 0.3 and abs(thigh[1]) < 0.12 and shank[1] < -0.35
    kneel = _joints("kneeling")
    assert kneel[J["left_knee"], 1] < 0.08 and kneel[J["right_knee"], 1] < 0.08
    assert kneel[J["left_ankle"], 2] < kneel[J["left_knee"], 2] - 0.3  # feet behind
    lying = _joints("lying_on_back")
    assert np.ptp(lying[:, 1]) < 0.35 and lying[J["head"], 1] > lying[J["pelvis"], 1] - 0.2
    up = _joints("reaching_up")
    assert up[J["left_wrist"], 1] > up[J["head"], 1] + 0.3 and up[J["right_wrist"], 1] > up[J["head"], 1] + 0.3


# What each training-only archetype is for, as the data engine's own facts state it (the left-side version; the
# sampler mirrors half the poses, and the mirrored fact must hold on the mirrored posture).
TRAINING_ONLY_FACTS = {
    "hand_on_head": {("hand_touch", "left_hand:head", "touching")},
    "hands_on_head": {("hand_touch", "left_hand:head", "touching"), ("hand_touch", "right_hand:head", "touching")},
    "hand_on_shoulder": {("hand_touch", "left_hand:right_shoulder", "touching")},
    "hand_on_chest": {("hand_height", "left", "chest")},
    "palms_together": {("hands_distance", "hands", "together")},
    "hands_behind_back": {("hand_behind_back", "left", "behind"), ("hand_behind_back", "right", "behind")},
    "hands_on_knees": {("hand_touch", "left_hand:left_knee", "touching"),
                       ("hand_touch", "right_hand:right_knee", "touching")},
    "sitting_on_floor": {("knee_bend", "left", "straight"), ("thigh", "left", "right_angle")},
    "side_bend": {("torso_roll", "torso", "right"), ("hand_height", "left", "above_head")},
    "leaning_back": {("torso_pitch", "torso", "back")},
    "handstand": {("posture", "body", "upside_down")},
    "side_leg_raise": {("leg_raised", "left", "raised"), ("feet_ground", "feet", "right_only")},
    "knee_up": {("leg_raised", "left", "raised"), ("thigh", "left", "right_angle")},
    "reaching_down": {("torso_pitch", "torso", "bent_over"), ("feet_ground", "feet", "both")},
    "squat_hands_on_floor": {("squat", "body", "squatting"), ("torso_pitch", "torso", "bent_over")},
}


def _mirror_key(key: tuple[str, str, str]) -> tuple[str, str, str]:
    swap = {"left": "right", "right": "left"}

    def mirrored(text: str) -> str:
        return ":".join("_".join(swap.get(w, w) for w in part.split("_")) for part in text.split(":"))

    sided_levels = ("left", "right", "left_only", "right_only")  # not "right_angle"
    return key[0], mirrored(key[1]), mirrored(key[2]) if key[2] in sided_levels else key[2]


def test_training_only_archetypes_show_what_they_are_named_for():
    from unipose_sdk.data.archetypes import TRAINING_ARCHETYPE_NAMES
    from unipose_sdk.data.facts import facts_for_poses

    extra = TRAINING_ARCHETYPE_NAMES[len(ARCHETYPE_NAMES):]
    assert TRAINING_ARCHETYPE_NAMES[:len(ARCHETYPE_NAMES)] == ARCHETYPE_NAMES and set(extra) == set(TRAINING_ONLY_FACTS)
    for name in extra:
        euler = ARCHETYPES[name]
        np.testing.assert_allclose(clip_to_limits(euler), euler, err_msg=name)
        facts, mirrored = facts_for_poses(euler_deg_to_axis_angle(np.stack([euler, mirror_euler_deg(euler)])))
        keys, mirrored_keys = {f.key for f in facts}, {f.key for f in mirrored}
        assert TRAINING_ONLY_FACTS[name] <= keys, (name, sorted(keys))
        assert {_mirror_key(k) for k in TRAINING_ONLY_FACTS[name]} <= mirrored_keys, (name, sorted(mirrored_keys))
    floor_sit = _joints("sitting_on_floor")
    assert floor_sit[J["pelvis"], 1] < 0.3  # on the floor, not on a chair


def test_the_default_archetypes_draw_the_same_poses_as_before():
    """Evaluation pools draw from ARCHETYPE_NAMES: adding training-only archetypes must not move them."""
    from unipose_sdk.data.archetypes import TRAINING_ARCHETYPE_NAMES

    default, labels = sample_poses(200, seed=10007)
    named, _ = sample_poses(200, seed=10007, archetypes=ARCHETYPE_NAMES)
    np.testing.assert_array_equal(default, named)
    assert not set(labels) & set(TRAINING_ARCHETYPE_NAMES[len(ARCHETYPE_NAMES):])
    _, training_labels = sample_poses(400, seed=1, mix={"archetype": 1.0}, archetypes=TRAINING_ARCHETYPE_NAMES)
    assert set(training_labels) & {"handstand", "hands_on_knees", "sitting_on_floor"}


@pytest.mark.parametrize(("body", "arms", "body_fact", "arm_level"), [
    ("squatting", "reaching_up", ("squat", "body", "squatting"), "up"),
    ("sitting", "t_pose", ("sit", "body", "sitting"), "out"),
    ("lunging", "reaching_forward", ("lunge", None, "lunging"), "forward"),
])
def test_composed_poses_keep_the_body_of_one_archetype_and_the_arms_of_another(body, arms, body_fact, arm_level):
    """A blend half-bends both archetypes; composition keeps what each one shows, so training sees the pairs."""
    from unipose_sdk.data.facts import facts_for_poses

    axis_angle, labels = sample_poses(60, np.random.default_rng(3), mix={"compose": 1.0}, archetypes=(body, arms),
                                      noise_deg=0.0)
    composed = [i for i, label in enumerate(labels) if label == f"compose:{body}+{arms}:left+right"]
    assert len(composed) >= 5
    for facts in facts_for_poses(axis_angle[composed]):
        keys = {(f.kind, f.level) for f in facts} | {(f.kind, f.subject, f.level) for f in facts}
        assert (body_fact if body_fact[1] else (body_fact[0], body_fact[2])) in keys, (body, keys)
        assert {f.subject for f in facts if f.kind == "arm_direction" and f.level == arm_level} == {"left", "right"}


def test_the_training_mix_leaves_the_default_draws_alone():
    from unipose_sdk.data.poses import TRAINING_MIX

    default, _ = sample_poses(100, seed=10007)
    again, labels = sample_poses(100, seed=10007, mix=None)
    np.testing.assert_array_equal(default, again)
    assert not any(label.startswith("compose:") for label in labels)
    _, training_labels = sample_poses(100, seed=1, mix=TRAINING_MIX)
    assert any(label.startswith("compose:") for label in training_labels)
