"""Everyday captions (data.everyday): each phrasing is true of the pose it is written for.

Text-to-pose training pairs a pose with these captions, so a phrase that contradicts the pose ("standing up
straight" for someone sitting on the floor) teaches the model the wrong geometry. The poses here are the named
archetypes, drawn with the data engine's own noise."""

import numpy as np
import pytest

from unipose_sdk.data.everyday import RULES, derived_keys, everyday_caption, matching_rules
from unipose_sdk.data.facts import facts_for_poses
from unipose_sdk.data.poses import sample_poses

STANDING_RULES = {"standing_straight", "left_leg_up", "right_leg_up", "feet_wide", "feet_together", "knees_bent",
                  "walk", "run", "left_step", "right_step", "jump"}


def _facts(archetype: str, n: int = 12, seed: int = 0):
    axis_angle, _ = sample_poses(n, np.random.default_rng(seed), mix={"archetype": 1, "blend": 0, "free": 0},
                                 archetypes=(archetype,))
    return facts_for_poses(axis_angle)


def _names(facts) -> set[str]:
    return {rule.name for rule in matching_rules(facts)}


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
