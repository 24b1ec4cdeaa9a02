"""Free-form prompts: everyday English a new user would type, judged by geometric checks on the generated joints.

The prompt set (`freeform_prompts.json`, next to this module) was written by hand as a new user would phrase
requests (imperative, third person, casual, activity names, one- and two-sided, several facts at once), not from
the data engine's caption templates or vocabulary. Each prompt carries 1-4 checks; a prompt is satisfied when all
of its checks hold on the generated pose. The checks are named predicates (`PREDICATES`), measured on the 22
joints of the built-in skeleton, with their own geometry (nothing here reads the captioner's facts).

Frames (all built from the joints; SMPL axes, metres):
  world   +y is up, against gravity (the SDK's convention, see `body.skeleton`). A body alone cannot tell
          standing from floating, so the floor is the lowest of its 22 joints: every "height" is measured from it.
          Used for: above / below, heights, lying (torso horizontal), upside down.
  pelvis  left = left hip - right hip, up = pelvis -> spine1 (made orthogonal), forward = left x up.
          Used for the legs: thigh raise, thigh spread, sideways foot spread, which foot is ahead.
  torso   left = left shoulder - right shoulder, up = pelvis -> neck, forward = left x up.
          Used for the arms: direction of shoulder -> wrist, hands behind the back, arms crossed.
  heading the horizontal direction the hips face (hip line x world up); torso pitch (bent forwards / leaning
          back) and roll (leaning sideways) are the spine's angles towards it and towards the body's left.
Left and right are always the person's own (SMPL's "left_*" joints, +x in the rest pose).

Thresholds are deliberately generous: a check should hold whenever a person looking at the pose would agree
with the statement, so a failure means the pose does not show it. The numbers are in the constants below and in
each predicate's docstring (`predicate_table()` lists them).

Scores: "prompts satisfied" is the share of prompts whose checks all hold; "checks hold" the share of all
checks. The baseline, "best constant pose", answers every prompt with one fixed pose: the candidate (example
poses, the mean pose, the evaluation pool's poses) that satisfies the most prompts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unipose_sdk.body.skeleton import JOINT_INDEX, NUM_JOINTS, rest_joints_m
from unipose_sdk.data.facts import bend_deg, pelvis_frame, torso_frame, unit_vector
from unipose_sdk.errors import InvalidInputError

J = JOINT_INDEX
PROMPTS_PATH = Path(__file__).resolve().parent / "freeform_prompts.json"

# ------------------------------------------------------------------------------------------- thresholds
_REST = rest_joints_m().numpy()
# Pelvis height of the built-in skeleton standing straight (the rest pose), ~0.96 m: the reference for "low hips".
STANDING_PELVIS_HEIGHT_M = float(_REST[J["pelvis"], 1] - _REST[:, 1].min())
DIRECTION_COS = 0.8  # an arm "points" a way when shoulder -> wrist is within ~37 degrees of it (at 45 a V of
# raised arms would count as both "up" and "out to the sides")
ARM_STRAIGHT_MAX_DEG = 35.0  # elbow flexion (0 = straight) below which an arm reads as straight
ARM_BENT_MIN_DEG = 50.0
LEG_STRAIGHT_MAX_DEG = 30.0  # knee flexion below which a leg reads as straight
KNEE_BENT_DEFAULT_DEG = 45.0
ABOVE_SHOULDER_M = 0.05  # the wrist this far above its shoulder
HAND_NEAR_FLOOR_M = 0.30  # wrist height
HANDS_TOGETHER_M = 0.20  # wrist-to-wrist distance
NEAR_M = {"head": 0.25, "chest": 0.25, "hip": 0.20, "knee": 0.25, "foot": 0.25, "shoulder": 0.20}
KNEE_RAISED_MIN_DEG = 45.0  # thigh angle from hanging straight down (world), towards the front
LEG_SIDEWAYS_MIN_DEG = 25.0  # thigh angle outwards, out of the sagittal plane
FOOT_RAISED_M = 0.15  # one foot's lowest joint above the other's
FEET_LEVEL_M = 0.20  # "both feet down" (a stance or a step): neither foot's lowest joint this much above the other's
FEET_APART_M = 0.35  # sideways ankle gap (the hips are 0.17 m apart)
FEET_TOGETHER_M = 0.22  # ankle-to-ankle distance
STRIDE_M = 0.35  # one ankle ahead of the other along the heading
STANDING_MIN_PELVIS_M = 0.80
STANDING_MAX_TILT_DEG = 35.0
STRAIGHT_MAX_TILT_DEG = 15.0
STRAIGHT_MAX_KNEE_DEG = 25.0
SQUAT_MAX_PELVIS_FRACTION = 0.55  # of STANDING_PELVIS_HEIGHT_M (a chair-height seat is ~0.6)
SQUAT_MIN_KNEE_DEG = 80.0
SQUAT_MAX_KNEE_SPREAD_M = 0.25  # knees at most this much further apart than the ankles (wider: cross-legged)
HIPS_LOW_FRACTION = 0.75  # of STANDING_PELVIS_HEIGHT_M
HIPS_NEAR_FLOOR_M = 0.40
KNEE_ON_FLOOR_M = 0.15
KNEEL_HIP_ABOVE_KNEE_M = 0.15
SIT_MAX_THIGH_SLOPE_DEG = 35.0  # thighs within this of horizontal
SIT_MAX_PELVIS_M = 0.75
SIT_MAX_TILT_DEG = 45.0
FLOOR_SIT_MAX_PELVIS_M = 0.30
FLOOR_SIT_MAX_TILT_DEG = 50.0
LYING_TILT_DEG = (50.0, 130.0)  # torso (pelvis -> neck) this far from vertical
LYING_MAX_PELVIS_M = 0.40
LYING_MAX_HEAD_M = 0.50
LYING_FACING_COS = 0.5  # chest's forward axis towards the sky (face up) or the floor (face down)
UPSIDE_DOWN_MIN_TILT_DEG = 135.0
BENT_FORWARD_DEFAULT_DEG = 30.0
UPRIGHT_MAX_TILT_DEG = 20.0
LEAN_MIN_DEG = 15.0
SIDES = ("left", "right")
SIDE_CHOICES = ("left", "right", "both", "either")
TARGETS = tuple(NEAR_M)
TARGET_SIDES = ("same", "opposite", "either")
FACINGS = ("any", "up", "down", "side")


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


class Body:
    """One pose's joints [22, 3] (metres, +y up) with the frames and measures the predicates share."""

    def __init__(self, joints_m: np.ndarray) -> None:
        p = np.asarray(joints_m, dtype=np.float64)
        if p.shape != (NUM_JOINTS, 3) or not np.isfinite(p).all():
            raise InvalidInputError.make(f"joints of shape {list(p.shape)}", f"finite joints [{NUM_JOINTS}, 3] "
                                         "in metres", "Pass `pose.joints()[i]` of a Pose.")
        self.p = p
        self.height = p[:, 1] - p[:, 1].min()  # above the floor (the lowest joint)
        self.pelvis_frame = pelvis_frame(p)
        self.torso_frame = torso_frame(p)
        spine = p[J["neck"]] - p[J["pelvis"]]
        self.tilt_deg = math.degrees(math.acos(max(-1.0, min(1.0, unit_vector(spine)[1]))))  # 0 upright, 180 inverted
        up = np.array([0.0, 1.0, 0.0])
        # The way the hips face, horizontally; when the hip line is near vertical (lying on a side) the chest's
        # or the pelvis' forward axis, flattened, takes over.
        flat = lambda v: v * np.array([1.0, 0.0, 1.0])  # noqa: E731
        for candidate in (np.cross(unit_vector(p[J["left_hip"]] - p[J["right_hip"]]), up), flat(self.torso_frame[2]),
                          flat(self.pelvis_frame[2])):
            if np.linalg.norm(candidate) > 0.3:  # within ~70 degrees of horizontal
                break
        self.heading = unit_vector(candidate)
        self.heading_left = np.cross(up, self.heading)  # horizontal, the body's left
        unit_spine = unit_vector(spine)
        # Pitch runs from -180 to 180 (beyond 90: folded down past horizontal); roll is the spine's angle out of the
        # body's sagittal plane, so a symmetric pose reads 0 even upside down.
        self.pitch_deg = math.degrees(math.atan2(float(unit_spine @ self.heading), float(unit_spine[1])))
        self.spine_ahead = float(unit_spine @ self.heading)  # cosine of the spine with the heading
        self.roll_deg = math.degrees(math.asin(max(-1.0, min(1.0, float(unit_spine @ self.heading_left)))))

    def joint(self, name: str) -> np.ndarray:
        return self.p[J[name]]

    def h(self, name: str) -> float:
        return float(self.height[J[name]])

    def elbow_flexion_deg(self, s: str) -> float:
        return bend_deg(self.joint(f"{s}_shoulder"), self.joint(f"{s}_elbow"), self.joint(f"{s}_wrist"))

    def knee_flexion_deg(self, s: str) -> float:
        return bend_deg(self.joint(f"{s}_hip"), self.joint(f"{s}_knee"), self.joint(f"{s}_ankle"))

    def arm_direction(self, s: str) -> dict[str, float]:
        """Cosines of shoulder -> wrist with the torso's directions ("out" is away from the body's midline)."""
        d = self.torso_frame @ unit_vector(self.joint(f"{s}_wrist") - self.joint(f"{s}_shoulder"))
        out = d[0] if s == "left" else -d[0]
        return {"up": d[1], "down": -d[1], "forward": d[2], "sideways": out}

    def thigh(self, s: str) -> np.ndarray:
        """Unit hip -> knee in the pelvis frame (left, up, forward)."""
        return self.pelvis_frame @ unit_vector(self.joint(f"{s}_knee") - self.joint(f"{s}_hip"))

    def foot_height(self, s: str) -> float:
        return min(self.h(f"{s}_ankle"), self.h(f"{s}_foot"))

    def is_lying(self) -> bool:
        low, high = LYING_TILT_DEG
        return (low <= self.tilt_deg <= high and self.h("pelvis") <= LYING_MAX_PELVIS_M
                and self.h("head") <= LYING_MAX_HEAD_M)

    def point(self, target: str, s: str) -> list[np.ndarray]:
        """Candidate points of a touch target on side `s` (several for a foot: ankle and toes)."""
        if target == "head":
            return [self.joint("head")]
        if target == "chest":  # spine3 lies inside the chest; its front surface is ~0.1 m ahead
            return [self.joint("spine3") + 0.10 * self.torso_frame[2]]
        if target == "hip":  # the waist just above the hip joint, on its outer side
            outward = self.pelvis_frame[0] if s == "left" else -self.pelvis_frame[0]
            return [self.joint(f"{s}_hip") + 0.10 * self.pelvis_frame[1] + 0.04 * outward]
        if target == "foot":
            return [self.joint(f"{s}_ankle"), self.joint(f"{s}_foot")]
        return [self.joint(f"{s}_{target}")]  # knee, shoulder


