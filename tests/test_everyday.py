"""Everyday captions (data.everyday): each phrasing is true of the pose it is written for.

Text-to-pose training pairs a pose with these captions, so a phrase that contradicts the pose ("standing up
straight" for someone sitting on the floor) teaches the model the wrong geometry. The poses here are the named
archetypes, drawn with the data engine's own noise."""

import numpy as np
import pytest

from unipose_sdk.body.skeleton import JOINT_INDEX as J
from unipose_sdk.data.everyday import RULES, derived_keys, everyday_caption, joint_keys, matching_rules
from unipose_sdk.data.facts import extract_facts, facts_for_poses
from unipose_sdk.data.poses import joints_and_rotations, sample_poses

STANDING_RULES = {"standing_straight", "left_leg_up", "right_leg_up", "feet_wide", "feet_together", "knees_bent",
                  "walk", "run", "left_step", "right_step", "jump"}


def _facts(archetype: str, n: int = 12, seed: int = 0):
    axis_angle, _ = sample_poses(n, np.random.default_rng(seed), mix={"archetype": 1, "blend": 0, "free": 0},
                                 archetypes=(archetype,))
    return facts_for_poses(axis_angle)


def _names(facts, joints_m=None) -> set[str]:
    return {rule.name for rule in matching_rules(facts, joints_m)}


def _posed(archetype: str, n: int = 24, seed: int = 0):
    """(facts, joints_m) of n noisy draws of one archetype: what the training batches caption."""
    axis_angle, _ = sample_poses(n, np.random.default_rng(seed), mix={"archetype": 1}, archetypes=(archetype,))
    joints, rotations = joints_and_rotations(axis_angle)
    return [(extract_facts(j, r), j) for j, r in zip(joints, rotations)]


def test_sitting_on_the_floor_is_never_called_standing():
    poses = _facts("sitting_on_floor")
    for facts in poses:
        names = _names(facts)
        assert not names & STANDING_RULES, names
    assert sum("sit_floor" in _names(f) for f in poses) >= len(poses) * 3 // 4


def test_a_handstand_is_upside_down_not_hands_up():
    poses = _facts("handstand")
    for facts in poses:
        names = _names(facts)
        assert not names & {"hands_up", "left_hand_up", "right_hand_up", "look_up", "jump"}, names
    assert all("upside_down" in _names(f) for f in poses if ("posture", "body", "upside_down") in derived_keys(f))
    assert any("upside_down" in _names(f) for f in poses)


def test_a_step_names_the_leading_foot():
    stepped = 0
    for archetype in ("walking", "running"):
        for facts in _facts(archetype, seed=3):
            leading = {f.subject for f in facts if f.kind == "stride"}
            steps = {n.removesuffix("_step") for n in _names(facts) if n.endswith("_step")}
            assert steps <= leading, (steps, leading)
            stepped += bool(steps)
    assert stepped >= 6


def test_chair_phrases_only_for_chair_high_seats():
    for archetype in ("squatting", "sitting_cross_legged", "sitting_on_floor"):
        for facts in _facts(archetype, seed=5):
            sits = [f.value for f in facts if f.kind == "sit"]
            if "sit_chair" in _names(facts):
                assert sits and sits[0] >= 0.56, (archetype, sits)


@pytest.mark.parametrize("archetype", ["standing", "sitting", "walking", "handstand", "sitting_on_floor",
                                       "lying_on_back", "squatting", "t_pose", "lunging"])
def test_captions_are_filled_in_sentences(archetype):
    rng = np.random.default_rng(7)
    for facts in _facts(archetype, n=8, seed=11):
        for _ in range(5):
            text = everyday_caption(facts, rng)
            if text is None:
                continue
            assert text.strip() and "{" not in text and "  " not in text, text
            assert not any(f" {noun} arms " in text for noun in ("man", "woman", "person", "someone")), text


def test_every_rule_has_a_distinct_name_and_phrases():
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert all(rule.doing for rule in RULES)


HAND_FLOOR_RULES = {"hands_floor", "left_hand_floor", "right_hand_floor", "pick_up"}


def test_hands_on_the_floor_only_when_a_wrist_is_down_there():
    seen = 0
    for archetype in ("reaching_down", "squat_hands_on_floor", "standing", "bending_forward", "hands_on_knees",
                      "lying_on_back", "handstand", "t_pose"):
        for facts, joints in _posed(archetype, seed=2):
            names = _names(facts, joints)
            wrist_m = {s: joints[J[f"{s}_wrist"], 1] - joints[:, 1].min() for s in ("left", "right")}
            if names & {"hands_floor", "pick_up"}:
                assert max(wrist_m.values()) <= 0.2, (archetype, wrist_m)
            for side in ("left", "right"):
                if f"{side}_hand_floor" in names:
                    assert wrist_m[side] <= 0.2 < wrist_m["right" if side == "left" else "left"], (archetype, wrist_m)
            if archetype in ("lying_on_back", "handstand", "standing", "t_pose"):
                assert not names & HAND_FLOOR_RULES, (archetype, names)  # lying and handstands: hands down anyway
            seen += bool(names & HAND_FLOOR_RULES)
    assert seen >= 20


