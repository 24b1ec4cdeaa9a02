"""Free-form evaluation: every predicate true and false on constructed poses, the prompt file, the score on the
embedded model, and the best-constant-pose baseline."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from unipose_sdk.body.examples import example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_INDEX, NUM_JOINTS
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.evaluation import freeform as F
from unipose_sdk.evaluation.runner import to_markdown

_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


# ------------------------------------------------------------------------------------------- pose building
# A pose is {joint: [(axis, degrees), ...]} applied in order about the parent's axes (SMPL frame: +x the body's
# left, +y up, +z forward); "B:part" sets the left joint and the mirrored right one. See body/examples.py for signs.
def _rot(steps: list[tuple[str, float]]) -> np.ndarray:
    m = np.eye(3)
    for axis, deg in steps:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        step = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
                "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
        m = np.asarray(step) @ m
    return m


def _mirror_steps(steps: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(a, d if a == "x" else -d) for a, d in steps]


def _rotmat(spec: dict[str, list[tuple[str, float]]]) -> np.ndarray:
    """[22, 3, 3] local rotations of a spec."""
    out = np.tile(np.eye(3), (NUM_JOINTS, 1, 1))
    for key, steps in spec.items():
        if key.startswith("B:"):
            out[JOINT_INDEX["left_" + key[2:]]] = _rot(steps)
            out[JOINT_INDEX["right_" + key[2:]]] = _rot(_mirror_steps(steps))
        else:
            out[JOINT_INDEX[key]] = _rot(steps)
    return out


def _axis_angle(spec: dict[str, list[tuple[str, float]]]) -> np.ndarray:
    return Pose.from_rotmat(_rotmat(spec)).axis_angle().numpy().reshape(66)


def _joints(specs: list[dict]) -> np.ndarray:
    """[N, 22, 3] joints of N specs in one FK call."""
    return Pose.from_rotmat(np.stack([_rotmat(s) for s in specs])).joints().numpy()


def _body(spec: dict) -> F.Body:
    return F.Body(_joints([spec])[0])


def _mirrored(spec: dict) -> dict:
    """The left/right mirror image: sides swapped, y and z angles negated (centre joints too)."""
    out = {}
    for key, steps in spec.items():
        name = key.replace("left_", "@").replace("right_", "left_").replace("@", "right_")
        out[name] = steps if key.startswith("B:") else _mirror_steps(steps)  # a "B:" pair is its own mirror
    return out


# Arm configurations, LEFT side (shoulder steps, elbow steps); the right side gets the mirror image.
ARMS = {
    "down": ([("z", -80)], [("y", -10)]),
    "up": ([("z", 80)], []),
    "side": ([], []),
    "forward": ([("y", -90)], []),
    "hips": ([("x", 80), ("y", 5), ("z", -58)], [("x", 39), ("y", -83), ("z", -10)]),
    "behind_back": ([("z", -95), ("x", 35)], []),
    "behind_head": ([("x", -27), ("y", 70), ("z", 120)], [("y", -124)]),
    "face": ([("x", -100), ("y", -138), ("z", 25)], [("y", -108)]),
    "opp_shoulder": ([("x", 75), ("z", -145)], [("y", -77)]),
    "chest": ([("x", 31), ("y", -89), ("z", 14)], [("y", -117)]),
    "together_chest": ([("x", 61), ("y", -60), ("z", -66)], [("y", -77)]),
    "together_up": ([("z", 100)], []),
    "flex": ([("x", -90), ("z", 10)], [("y", -95)]),  # upper arm out, forearm up (waving, flexing)
}
CROSSED = {"left_shoulder": [("x", 68), ("y", -28), ("z", -95)], "left_elbow": [("x", 40), ("y", -100), ("z", 10)],
           "right_shoulder": [("x", 72), ("y", 21), ("z", 94)], "right_elbow": [("x", 40), ("y", 98), ("z", -10)]}
# Legs, trunk and global orientation.
BASES = {
    "stand": {},
    "stand_apart": {"B:hip": [("z", 12)]},
    "wide": {"B:hip": [("z", 22)]},
    "squat": {"pelvis": [("x", 30)], "B:hip": [("x", -118), ("y", 10)], "B:knee": [("x", 115)],
              "B:ankle": [("x", -27)], "spine1": [("x", -8)]},
    "chair": {"B:hip": [("x", -88)], "B:knee": [("x", 88)]},
    "floor_long": {"B:hip": [("x", -90)]},
    "floor_hug": {"pelvis": [("x", -15)], "B:hip": [("x", -125)], "B:knee": [("x", 150)]},
    "cross_legged": {"B:hip": [("x", -110), ("y", 20), ("z", -24)], "B:knee": [("x", 131), ("y", 10), ("z", 5)]},
    "kneel": {"B:hip": [("x", -5)], "B:knee": [("x", 95)], "B:ankle": [("x", 40)]},
    "kneel_right": {"left_hip": [("x", -90)], "left_knee": [("x", 92)], "right_hip": [("x", 2)],
                    "right_knee": [("x", 92)], "right_ankle": [("x", 40)]},
    "lunge_left": {"left_hip": [("x", -80)], "left_knee": [("x", 85)], "right_hip": [("x", 20)],
                   "right_knee": [("x", 60)], "right_ankle": [("x", 20)]},  # rear knee low, both feet down
    "on_left": {"right_hip": [("x", -70)], "right_knee": [("x", 90)]},  # standing on the left leg, right knee up
    "side_leg_right": {"right_hip": [("z", -45)]},
    "kick_left": {"left_hip": [("x", -75)]},
    "tree_left": {"left_hip": [("x", -36), ("y", 50), ("z", 25)], "left_knee": [("x", 131)]},
    "warrior2": {"left_hip": [("x", -25), ("y", -45), ("z", 45)], "left_knee": [("x", 85)],
                 "right_hip": [("x", 5), ("y", 15), ("z", -35)]},
    "warrior1": {"left_hip": [("x", -70)], "left_knee": [("x", 70)], "right_hip": [("x", 30)]},
    "back": {"pelvis": [("x", -90)]},
    "back_knees": {"pelvis": [("x", -90)], "B:hip": [("x", -60)], "B:knee": [("x", 100)]},
    "back_spread": {"pelvis": [("x", -90)], "B:hip": [("z", 25)]},
    "front": {"pelvis": [("x", 90)]},
    "side": {"pelvis": [("z", 90)]},
    "side_curled": {"pelvis": [("z", 90)], "B:hip": [("x", -60)], "B:knee": [("x", 90)]},
    "bow": {"pelvis": [("x", 40)], "B:hip": [("x", -40)]},
    "bow_deep": {"pelvis": [("x", 70)], "B:hip": [("x", -70)]},
    "fold": {"pelvis": [("x", 120)], "B:hip": [("x", -120)], "spine1": [("x", 20)]},
    "fours": {"pelvis": [("x", 90)], "B:hip": [("x", -90)], "B:knee": [("x", 90)]},
    "dog": {"pelvis": [("x", 130)], "B:hip": [("x", -85)]},
    "child": {"pelvis": [("x", 100)], "B:hip": [("x", -125)], "B:knee": [("x", 150)]},
    "handstand": {"pelvis": [("z", 180)]},
    "lean_left": {"spine1": [("z", -12)], "spine2": [("z", -12)], "spine3": [("z", -10)]},
    "lean_back": {"spine1": [("x", -15)], "spine2": [("x", -15)], "spine3": [("x", -10)]},
    "goddess": {"B:hip": [("x", -45), ("z", 35)], "B:knee": [("x", 75)]},
    "chair_pose": {"pelvis": [("x", 20)], "B:hip": [("x", -70)], "B:knee": [("x", 70)]},
    "knees_bent": {"B:hip": [("x", -25)], "B:knee": [("x", 50)], "B:ankle": [("x", -25)]},
}
ARM_PAIRS = [(a, a) for a in ARMS] + [
    ("up", "side"), ("hips", "flex"), ("down", "forward"), ("up", "down"), ("down", "opp_shoulder"),
    ("face", "down"), ("flex", "down"), ("hips", "down"), ("up", "face"), ("side", "hips")]
# Hands placed for one body (found by a numeric fit of the arm angles, then rounded).
EXTRAS = {
    "chair, hands on knees": {**BASES["chair"], "B:shoulder": [("x", 38), ("y", -142), ("z", 79)]},
    "leaning on straight arms, hands on knees": {"pelvis": [("x", 35)], "B:hip": [("x", -35)], "B:knee": [("x", 20)],
                                                 "B:shoulder": [("x", 74), ("y", -17), ("z", -99)]},
    "folded, right hand to the left foot": {**BASES["fold"], "left_shoulder": [("y", -90)],
                                            "right_shoulder": _mirror_steps([("x", -183), ("y", -114), ("z", -18)])},
}


def _spec(base: str, left: str, right: str) -> dict:
    spec = dict(BASES[base])
    spec["left_shoulder"], spec["left_elbow"] = ARMS[left]
    spec["right_shoulder"], spec["right_elbow"] = _mirror_steps(ARMS[right][0]), _mirror_steps(ARMS[right][1])
    return spec


@pytest.fixture(scope="module")
def library() -> dict[str, F.Body]:
    """Witness poses: every body base with every arm pairing, arms crossed, and the placed-hand extras, with mirrors."""
    specs = {f"{b} | {left}/{right}": _spec(b, left, right) for b in BASES for left, right in ARM_PAIRS}
    specs.update({f"{b} | crossed": {**BASES[b], **CROSSED} for b in BASES})
    specs.update(EXTRAS)
    specs.update({f"mirror of {name}": _mirrored(spec) for name, spec in list(specs.items())})
    joints = _joints(list(specs.values()))
    return {name: F.Body(j) for name, j in zip(specs, joints)}


# ------------------------------------------------------------------------------------------- predicates
def _check(text: str) -> F.Check:
    """'name(side, key=value)' -> Check (the test's shorthand)."""
    name, _, args = text.partition("(")
    raw: dict = {"predicate": name}
    for arg in filter(None, (a.strip() for a in args.rstrip(")").split(","))):
        key, eq, value = arg.partition("=")
        if not eq:
            key, value = "side", arg
        raw[key] = float(value) if value.replace(".", "").isdigit() else value
    return F.parse_check(raw, "test")


# (check, a pose where it holds, a pose where it does not); every predicate appears at least once.
CASES = [
    ("hand_above_head(both)", _spec("stand", "up", "up"), _spec("stand", "side", "side")),
    ("hand_above_head(right)", _spec("stand", "down", "up"), _spec("stand", "up", "down")),
    ("hand_above_shoulder(left)", _spec("stand", "flex", "down"), _spec("stand", "down", "flex")),
    ("hand_above_shoulder(either)", _spec("stand", "down", "flex"), _spec("stand", "forward", "forward")),
    ("hand_near_floor(both)", _spec("fold", "forward", "forward"), _spec("bow", "forward", "forward")),
    ("arm_straight(both)", _spec("stand", "side", "side"), _spec("stand", "side", "flex")),
    ("arm_bent(right)", _spec("stand", "down", "hips"), _spec("stand", "hips", "down")),
    ("arm_up(both)", _spec("back", "up", "up"), _spec("back", "down", "down")),
    ("arm_down(left)", _spec("stand", "down", "side"), _spec("stand", "side", "down")),
    ("arm_forward(both)", _spec("stand", "forward", "forward"), _spec("stand", "side", "side")),
    ("arm_sideways(both)", _spec("stand", "side", "side"), _spec("stand", "forward", "side")),
    ("hand_near(both, target=hip)", _spec("stand", "hips", "hips"), _spec("stand", "side", "side")),
    ("hand_near(left, target=head)", _spec("stand", "behind_head", "down"), _spec("stand", "down", "behind_head")),
    ("hand_near(right, target=shoulder, target_side=opposite)", _spec("stand", "down", "opp_shoulder"),
     _spec("stand", "down", "chest")),
    ("hand_near(both, target=chest)", _spec("stand", "chest", "chest"), _spec("stand", "up", "up")),
    ("hand_near(both, target=knee)", EXTRAS["chair, hands on knees"], _spec("chair", "down", "down")),
    ("hand_near(right, target=foot, target_side=opposite)", EXTRAS["folded, right hand to the left foot"],
     _spec("stand", "down", "down")),
    ("hand_behind_back(both)", _spec("stand", "behind_back", "behind_back"), _spec("stand", "down", "down")),
    ("hands_together", _spec("stand", "together_chest", "together_chest"), _spec("stand", "chest", "down")),
    ("arms_crossed", {**BASES["stand"], **CROSSED}, _spec("stand", "together_chest", "together_chest")),
    ("knee_bent(both)", BASES["chair"], BASES["stand"]),
    ("knee_bent(left, min_deg=100)", BASES["tree_left"], BASES["chair"]),
    ("leg_straight(right)", BASES["tree_left"], _mirrored(BASES["tree_left"])),
    ("knee_raised(right)", BASES["on_left"], BASES["kneel"]),
    ("knee_raised(either)", BASES["chair"], BASES["bow_deep"]),  # hips flexed by bowing raise no knee
    ("leg_raised(right)", BASES["on_left"], BASES["stand"]),
    ("leg_raised(either)", BASES["tree_left"], BASES["kneel"]),
    ("leg_sideways(right)", BASES["side_leg_right"], BASES["kick_left"]),
    ("feet_apart", BASES["wide"], BASES["stand"]),
    ("feet_apart", BASES["wide"], BASES["side_leg_right"]),  # a leg lifted to the side is not a wide stance
    ("feet_together", BASES["stand"], BASES["wide"]),
    ("stride(left)", BASES["lunge_left"], _mirrored(BASES["lunge_left"])),
    ("stride(either)", BASES["lunge_left"], BASES["on_left"]),  # a knee lifted in front is not a step
    ("standing", BASES["stand"], BASES["chair"]),
    ("standing_straight", BASES["stand"], BASES["knees_bent"]),
    ("squatting", BASES["squat"], BASES["chair"]),
    ("kneeling(both)", BASES["kneel"], BASES["kneel_right"]),
    ("kneeling(right)", BASES["kneel_right"], _mirrored(BASES["kneel_right"])),
    ("sitting", BASES["chair"], BASES["kneel"]),
    ("sitting_on_floor", BASES["floor_long"], BASES["chair"]),
    ("hips_low", BASES["chair"], BASES["stand"]),
    ("hips_near_floor", BASES["floor_long"], BASES["chair"]),
    ("lying(facing=up)", BASES["back"], BASES["front"]),
    ("lying(facing=down)", BASES["front"], BASES["back"]),
    # lying on a side with the arms in the T-pose would put the lower hand through the floor: arms down
    ("lying(facing=side)", _spec("side", "down", "down"), _spec("back", "down", "down")),
    ("lying", _spec("side_curled", "down", "down"), _spec("bow_deep", "down", "down")),
    ("upside_down", BASES["handstand"], BASES["fold"]),
    ("torso_bent_forward", BASES["bow"], BASES["stand"]),
    ("torso_bent_forward(min_deg=60)", BASES["bow_deep"], BASES["bow"]),
    ("torso_upright", BASES["stand"], BASES["bow"]),
    ("torso_leaning_back", BASES["lean_back"], BASES["stand"]),
    ("torso_leaning_side(left)", BASES["lean_left"], _mirrored(BASES["lean_left"])),
]


@pytest.mark.parametrize(("check", "true_spec", "false_spec"), CASES, ids=[c[0] for c in CASES])
def test_each_predicate_holds_on_one_constructed_pose_and_not_on_another(check: str, true_spec: dict,
                                                                        false_spec: dict) -> None:
    parsed = _check(check)
    assert parsed.holds(_body(true_spec)) is True
    assert parsed.holds(_body(false_spec)) is False


def test_every_predicate_has_a_true_and_false_case() -> None:
    assert {_check(c).predicate for c, _, _ in CASES} == set(F.PREDICATES)


def test_sided_predicates_follow_the_persons_own_left_and_right(library: dict[str, F.Body]) -> None:
    """On mirrored poses every left check reads as the right one: no side is swapped anywhere."""
    sided = [name for name, p in F.PREDICATES.items() if p.params.get("side") in (F.SIDE_CHOICES, F.SIDES)]
    names = [n for n in library if not n.startswith("mirror of ")][::7]
    seen_true = Counter()
    for name in names:
        body, mirror = library[name], library[f"mirror of {name}"]
        for predicate in sided:
            extra = {"target": "knee", "target_side": "same"} if predicate == "hand_near" else {}
            left = F.parse_check({"predicate": predicate, "side": "left", **extra}, "test")
            right = F.parse_check({"predicate": predicate, "side": "right", **extra}, "test")
            assert left.holds(body) == right.holds(mirror), (name, predicate)
            seen_true[predicate] += left.holds(body)
    assert all(seen_true[p] for p in sided if p != "hand_near"), seen_true  # the comparison was not vacuous


def test_the_sdk_example_poses_read_as_their_names() -> None:
    body = {name: F.Body(example_pose(name).joints()[0].numpy()) for name in
            ("standing_relaxed", "standing_arms_raised", "squatting", "walking_stride", "sitting", "waving_right_hand")}
    ok = lambda check, name: _check(check).holds(body[name])  # noqa: E731
    assert ok("standing_straight", "standing_relaxed") and ok("arm_down(both)", "standing_relaxed")
    assert ok("hand_above_head(both)", "standing_arms_raised") and ok("arm_up(both)", "standing_arms_raised")
    assert ok("squatting", "squatting") and not ok("squatting", "sitting") and not ok("squatting", "standing_relaxed")
    assert ok("sitting", "sitting") and ok("knee_bent(both, min_deg=80)", "sitting") and not ok("standing", "sitting")
    assert ok("stride(left)", "walking_stride") and not ok("stride(right)", "walking_stride")
    assert ok("hand_above_shoulder(right)", "waving_right_hand") and not ok("hand_above_shoulder(left)",
                                                                            "waving_right_hand")
    assert ok("arm_bent(right)", "waving_right_hand") and ok("arm_straight(left)", "waving_right_hand")
    assert not any(ok(f"lying(facing={f})", name) for f in F.FACINGS for name in body)


def test_checks_do_not_depend_on_where_the_body_stands_or_faces() -> None:
    """Heights are from the lowest joint and directions from the body's own frame: moving the body or turning it
    about the vertical changes nothing."""
    joints = _joints([_spec(b, "hips", "flex") for b in ("stand", "lunge_left", "squat", "back", "bow")])
    yaw = _rot([("y", 130)])
    for j in joints:
        moved = j @ yaw.T + np.array([0.4, 0.25, -1.0])
        for predicate in ("stride(left)", "hand_near(left, target=hip)", "arm_bent(right)", "squatting",
                          "torso_bent_forward", "lying(facing=up)", "standing", "leg_raised(either)"):
            assert _check(predicate).holds(F.Body(j)) == _check(predicate).holds(F.Body(moved)), predicate


# ------------------------------------------------------------------------------------------- the prompt file
def test_the_prompt_file_parses_and_is_varied() -> None:
    prompts = F.load_prompts()
    assert len(prompts) >= 150
    assert len({p.id for p in prompts}) == len(prompts) and len({p.text.lower() for p in prompts}) == len(prompts)
    assert all(1 <= len(p.checks) <= 4 and p.checks[0].predicate in F.PREDICATES for p in prompts)
    styles = Counter(p.style for p in prompts)
    assert {"imperative", "third_person", "casual", "activity"} <= set(styles) and min(styles.values()) >= 3
    params = [dict(c.params) for p in prompts for c in p.checks]
    assert {"left", "right", "both", "either"} <= {c.get("side") for c in params}
    assert sum(len(p.checks) >= 2 for p in prompts) >= 50  # several facts at once
    assert set(F.PREDICATES) == {c.predicate for p in prompts for c in p.checks}  # every predicate is used
    assert "freeform_prompts.json" in Path(F.PROMPTS_PATH).name


def test_every_prompt_is_satisfied_by_some_constructed_pose(library: dict[str, F.Body]) -> None:
    """The checks of each prompt are jointly reachable by a plausible body: a perfect model can score 1.0."""
    unreachable = [p.text for p in F.load_prompts()
                   if not any(all(c.holds(b) for c in p.checks) for b in library.values())]
    assert not unreachable


@pytest.mark.parametrize(("entry", "message"), [
    ({"predicate": "hand_on_moon"}, "hand_on_moon"),
    ({"predicate": "arm_up"}, "add ['side']"),
    ({"predicate": "arm_up", "side": "middle"}, "side='middle'"),
    ({"predicate": "feet_apart", "side": "left"}, "Remove ['side']"),
    ({"predicate": "knee_bent", "side": "left", "min_deg": "lots"}, "a finite number"),
    ("arm_up", "a check object"),
])
def test_a_bad_check_is_refused_with_what_was_received(entry: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match="received") as info:
        F.parse_check(entry, "prompt 3")
    assert message in str(info.value) and "prompt 3" in str(info.value)


def test_bad_prompt_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    for data, message in (({"prompts": []}, "at least one prompt"),
                          ({"prompts": [{"text": "x", "checks": []}]}, "1 to 4 checks"),
                          ({"prompts": [{"id": "a", "text": "x", "checks": [{"predicate": "lying"}]},
                                        {"id": "a", "text": "y", "checks": [{"predicate": "lying"}]}]}, "twice")):
        path.write_text(json.dumps(data))
        with pytest.raises(InvalidInputError, match=message):
            F.load_prompts(path)
    path.write_text("{not json")
    with pytest.raises(InvalidInputError, match="not JSON"):
        F.load_prompts(path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        F.load_prompts(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------- scores
def test_scores_count_whole_prompts_and_single_checks(library: dict[str, F.Body]) -> None:
    prompts = F.parse_prompts({"prompts": [
        {"id": "a", "text": "arms up", "checks": [{"predicate": "hand_above_head", "side": "both"}]},
        {"id": "b", "text": "squat, arms up", "checks": [{"predicate": "squatting"},
                                                          {"predicate": "hand_above_head", "side": "both"}]}]})
    arms_up = _joints([_spec("stand", "up", "up")])[0]
    summary = F.summarize(prompts, F.check_results(np.stack([arms_up, arms_up]), prompts))
    assert summary["satisfied"] == 1 and summary["prompts_satisfied"] == 0.5
    assert summary["checks_hold"] == pytest.approx(2 / 3)
    assert summary["per_predicate"] == {"hand_above_head": 1.0, "squatting": 0.0}
    assert [p["satisfied"] for p in summary["per_prompt"]] == [True, False]
    with pytest.raises(InvalidInputError, match="one pose per prompt"):
        F.check_results(arms_up[None], prompts)


def test_best_constant_pose_is_the_candidate_satisfying_most_prompts() -> None:
    prompts = F.load_prompts()
    candidates = {"stand": _joints([_spec("stand", "down", "down")])[0],
                  "arms up": _joints([_spec("stand", "up", "up")])[0],
                  "lying": _joints([_spec("back", "down", "down")])[0]}
    best = F.best_constant_pose(candidates, prompts)
    wins = F.constant_pose_scores(np.stack(list(candidates.values())), prompts).sum(axis=1)
    assert best["name"] == list(candidates)[int(np.argmax(wins))] and best["satisfied"] == wins.max()
    assert best["prompts_satisfied"] == pytest.approx(wins.max() / len(prompts)) and 0 < best["checks_hold"] < 1
    with pytest.raises(InvalidInputError, match="no candidate"):
        F.best_constant_pose({}, prompts)


def test_candidates_are_the_examples_the_mean_pose_and_the_pool() -> None:
    pool = np.stack([_axis_angle(BASES["kneel"]), _axis_angle(BASES["back"])])
    candidates = F.candidate_poses(np.zeros(66, dtype=np.float32), pool)
    assert "example pose 'squatting'" in candidates and "mean pose" in candidates
    assert "evaluation pool pose 1" in candidates and len(candidates) == 6 + 1 + 2
    assert all(j.shape == (22, 3) for j in candidates.values())


def test_freeform_score_on_the_embedded_model(generator) -> None:  # type: ignore[no-untyped-def]
    prompts = F.load_prompts()[:6]
    result = F.freeform_score(generator, prompts)
    assert result["prompts"] == 6 and len(result["per_prompt"]) == 6
    assert result["satisfied"] == sum(p["satisfied"] for p in result["per_prompt"])
    assert result["prompts_satisfied"] == result["satisfied"] / 6 and 0.0 <= result["checks_hold"] <= 1.0
    assert all(set(p["checks"]) == {str(c) for c in q.checks} for p, q in zip(result["per_prompt"], prompts))
    # a session works too, and gives the same (deterministic) answers
    assert F.freeform_score(generator.session, prompts)["per_prompt"] == result["per_prompt"]
    with pytest.raises(InvalidInputError, match="a Generator or a UniPose session"):
        F.freeform_score("unipose-tiny", prompts)


def test_the_markdown_report_names_the_best_constant_pose() -> None:
    metric = {"model": 0.2, "baseline": 0.15, "baseline_name": "best constant pose", "higher_is_better": True,
              "beats_baseline": True}
    report = {"model": "m", "model_is_random": False, "quick": True, "seed": 0, "eval_seed": 10007,
              "sizes": {"poses": 2, "pairs": 1, "pose_images": 1, "pair_images": 1},
              "baselines": {"most_frequent_caption": "x.", "most_frequent_instruction": "y.",
                            "best_constant_pose": {"name": "mean pose", "satisfied": 30, "prompts": 216,
                                                   "candidates": 31}},
              "metrics": {"free_form": {"prompts_satisfied": metric}}, "beats_all_baselines": True,
              "seconds": {"total": 1.0}}
    text = to_markdown(report)
    assert "| free_form | prompts_satisfied (higher is better) | 0.200 | 0.150 | best constant pose | yes |" in text
    assert "Best constant pose baseline (free-form prompts): mean pose, 30 of 216 prompts" in text