# ------------------------------------------------------------------------------------------- predicates
@dataclass(frozen=True)
class Predicate:
    name: str
    fn: Callable[..., bool]
    params: Mapping[str, tuple[Any, ...] | type]  # allowed values, or a type for numbers
    defaults: Mapping[str, Any]
    doc: str


PREDICATES: dict[str, Predicate] = {}


def _sided(side: str, test: Callable[[str], bool]) -> bool:
    if side == "both":
        return all(test(s) for s in SIDES)
    if side == "either":
        return any(test(s) for s in SIDES)
    return test(side)


def _register(name: str, doc: str, params: Mapping[str, tuple[Any, ...] | type] | None = None,
              defaults: Mapping[str, Any] | None = None) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    def wrap(fn: Callable[..., bool]) -> Callable[..., bool]:
        PREDICATES[name] = Predicate(name, fn, dict(params or {}), dict(defaults or {}), doc)
        return fn
    return wrap


_SIDE = {"side": SIDE_CHOICES}


@_register("hand_above_head", "wrist higher than the head joint (the hand itself then reaches above the head)", _SIDE)
def hand_above_head(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.h(f"{s}_wrist") > b.h("head"))


@_register("hand_above_shoulder", f"wrist at least {ABOVE_SHOULDER_M} m higher than its shoulder", _SIDE)
def hand_above_shoulder(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.h(f"{s}_wrist") > b.h(f"{s}_shoulder") + ABOVE_SHOULDER_M)


