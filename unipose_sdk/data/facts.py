"""Geometric facts about one posed body, measured on its joints (the "posecodes" of the data engine).

`extract_facts(joints_m)` turns [22, 3] joint positions (metres, SMPL axes, +y up, grounded so the lowest joint
is at y = 0 - see `poses.joints_from_axis_angle`) into a list of `Fact(kind, subject, value, level)`:
  kind     what is measured ("knee_bend", "hand_touch", ...; `FACT_KINDS` lists all 27)
  subject  which body part ("left", "right", "body", "torso", "left_hand:head", ...)
  value    the measured number, in the unit its kind documents (degrees or metres)
  level    the category the caption states ("bent", "above_head", ...), from fixed thresholds below
Facts with an uninformative level (e.g. a thigh hanging straight down) are not produced.

Three frames are used, all built from the joints:
  world  +y up: heights, ground contact, lying / upside down, torso lean
  root   the pelvis' frame (hip line + pelvis-to-spine1): legs (stride, crossing, thigh raise)
  torso  pelvis-to-neck as up, the shoulder line as left: arms (direction, behind the back, crossing)
The head's turn needs rotations, not positions: it is measured only if `global_rotmat` is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unipose_sdk.body.skeleton import JOINT_INDEX

J = JOINT_INDEX
SIDES = ("left", "right")


@dataclass(frozen=True)
class Fact:
    kind: str
    subject: str
    value: float
    level: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What a caption states: the measured value itself is never in the text."""
        return (self.kind, self.subject, self.level)


# kind -> unit of `value`; the order is the order captions mention body-level facts first.
FACT_KINDS: dict[str, str] = {
    "posture": "deg", "squat": "m", "sit": "m", "kneel": "m", "lunge": "deg",
    "torso_pitch": "deg", "torso_roll": "deg", "torso_twist": "deg",
    "knee_bend": "deg", "elbow_bend": "deg", "thigh": "deg", "leg_raised": "m", "feet_ground": "m",
    "feet_distance": "m", "legs_crossed": "m", "stride": "m", "leg_symmetry": "m",
    "hand_height": "m", "arm_direction": "cos", "hands_distance": "m", "hand_touch": "m",
    "hand_behind_back": "m", "arms_crossed": "m", "arm_symmetry": "m",
    "head_pitch": "deg", "head_roll": "deg", "head_turn": "deg",
}

# Thresholds (why these numbers: chosen so the archetypes land in the level a person would name).
BEND_LEVELS_DEG = ((20.0, "straight"), (55.0, "slightly_bent"), (105.0, "bent"), (180.1, "deeply_bent"))
GROUND_TOLERANCE_M = 0.07
TOUCH_DISTANCE_M = 0.17