def test_touching_toes_needs_a_hand_at_a_foot():
    for archetype in ("bending_forward", "hands_on_knees", "reaching_down", "airplane_balance"):
        for facts, joints in _posed(archetype, seed=4):
            if "touch_toes" in _names(facts, joints):
                assert any(f.kind == "hand_touch" and f.subject.endswith("foot") for f in facts)
            text = everyday_caption(facts, np.random.default_rng(0), joints_m=joints) or ""
            if "bent_over" in _names(facts, joints) and "toes" in text:
                assert "touch_toes" in _names(facts, joints), text


def test_a_leg_out_to_the_side_is_named_by_its_side():
    for facts, joints in _posed("side_leg_raise", seed=1):
        out = {s for s in ("left", "right") if ("leg_out", s, "sideways") in joint_keys(joints)}
        named = {n.removesuffix("_leg_out") for n in _names(facts, joints) if n.endswith("_leg_out")}
        assert named <= out
        for side in named:  # the thigh points outwards, and that foot is the raised one
            other = "right" if side == "left" else "left"
            assert joints[J[f"{side}_ankle"], 1] > joints[J[f"{other}_ankle"], 1]
    named_any = sum(bool({"left_leg_out", "right_leg_out"} & _names(f, j)) for f, j in _posed("side_leg_raise"))
    assert named_any >= 18
    for archetype in ("standing", "walking", "sitting", "squatting", "kneeling"):
        for facts, joints in _posed(archetype, n=12, seed=6):
            assert not {"left_leg_out", "right_leg_out"} & _names(facts, joints), archetype


def test_a_standing_bend_at_the_hips_is_not_sitting_on_the_floor():
    # The legs-out floor seat is derived from raised thighs alone; with the joints, a high pelvis rules it out.
    bends = _posed("bending_forward", seed=8)
    assert sum("sit_floor" in _names(f, j) for f, j in bends) <= len(bends) // 10
    floor = _posed("sitting_on_floor", seed=8)
    assert sum("sit_floor" in _names(f, j) for f, j in floor) >= len(floor) * 3 // 4


# Activity names and the posture each is drawn around: most draws of that posture are called by the name, and
# postures that look nothing like it never are.
ACTIVITIES = {"warrior": "warrior_two", "airplane": "airplane_balance", "jumping_jack": "jumping_star",
              "wave": "waving", "tree": "tree_pose"}
UNLIKE = ("standing", "sitting", "squatting", "lying_on_back", "kneeling", "t_pose", "arms_crossed", "hands_on_head",
          "reaching_up", "handstand")


@pytest.mark.parametrize("activity", sorted(ACTIVITIES))
def test_activity_names_fit_their_posture(activity):
    def called(names: set[str]) -> bool:
        return bool(names & {activity, f"left_{activity}", f"right_{activity}"})

    drawn = _posed(ACTIVITIES[activity], seed=9)
    assert sum(called(_names(f, j)) for f, j in drawn) >= len(drawn) * 3 // 4
    for archetype in UNLIKE:
        assert not any(called(_names(f, j)) for f, j in _posed(archetype, n=12, seed=10)), archetype


def test_a_wave_or_tree_pose_names_the_side_that_does_it():
    for facts, joints in _posed("waving", seed=12) + _posed("tree_pose", seed=12):
        names = _names(facts, joints)
        for side in ("left", "right"):
            if f"{side}_wave" in names:
                assert joints[J[f"{side}_wrist"], 1] > joints[J[f"{side}_shoulder"], 1]
            if f"{side}_tree" in names:
                other = "right" if side == "left" else "left"
                assert joints[J[f"{side}_ankle"], 1] > joints[J[f"{other}_ankle"], 1] + 0.15


def _states(text: str, rule) -> bool:
    """Whether `text` contains one of the rule's phrasings, with any possessive."""
    import re

    for phrase in (*rule.doing, *rule.commands):
        pattern = re.escape(phrase.lower()).replace(re.escape("{P}".lower()), "(?:their|his|her|your)")
        if re.search(pattern, text.lower()):
            return True
    return False


@pytest.mark.parametrize("archetype", ["kneeling", "handstand", "hands_on_hips", "waving", "lying_on_side"])
def test_an_included_rule_is_always_stated(archetype):
    by_name = {rule.name: rule for rule in RULES}
    rng = np.random.default_rng(5)
    for facts, joints in _posed(archetype, n=8, seed=13):
        for rule in matching_rules(facts, joints):
            for _ in range(3):
                text = everyday_caption(facts, rng, joints_m=joints, include=rule.name)
                assert _states(text, by_name[rule.name]), (rule.name, text)


def test_an_included_rule_the_pose_does_not_show_is_refused():
    facts, joints = _posed("standing", n=1, seed=14)[0]
    with pytest.raises(ValueError, match="'upside_down' does not hold"):
        everyday_caption(facts, np.random.default_rng(0), joints_m=joints, include="upside_down")