@_register("hand_near_floor", f"wrist at most {HAND_NEAR_FLOOR_M} m above the floor", _SIDE)
def hand_near_floor(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.h(f"{s}_wrist") <= HAND_NEAR_FLOOR_M)


@_register("arm_straight", f"elbow flexion below {ARM_STRAIGHT_MAX_DEG} deg", _SIDE)
def arm_straight(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.elbow_flexion_deg(s) < ARM_STRAIGHT_MAX_DEG)


@_register("arm_bent", f"elbow flexion above {ARM_BENT_MIN_DEG} deg", _SIDE)
def arm_bent(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.elbow_flexion_deg(s) > ARM_BENT_MIN_DEG)


def _arm_points(direction: str) -> Callable[[Body, str], bool]:
    def test(b: Body, side: str) -> bool:
        return _sided(side, lambda s: b.arm_direction(s)[direction] >= DIRECTION_COS)
    return test


for _direction, _words in (("up", "overhead, along the torso's up axis"), ("down", "down along the torso"),
                           ("forward", "ahead of the chest"), ("sideways", "out to the side, away from the body")):
    _register(f"arm_{_direction}", f"shoulder -> wrist within ~37 deg (cosine >= {DIRECTION_COS}) of {_words}, "
              "in the torso frame", _SIDE)(_arm_points(_direction))