def unit_vector(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def orthonormal_frame(left: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[3, 3] rows (left, up, forward), orthonormal, with `up` kept exactly; `frame @ v` expresses v in it."""
    up = unit_vector(up)
    left = unit_vector(left - np.dot(left, up) * up)
    return np.stack([left, up, np.cross(left, up)])


def pelvis_frame(joints_m: np.ndarray) -> np.ndarray:
    """The pelvis' frame (rows left, up, forward) of [22, 3] joints: the hip line, and the pelvis-to-spine1 axis."""
    p = joints_m
    return orthonormal_frame(p[J["left_hip"]] - p[J["right_hip"]], p[J["spine1"]] - p[J["pelvis"]])


def torso_frame(joints_m: np.ndarray) -> np.ndarray:
    """The torso's frame (rows left, up, forward): the shoulder line, and the pelvis-to-neck axis."""
    p = joints_m
    return orthonormal_frame(p[J["left_shoulder"]] - p[J["right_shoulder"]], p[J["neck"]] - p[J["pelvis"]])


def bend_deg(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Flexion at b of the chain a-b-c: 0 when straight, 180 when folded flat."""
    cos = np.dot(unit_vector(a - b), unit_vector(c - b))
    return 180.0 - float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _level(value: float, table: tuple[tuple[float, str], ...]) -> str:
    for upper, name in table:
        if value < upper:
            return name
    return table[-1][1]


def extract_facts(joints_m: np.ndarray, global_rotmat: np.ndarray | None = None) -> list[Fact]:
    """All facts of one pose: joints_m [22, 3] (grounded), optional global_rotmat [22, 3, 3]."""
    p = np.asarray(joints_m, dtype=np.float64)
    if p.shape != (22, 3):
        raise ValueError(f"joints_m must be [22, 3], got {p.shape}")
    facts: list[Fact] = []

    def add(kind: str, subject: str, value: float, level: str) -> None:
        facts.append(Fact(kind, subject, round(float(value), 4), level))

    root = pelvis_frame(p)
    torso = torso_frame(p)
    torso_up_world = torso[1]

    # --- whole body: lying, upside down ----------------------------------------------------------------
    tilt_deg = float(np.degrees(np.arccos(np.clip(torso_up_world[1], -1, 1))))
    upright = tilt_deg < 50.0
    lying = False
    if tilt_deg > 130.0:
        add("posture", "body", tilt_deg, "upside_down")
    elif tilt_deg > 55.0 and p[J["pelvis"], 1] < 0.45 and p[J["head"], 1] < 0.6:
        lying = True
        face_up = root[2, 1]  # the pelvis' forward axis pointing to the sky = lying on the back
        level = "lying_back" if face_up > 0.6 else "lying_front" if face_up < -0.6 else "lying_side"
        add("posture", "body", tilt_deg, level)

    # --- legs -----------------------------------------------------------------------------------------
    knee_flex = {s: bend_deg(p[J[f"{s}_hip"]], p[J[f"{s}_knee"]], p[J[f"{s}_ankle"]]) for s in SIDES}
    foot_low = {s: min(p[J[f"{s}_ankle"], 1], p[J[f"{s}_foot"], 1]) for s in SIDES}
    on_ground = {s: foot_low[s] < GROUND_TOLERANCE_M for s in SIDES}
    kneeling = {s: p[J[f"{s}_knee"], 1] < 0.1 and p[J[f"{s}_hip"], 1] - p[J[f"{s}_knee"], 1] > 0.25 for s in SIDES}
    thigh_deg = {}
    for s in SIDES:
        # Thigh raise in the pelvis' sagittal plane: 0 hanging down, 90 forwards, negative backwards. A thigh
        # spread sideways has a short sagittal shadow, so its raise is left unmeasured (nan).
        thigh = root @ unit_vector(p[J[f"{s}_knee"]] - p[J[f"{s}_hip"]])
        sagittal = np.hypot(thigh[1], thigh[2])
        thigh_deg[s] = float(np.degrees(np.arctan2(thigh[2], -thigh[1]))) if sagittal > 0.6 else float("nan")
    knee_gap_m = float(np.linalg.norm(p[J["left_knee"]] - p[J["right_knee"]]))
    ankle_gap_m = float(np.linalg.norm(p[J["left_ankle"]] - p[J["right_ankle"]]))
    knees_wide = knee_gap_m > ankle_gap_m + 0.3  # knees spread over closer feet: cross-legged, not squatting
    pelvis_height_m = p[J["pelvis"], 1]

    if not lying:
        if any(kneeling.values()):
            for s in SIDES:
                if kneeling[s]:
                    add("kneel", s, p[J[f"{s}_knee"], 1], "kneeling")
        elif (min(knee_flex.values()) > 105 and pelvis_height_m < 0.55 and all(on_ground.values())
              and not knees_wide):
            add("squat", "body", pelvis_height_m, "squatting")
        elif upright and ((min(knee_flex.values()) > 45 and min(thigh_deg.values()) > 55
                           and 0.25 < pelvis_height_m < 0.8) or (knees_wide and min(knee_flex.values()) > 90
                                                                 and pelvis_height_m < 0.5)):
            add("sit", "body", pelvis_height_m, "sitting")
        for front, back in (("left", "right"), ("right", "left")):
            if (knee_flex[front] > 60 and thigh_deg[front] > 50 and thigh_deg[back] < -10
                    and knee_flex[back] < 60 and upright):
                add("lunge", front, thigh_deg[front], "lunging")

    for s in SIDES:
        add("knee_bend", s, knee_flex[s], _level(knee_flex[s], BEND_LEVELS_DEG))
        level = _level(thigh_deg[s], ((-15.0, "back"), (25.0, ""), (70.0, "raised"), (110.0, "right_angle"),
                                      (999.0, "tucked")))
        if level and not np.isnan(thigh_deg[s]):
            add("thigh", s, thigh_deg[s], level)

    if not lying:
        for s, o in (("left", "right"), ("right", "left")):
            lift_m = foot_low[s] - foot_low[o]
            if upright and on_ground[o] and lift_m > 0.2:
                add("leg_raised", s, lift_m, "raised_high" if lift_m > 0.5 else "raised")
        grounded = [s for s in SIDES if on_ground[s]]
        level = {2: "both", 0: "neither"}.get(len(grounded), f"{grounded[0] if grounded else ''}_only")
        add("feet_ground", "feet", min(foot_low.values()), level)

    ankle_rel = {s: root @ (p[J[f"{s}_ankle"]] - p[J["pelvis"]]) for s in SIDES}  # (left, up, forward)
    feet_gap_m = abs(float(ankle_rel["left"][0] - ankle_rel["right"][0]))  # sideways spread; stride is apart
    add("feet_distance", "feet", feet_gap_m, _level(feet_gap_m, ((0.2, "together"), (0.5, "apart"), (9, "wide"))))
    crossing_m = ankle_rel["right"][0] - ankle_rel["left"][0]  # > 0: the left ankle is right of the right one
    if crossing_m > 0.05:
        add("legs_crossed", "legs", crossing_m, "crossed")
    stride_m = ankle_rel["left"][2] - ankle_rel["right"][2]
    if abs(stride_m) > 0.3:
        add("stride", "left" if stride_m > 0 else "right", abs(stride_m), "forward")

    def mirrored_mismatch_m(frame: np.ndarray, base: str, parts: tuple[str, ...]) -> float:
        flip = np.array([-1.0, 1.0, 1.0])
        gaps = [np.linalg.norm(frame @ (p[J[f"left_{q}"]] - p[J[f"left_{base}"]])
                               - flip * (frame @ (p[J[f"right_{q}"]] - p[J[f"right_{base}"]]))) for q in parts]
        return float(np.mean(gaps))

    leg_gap_m = mirrored_mismatch_m(root, "hip", ("knee", "ankle"))
    if leg_gap_m < 0.06:
        add("leg_symmetry", "legs", leg_gap_m, "symmetric")

    # --- torso ---------------------------------------------------------------------------------------
    if not lying and tilt_deg <= 130.0:
        # The heading is square to the hip line, which stays level however far the pelvis tips forwards (the
        # pelvis' own forward axis points at the floor in a deep fold, and the chest's backwards past it).
        hip_level = root[0] * [1.0, 0.0, 1.0]
        heading = (unit_vector(np.cross(hip_level, [0.0, 1.0, 0.0])) if np.linalg.norm(hip_level) > 0.3
                   else unit_vector(root[2] * [1.0, 0.0, 1.0]) if abs(root[2, 1]) < 0.95
                   else unit_vector(torso[2] * [1, 0, 1]))
        side_axis = np.cross([0.0, 1.0, 0.0], heading)  # body's left, horizontal
        spine = p[J["neck"]] - p[J["pelvis"]]
        pitch_deg = float(np.degrees(np.arctan2(np.dot(spine, heading), spine[1])))
        # Roll: the spine's angle out of the sagittal plane, whatever its pitch (measured against the vertical
        # alone, a spine bent past horizontal read as rolled 90+ degrees).
        roll_deg = float(np.degrees(np.arcsin(np.clip(np.dot(unit_vector(spine), side_axis), -1.0, 1.0))))
        add("torso_pitch", "torso", pitch_deg, _level(
            pitch_deg, ((-12.0, "back"), (12.0, "upright"), (30.0, "slightly_forward"), (60.0, "forward"),
                        (999.0, "bent_over"))))
        if abs(roll_deg) > 12.0:
            add("torso_roll", "torso", roll_deg, "left" if roll_deg > 0 else "right")
    hip_line = root[0]
    shoulder_line = unit_vector(p[J["left_shoulder"]] - p[J["right_shoulder"]])
    shoulder_line = unit_vector(shoulder_line - np.dot(shoulder_line, torso[1]) * torso[1])
    twist_deg = float(np.degrees(np.arctan2(np.dot(np.cross(hip_line, shoulder_line), torso[1]),
                                            np.dot(hip_line, shoulder_line))))
    if abs(twist_deg) > 20.0:
        add("torso_twist", "torso", twist_deg, "left" if twist_deg > 0 else "right")

    # --- arms ----------------------------------------------------------------------------------------
    for s in SIDES:
        flex = bend_deg(p[J[f"{s}_shoulder"]], p[J[f"{s}_elbow"]], p[J[f"{s}_wrist"]])
        add("elbow_bend", s, flex, _level(flex, BEND_LEVELS_DEG))
        arm = torso @ unit_vector(p[J[f"{s}_wrist"]] - p[J[f"{s}_shoulder"]])
        outward = arm[0] if s == "left" else -arm[0]
        directions = {"out": outward, "up": arm[1], "down": -arm[1], "forward": arm[2], "backward": -arm[2]}
        best = max(directions, key=directions.get)
        if directions[best] > 0.8:
            add("arm_direction", s, directions[best], best)
        wrist = p[J[f"{s}_wrist"]]
        if upright:
            height_m = wrist[1] - p[J[f"{s}_shoulder"], 1]
            level = ("above_head" if wrist[1] > p[J["head"], 1] + 0.08 else
                     "head" if wrist[1] > p[J["neck"], 1] + 0.02 else
                     "shoulder" if wrist[1] > p[J[f"{s}_shoulder"], 1] - 0.1 else
                     "chest" if wrist[1] > p[J["spine2"], 1] else
                     "waist" if wrist[1] > p[J["pelvis"], 1] - 0.1 else "low")
            add("hand_height", s, height_m, level)
        wrist_torso = torso @ (wrist - p[J["spine2"]])
        if wrist_torso[2] < -0.12 and abs(wrist_torso[0]) < 0.22:
            add("hand_behind_back", s, -wrist_torso[2], "behind")
        # Touch targets: the head, the waist above each hip, each knee, each foot, the other shoulder.
        targets = {"head": p[J["head"]]}
        for t in SIDES:
            targets[f"{t}_hip"] = p[J[f"{t}_hip"]] + 0.13 * root[1] + 0.04 * (root[0] if t == "left" else -root[0])
            targets[f"{t}_knee"] = p[J[f"{t}_knee"]]
            targets[f"{t}_foot"] = p[J[f"{t}_ankle"]]
        other = "right" if s == "left" else "left"
        targets[f"{other}_shoulder"] = p[J[f"{other}_shoulder"]]
        for name, point in targets.items():
            gap_m = float(np.linalg.norm(wrist - point))
            limit_m = 0.22 if name == "head" else TOUCH_DISTANCE_M
            if gap_m < limit_m:
                add("hand_touch", f"{s}_hand:{name}", gap_m, "touching")

    hands_gap_m = float(np.linalg.norm(p[J["left_wrist"]] - p[J["right_wrist"]]))
    level = _level(hands_gap_m, ((0.12, "together"), (0.3, "close"), (1.1, ""), (99, "wide")))
    if level:
        add("hands_distance", "hands", hands_gap_m, level)
    lw, rw = (torso @ (p[J[f"{s}_wrist"]] - p[J["spine3"]]) for s in SIDES)
    if lw[0] < -0.03 and rw[0] > 0.03 and lw[2] > 0.0 and rw[2] > 0.0 and lw[1] < 0.1 and rw[1] < 0.1:
        add("arms_crossed", "arms", min(-lw[0], rw[0]), "crossed")
    arm_gap_m = mirrored_mismatch_m(torso, "shoulder", ("elbow", "wrist"))
    if arm_gap_m < 0.07:
        add("arm_symmetry", "arms", arm_gap_m, "symmetric")

    # --- head ----------------------------------------------------------------------------------------
    head = torso @ (p[J["head"]] - p[J["neck"]])
    rest_pitch_deg = 29.0  # the rest skeleton's head sits forward of the neck (offset 0.09 up, 0.05 forward)
    head_pitch_deg = float(np.degrees(np.arctan2(head[2], head[1]))) - rest_pitch_deg
    if abs(head_pitch_deg) > 20.0:
        add("head_pitch", "head", head_pitch_deg, "down" if head_pitch_deg > 0 else "up")
    head_roll_deg = float(np.degrees(np.arctan2(head[0], head[1])))
    if abs(head_roll_deg) > 15.0:
        add("head_roll", "head", head_roll_deg, "left" if head_roll_deg > 0 else "right")
    if global_rotmat is not None:
        rel = np.asarray(global_rotmat[J["spine3"]]).T @ np.asarray(global_rotmat[J["head"]])
        turn_deg = float(np.degrees(np.arctan2(rel[0, 2], rel[2, 2])))  # head's forward axis, in chest frame
        if abs(turn_deg) > 25.0:
            add("head_turn", "head", turn_deg, "left" if turn_deg > 0 else "right")
    return facts


def facts_for_poses(axis_angle: np.ndarray) -> list[list[Fact]]:
    """Facts of every pose in [n, 66] axis-angle (head turn included)."""
    from unipose_sdk.data.poses import joints_and_rotations

    joints, rotations = joints_and_rotations(axis_angle)
    return [extract_facts(j, r) for j, r in zip(joints, rotations)]


def facts_to_json(facts: list[Fact]) -> list[list]:
    """Compact JSON form: [kind, subject, value, level] per fact."""
    return [[f.kind, f.subject, f.value, f.level] for f in facts]


def facts_from_json(rows: list[list]) -> list[Fact]:
    return [Fact(str(k), str(s), float(v), str(lv)) for k, s, v, lv in rows]