@_register("hand_near", "wrist within NEAR_M of the target: head 0.25, chest (front of spine3) 0.25, hip (waist "
           "above the hip joint) 0.20, knee 0.25, foot (ankle or toes) 0.25, shoulder 0.20 m; target_side: the "
           "target on the hand's own side, the other side, or either",
           {**_SIDE, "target": TARGETS, "target_side": TARGET_SIDES}, {"target_side": "same"})
def hand_near(b: Body, side: str, target: str, target_side: str = "same") -> bool:
    def near(s: str) -> bool:
        sides = {"same": [s], "opposite": [_other(s)], "either": list(SIDES)}[target_side]
        wrist = b.joint(f"{s}_wrist")
        return any(np.linalg.norm(wrist - q) <= NEAR_M[target] for t in sides for q in b.point(target, t))
    return _sided(side, near)


@_register("hand_behind_back", "wrist at least 0.08 m behind spine2 along the torso's forward axis, within 0.2 m of "
           "the midline (an arm hanging at the side is ~0.28 m out) and below the chest's top (spine3 + 0.15 m)", _SIDE)
def hand_behind_back(b: Body, side: str) -> bool:
    def behind(s: str) -> bool:
        w = b.torso_frame @ (b.joint(f"{s}_wrist") - b.joint("spine2"))
        top = float(b.torso_frame[1] @ (b.joint("spine3") - b.joint("spine2"))) + 0.15
        return w[2] <= -0.08 and abs(w[0]) <= 0.2 and w[1] <= top
    return _sided(side, behind)


@_register("hands_together", f"wrists at most {HANDS_TOGETHER_M} m apart")
def hands_together(b: Body) -> bool:
    return float(np.linalg.norm(b.joint("left_wrist") - b.joint("right_wrist"))) <= HANDS_TOGETHER_M


@_register("arms_crossed", "each wrist past the body's midline on the other side (>= 0.02 m), not behind the "
           "chest (forward >= -0.05 m of spine3), between 0.45 m below and 0.15 m above spine3, torso frame")
def arms_crossed(b: Body) -> bool:
    lw, rw = (b.torso_frame @ (b.joint(f"{s}_wrist") - b.joint("spine3")) for s in SIDES)
    return (lw[0] <= -0.02 and rw[0] >= 0.02 and min(lw[2], rw[2]) >= -0.05
            and -0.45 <= min(lw[1], rw[1]) and max(lw[1], rw[1]) <= 0.15)


@_register("knee_bent", "knee flexion of at least min_deg (default 45)", {**_SIDE, "min_deg": float},
           {"min_deg": KNEE_BENT_DEFAULT_DEG})
def knee_bent(b: Body, side: str, min_deg: float = KNEE_BENT_DEFAULT_DEG) -> bool:
    return _sided(side, lambda s: b.knee_flexion_deg(s) >= min_deg)


@_register("leg_straight", f"knee flexion below {LEG_STRAIGHT_MAX_DEG} deg", _SIDE)
def leg_straight(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.knee_flexion_deg(s) < LEG_STRAIGHT_MAX_DEG)


@_register("knee_raised", f"thigh (hip -> knee) at least {KNEE_RAISED_MIN_DEG} deg from hanging straight down (world "
           "vertical: a deep bow flexes the hips without raising a knee), the knee ahead of the hip along the heading",
           _SIDE)
def knee_raised(b: Body, side: str) -> bool:
    def raised(s: str) -> bool:
        t = unit_vector(b.joint(f"{s}_knee") - b.joint(f"{s}_hip"))
        from_down_deg = math.degrees(math.acos(max(-1.0, min(1.0, -t[1]))))
        return from_down_deg >= KNEE_RAISED_MIN_DEG and float(t @ b.heading) > 0.3
    return _sided(side, raised)


@_register("leg_raised", f"the foot's lowest joint at least {FOOT_RAISED_M} m above the other foot's", _SIDE)
def leg_raised(b: Body, side: str) -> bool:
    return _sided(side, lambda s: b.foot_height(s) - b.foot_height(_other(s)) >= FOOT_RAISED_M)


@_register("leg_sideways", f"thigh at least {LEG_SIDEWAYS_MIN_DEG} deg out to the side (pelvis frame)", _SIDE)
def leg_sideways(b: Body, side: str) -> bool:
    limit = math.sin(math.radians(LEG_SIDEWAYS_MIN_DEG))
    return _sided(side, lambda s: (b.thigh(s)[0] if s == "left" else -b.thigh(s)[0]) >= limit)


def _ankles_pelvis(b: Body) -> tuple[np.ndarray, np.ndarray]:
    return tuple(b.pelvis_frame @ (b.joint(f"{s}_ankle") - b.joint("pelvis")) for s in SIDES)  # type: ignore[return-value]


def _feet_level(b: Body) -> bool:
    return abs(b.foot_height("left") - b.foot_height("right")) < FEET_LEVEL_M


@_register("feet_apart", f"ankles at least {FEET_APART_M} m apart sideways (pelvis frame), both feet down (neither "
           f"{FEET_LEVEL_M} m above the other: a leg lifted out to the side is not a wide stance)")
def feet_apart(b: Body) -> bool:
    left, right = _ankles_pelvis(b)
    level = _feet_level(b)
    return left[0] - right[0] >= FEET_APART_M and level


@_register("feet_together", f"ankles at most {FEET_TOGETHER_M} m apart")
def feet_together(b: Body) -> bool:
    return float(np.linalg.norm(b.joint("left_ankle") - b.joint("right_ankle"))) <= FEET_TOGETHER_M


@_register("stride", f"this side's ankle at least {STRIDE_M} m ahead of the other along the heading, both feet down "
           f"(neither {FEET_LEVEL_M} m above the other: a knee lifted in front is not a step)", _SIDE)
def stride(b: Body, side: str) -> bool:
    return _feet_level(b) and _sided(side, lambda s: float((b.joint(f"{s}_ankle") - b.joint(f"{_other(s)}_ankle"))
                                                  @ b.heading) >= STRIDE_M)


@_register("standing", f"pelvis at least {STANDING_MIN_PELVIS_M} m above the floor, torso within "
           f"{STANDING_MAX_TILT_DEG} deg of vertical")
def standing(b: Body) -> bool:
    return b.h("pelvis") >= STANDING_MIN_PELVIS_M and b.tilt_deg <= STANDING_MAX_TILT_DEG


@_register("standing_straight", f"standing, torso within {STRAIGHT_MAX_TILT_DEG} deg of vertical, both knees below "
           f"{STRAIGHT_MAX_KNEE_DEG} deg of flexion")
def standing_straight(b: Body) -> bool:
    return (standing(b) and b.tilt_deg <= STRAIGHT_MAX_TILT_DEG
            and max(b.knee_flexion_deg(s) for s in SIDES) < STRAIGHT_MAX_KNEE_DEG)


@_register("squatting", f"pelvis at most {SQUAT_MAX_PELVIS_FRACTION} of its standing height above the floor, both "
           f"knees flexed >= {SQUAT_MIN_KNEE_DEG} deg, neither knee on the floor (> {KNEE_ON_FLOOR_M} m), knees at "
           f"most {SQUAT_MAX_KNEE_SPREAD_M} m further apart than the ankles, not lying")
def squatting(b: Body) -> bool:
    gap = lambda part: float(np.linalg.norm(b.joint(f"left_{part}") - b.joint(f"right_{part}")))  # noqa: E731
    return (b.h("pelvis") <= SQUAT_MAX_PELVIS_FRACTION * STANDING_PELVIS_HEIGHT_M
            and min(b.knee_flexion_deg(s) for s in SIDES) >= SQUAT_MIN_KNEE_DEG
            and min(b.h(f"{s}_knee") for s in SIDES) > KNEE_ON_FLOOR_M
            and gap("knee") <= gap("ankle") + SQUAT_MAX_KNEE_SPREAD_M and not b.is_lying())


@_register("hips_low", f"pelvis at most {HIPS_LOW_FRACTION} of its standing height above the floor (crouching, "
           "sitting, kneeling, lying)")
def hips_low(b: Body) -> bool:
    return b.h("pelvis") <= HIPS_LOW_FRACTION * STANDING_PELVIS_HEIGHT_M


@_register("hips_near_floor", f"pelvis at most {HIPS_NEAR_FLOOR_M} m above the floor (sitting or lying on it)")
def hips_near_floor(b: Body) -> bool:
    return b.h("pelvis") <= HIPS_NEAR_FLOOR_M


@_register("kneeling", f"knee at most {KNEE_ON_FLOOR_M} m above the floor with its hip at least "
           f"{KNEEL_HIP_ABOVE_KNEE_M} m above it", _SIDE)
def kneeling(b: Body, side: str) -> bool:
    return not b.is_lying() and _sided(
        side, lambda s: b.h(f"{s}_knee") <= KNEE_ON_FLOOR_M and b.h(f"{s}_hip") - b.h(f"{s}_knee")
        >= KNEEL_HIP_ABOVE_KNEE_M)


@_register("sitting", f"both thighs within {SIT_MAX_THIGH_SLOPE_DEG} deg of horizontal, pelvis at most "
           f"{SIT_MAX_PELVIS_M} m above the floor, torso within {SIT_MAX_TILT_DEG} deg of vertical "
           "(on a chair or on the floor)")
def sitting(b: Body) -> bool:
    slope = math.sin(math.radians(SIT_MAX_THIGH_SLOPE_DEG))
    thighs_flat = all(abs(unit_vector(b.joint(f"{s}_knee") - b.joint(f"{s}_hip"))[1]) <= slope for s in SIDES)
    return thighs_flat and b.h("pelvis") <= SIT_MAX_PELVIS_M and b.tilt_deg <= SIT_MAX_TILT_DEG


@_register("sitting_on_floor", f"pelvis at most {FLOOR_SIT_MAX_PELVIS_M} m above the floor, torso within "
           f"{FLOOR_SIT_MAX_TILT_DEG} deg of vertical")
def sitting_on_floor(b: Body) -> bool:
    return b.h("pelvis") <= FLOOR_SIT_MAX_PELVIS_M and b.tilt_deg <= FLOOR_SIT_MAX_TILT_DEG


@_register("lying", f"torso {LYING_TILT_DEG[0]}-{LYING_TILT_DEG[1]} deg from vertical, pelvis at most "
           f"{LYING_MAX_PELVIS_M} m and head at most {LYING_MAX_HEAD_M} m above the floor; facing up / down: the "
           f"chest's forward axis has a vertical cosine beyond +/-{LYING_FACING_COS}, side: within it",
           {"facing": FACINGS}, {"facing": "any"})
def lying(b: Body, facing: str = "any") -> bool:
    if not b.is_lying():
        return False
    sky = float(b.torso_frame[2][1])
    return {"any": True, "up": sky > LYING_FACING_COS, "down": sky < -LYING_FACING_COS,
            "side": abs(sky) <= LYING_FACING_COS}[facing]


@_register("upside_down", f"torso more than {UPSIDE_DOWN_MIN_TILT_DEG} deg from vertical (head below the pelvis)")
def upside_down(b: Body) -> bool:
    return b.tilt_deg > UPSIDE_DOWN_MIN_TILT_DEG


@_register("torso_bent_forward", "spine (pelvis -> neck) pitched at least min_deg (default 30) towards the heading "
           "with the neck clearly ahead of the pelvis (cosine with the heading >= 0.2), not lying",
           {"min_deg": float}, {"min_deg": BENT_FORWARD_DEFAULT_DEG})
def torso_bent_forward(b: Body, min_deg: float = BENT_FORWARD_DEFAULT_DEG) -> bool:
    return b.pitch_deg >= min_deg and b.spine_ahead >= 0.2 and not b.is_lying()


@_register("torso_upright", f"spine within {UPRIGHT_MAX_TILT_DEG} deg of vertical")
def torso_upright(b: Body) -> bool:
    return b.tilt_deg <= UPRIGHT_MAX_TILT_DEG


@_register("torso_leaning_back", f"spine pitched {LEAN_MIN_DEG}-90 deg backwards (neck behind the pelvis, still above "
           "it), not lying")
def torso_leaning_back(b: Body) -> bool:
    return -90.0 <= b.pitch_deg <= -LEAN_MIN_DEG and not b.is_lying()


@_register("torso_leaning_side", f"spine rolled at least {LEAN_MIN_DEG} deg towards that side, not lying",
           {"side": SIDES})
def torso_leaning_side(b: Body, side: str) -> bool:
    roll = b.roll_deg if side == "left" else -b.roll_deg
    return roll >= LEAN_MIN_DEG and not b.is_lying()


def predicate_table() -> list[tuple[str, str, str]]:
    """(name, parameters, what must hold) for every predicate: the documentation of the checks."""
    rows = []
    for p in PREDICATES.values():
        params = ", ".join(f"{k}: {'|'.join(map(str, v)) if isinstance(v, tuple) else v.__name__}"
                           + (f" = {p.defaults[k]}" if k in p.defaults else "") for k, v in p.params.items())
        rows.append((p.name, params, p.doc))
    return rows


# ------------------------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Check:
    """One named predicate with its parameters, e.g. hand_above_head(side="left")."""

    predicate: str
    params: tuple[tuple[str, Any], ...] = ()

    def holds(self, body: Body) -> bool:
        return bool(PREDICATES[self.predicate].fn(body, **dict(self.params)))

    def __str__(self) -> str:
        return f"{self.predicate}({', '.join(f'{k}={v}' for k, v in self.params)})"


@dataclass(frozen=True)
class FreeformPrompt:
    id: str
    text: str
    style: str
    checks: tuple[Check, ...] = field(default_factory=tuple)


def parse_check(raw: Any, where: str) -> Check:
    """A check written as {"predicate": NAME, PARAM: VALUE, ...}; every name and value is validated."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("predicate"), str):
        raise InvalidInputError.make(f"{raw!r} at {where}", 'a check object {"predicate": NAME, ...}',
                                     f"Known predicates: {', '.join(PREDICATES)}.")
    name = raw["predicate"]
    if name not in PREDICATES:
        raise InvalidInputError.make(f"the predicate {name!r} at {where}", f"one of {', '.join(PREDICATES)}",
                                     "Fix the name in the prompt file.")
    spec = PREDICATES[name]
    given = {k: v for k, v in raw.items() if k != "predicate"}
    unknown = sorted(set(given) - set(spec.params))
    missing = sorted(set(spec.params) - set(given) - set(spec.defaults))
    if unknown or missing:
        raise InvalidInputError.make(f"parameters {sorted(given)} for {name} at {where}",
                                     f"{sorted(spec.params)} ({', '.join(spec.defaults) or 'none'} optional)",
                                     f"Remove {unknown} / add {missing}.")
    for key, value in given.items():
        allowed = spec.params[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)) \
            if allowed is float else value in allowed  # type: ignore[operator]
        if not ok:
            raise InvalidInputError.make(f"{key}={value!r} for {name} at {where}",
                                         "a finite number" if allowed is float else f"one of {allowed}",
                                         "Fix the value in the prompt file.")
    return Check(name, tuple(sorted(given.items())))


def parse_prompts(data: Any, source: str = "prompts") -> list[FreeformPrompt]:
    """The prompt list of a prompt file's JSON object ({"prompts": [{"id", "text", "style", "checks"}, ...]})."""
    rows = data.get("prompts") if isinstance(data, Mapping) else None
    if not isinstance(rows, list) or not rows:
        raise InvalidInputError.make(f"{type(data).__name__} from {source}", 'an object {"prompts": [...]} with at '
                                     "least one prompt", "Check the file.")
    prompts, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{source} prompt {i}"
        if not isinstance(row, Mapping) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise InvalidInputError.make(f"{row!r} at {where}", 'an object with a non-empty "text"', "Fix the entry.")
        checks = row.get("checks")
        if not isinstance(checks, list) or not 1 <= len(checks) <= 4:
            raise InvalidInputError.make(f"{checks!r} as the checks of {where}", "a list of 1 to 4 checks",
                                         "Give every prompt at least one check.")
        prompt_id = str(row.get("id", i))
        if prompt_id in seen:
            raise InvalidInputError.make(f"the id {prompt_id!r} twice in {source}", "unique prompt ids",
                                         "Renumber the entries.")
        seen.add(prompt_id)
        prompts.append(FreeformPrompt(prompt_id, row["text"], str(row.get("style", "")),
                                      tuple(parse_check(c, f"{where} ({prompt_id})") for c in checks)))
    return prompts


def load_prompts(path: str | Path | None = None) -> list[FreeformPrompt]:
    """The shipped development set (None) or another prompt file of the same layout."""
    source = Path(path) if path is not None else PROMPTS_PATH
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError.make(f"the prompt file {str(source)!r}, which does not exist", "a JSON prompt file",
                                     "Check the path (None: the shipped set).") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError.make(f"the prompt file {str(source)!r}, which is not JSON ({exc})",
                                     "a JSON prompt file", "Fix the file.") from None
    return parse_prompts(data, source.name)


# ------------------------------------------------------------------------------------------- scoring
def check_results(joints_m: np.ndarray, prompts: Sequence[FreeformPrompt]) -> list[list[bool]]:
    """Each prompt's checks on its own pose: joints_m [P, 22, 3] (pose i answers prompt i)."""
    joints = np.asarray(joints_m, dtype=np.float64)
    if joints.shape != (len(prompts), NUM_JOINTS, 3):
        raise InvalidInputError.make(f"joints of shape {list(joints.shape)} for {len(prompts)} prompts",
                                     f"[{len(prompts)}, {NUM_JOINTS}, 3], one pose per prompt", "Generate one pose "
                                     "for every prompt, in order.")
    return [[c.holds(Body(j)) for c in prompt.checks] for j, prompt in zip(joints, prompts)]


def summarize(prompts: Sequence[FreeformPrompt], results: Sequence[Sequence[bool]]) -> dict[str, Any]:
    """Scores of per-check results: prompts satisfied (all checks hold), checks hold, and per predicate."""
    per_predicate: dict[str, list[bool]] = {}
    for prompt, held in zip(prompts, results):
        for check, ok in zip(prompt.checks, held):
            per_predicate.setdefault(check.predicate, []).append(bool(ok))
    satisfied = [all(held) for held in results]
    flat = [ok for held in results for ok in held]
    return {"prompts_satisfied": sum(satisfied) / len(satisfied), "satisfied": int(sum(satisfied)),
            "prompts": len(satisfied), "checks_hold": sum(flat) / len(flat),
            "per_predicate": {k: round(sum(v) / len(v), 4) for k, v in sorted(per_predicate.items())},
            "per_prompt": [{"id": p.id, "text": p.text, "satisfied": all(held),
                            "checks": {str(c): bool(ok) for c, ok in zip(p.checks, held)}}
                           for p, held in zip(prompts, results)]}


def constant_pose_scores(joints_m: np.ndarray, prompts: Sequence[FreeformPrompt]) -> np.ndarray:
    """[K, P] whether candidate pose k (joints_m [K, 22, 3]) satisfies prompt p."""
    bodies = [Body(j) for j in np.asarray(joints_m, dtype=np.float64)]
    return np.array([[all(c.holds(b) for c in prompt.checks) for prompt in prompts] for b in bodies], dtype=bool)


def best_constant_pose(candidates: Mapping[str, np.ndarray], prompts: Sequence[FreeformPrompt] | None = None,
                       ) -> dict[str, Any]:
    """The one pose (name -> joints [22, 3]) that, given as the answer to every prompt, satisfies the most prompts
    (ties: the first name); with its prompts-satisfied and checks-hold scores."""
    prompts = list(prompts) if prompts is not None else load_prompts()
    if not candidates:
        raise InvalidInputError.make("no candidate poses", "at least one", "Pass a dict name -> joints [22, 3].")
    names = list(candidates)
    joints = np.stack([np.asarray(candidates[n], dtype=np.float64) for n in names])
    wins = constant_pose_scores(joints, prompts).sum(axis=1)
    best = int(np.argmax(wins))
    summary = summarize(prompts, check_results(np.repeat(joints[best:best + 1], len(prompts), axis=0), prompts))
    return {"name": names[best], "prompts_satisfied": summary["prompts_satisfied"],
            "satisfied": summary["satisfied"], "prompts": len(prompts), "checks_hold": summary["checks_hold"],
            "candidates": len(names)}


def candidate_poses(mean_pose_aa: np.ndarray | None = None, pool_axis_angle: np.ndarray | None = None,
                    ) -> dict[str, np.ndarray]:
    """The baseline's candidates, name -> joints [22, 3]: the SDK's example poses, the mean pose, the pool's poses."""
    from unipose_sdk.body.examples import example_pose, example_pose_names
    from unipose_sdk.body.pose import Pose

    out = {f"example pose {name!r}": example_pose(name).joints()[0].numpy() for name in example_pose_names()}
    if mean_pose_aa is not None:
        mean = Pose.from_axis_angle(np.asarray(mean_pose_aa, dtype=np.float32).reshape(1, 66))
        out["mean pose"] = mean.joints()[0].numpy()
    if pool_axis_angle is not None and len(pool_axis_angle):
        joints = Pose.from_axis_angle(np.asarray(pool_axis_angle, dtype=np.float32).reshape(-1, 66)).joints().numpy()
        out.update({f"evaluation pool pose {i}": j for i, j in enumerate(joints)})
    return out


def freeform_score(generator_or_session: Any, prompts: Sequence[FreeformPrompt] | str | Path | None = None,
                   ) -> dict[str, Any]:
    """Generate a pose for every free-form prompt (one batch call) and score it: a quick diagnostic for training.

    generator_or_session: a `Generator`, or a loaded `UniPose` session (wrapped in a Generator with default
    options). prompts: None (the shipped development set), a prompt file, or parsed prompts.
    Returns {"prompts_satisfied", "satisfied", "prompts", "checks_hold", "per_predicate", "per_prompt"}.
    """
    from unipose_sdk.session import UniPose
    from unipose_sdk.tasks.generator import Generator

    if isinstance(generator_or_session, Generator):
        generator = generator_or_session
    elif isinstance(generator_or_session, UniPose):
        generator = Generator.from_session(generator_or_session)
    else:
        raise InvalidInputError.make(f"a {type(generator_or_session).__name__}", "a Generator or a UniPose session",
                                     "Pass `Generator.from_pretrained(model_dir)` or its `.session`.")
    items = list(load_prompts(prompts) if prompts is None or isinstance(prompts, (str, Path)) else prompts)
    results = generator.generate([p.text for p in items])
    joints = np.stack([r.pose.joints()[0].numpy() for r in results])
    return summarize(items, check_results(joints, items))
