"""Facts measured on hand-built poses, and the caption -> parse round trip."""

import numpy as np

from unipose_sdk.data.archetypes import ARCHETYPES
from unipose_sdk.data.captions import PATTERNS, SPECS, compose_caption, fact_scores, parse_facts
from unipose_sdk.data.facts import FACT_KINDS, Fact, extract_facts, facts_for_poses
from unipose_sdk.data.phrasing import VOICES, render_clause
from unipose_sdk.data.poses import euler_deg_to_axis_angle, joints_from_axis_angle, sample_poses


def _keys(name: str) -> set[tuple[str, str, str]]:
    return {f.key for f in facts_for_poses(euler_deg_to_axis_angle(ARCHETYPES[name][None]))[0]}


def test_at_least_25_kinds_each_with_a_phrasing():
    assert len(FACT_KINDS) >= 25
    assert set(SPECS) == set(FACT_KINDS)


def test_t_pose_arms_sideways_straight_elbows_at_shoulder_height():
    keys = _keys("t_pose")
    for side in ("left", "right"):
        assert ("arm_direction", side, "out") in keys
        assert ("elbow_bend", side, "straight") in keys
        assert ("knee_bend", side, "straight") in keys
        assert ("hand_height", side, "shoulder") in keys
    assert ("hands_distance", "hands", "wide") in keys
    assert ("arm_symmetry", "arms", "symmetric") in keys
    assert ("torso_pitch", "torso", "upright") in keys


def test_whole_body_facts_of_archetypes():
    assert ("squat", "body", "squatting") in _keys("squatting")
    assert ("sit", "body", "sitting") in _keys("sitting")
    assert ("sit", "body", "sitting") in _keys("sitting_cross_legged")
    assert {("kneel", "left", "kneeling"), ("kneel", "right", "kneeling")} <= _keys("kneeling")
    assert ("posture", "body", "lying_back") in _keys("lying_on_back")
    assert ("posture", "body", "lying_front") in _keys("lying_on_front")
    assert ("lunge", "left", "lunging") in _keys("lunging")
    assert {("hand_height", "left", "above_head"), ("arm_direction", "right", "up")} <= _keys("reaching_up")
    assert {("hand_touch", "left_hand:left_hip", "touching"),
            ("hand_touch", "right_hand:right_hip", "touching")} <= _keys("hands_on_hips")
    assert ("arms_crossed", "arms", "crossed") in _keys("arms_crossed")
    assert ("leg_raised", "left", "raised") in _keys("tree_pose")
    assert ("torso_pitch", "torso", "forward") in _keys("bending_forward")
    assert ("head_turn", "head", "left") in _keys("warrior_two")
    assert not any(k[0] in ("squat", "sit", "kneel", "posture") for k in _keys("standing"))


def test_knee_bend_levels_follow_the_angle():
    levels = []
    for flex_deg in (0.0, 40.0, 90.0, 140.0):
        euler = ARCHETYPES["standing"].copy()
        euler[4, 0] = flex_deg  # left knee
        joints = joints_from_axis_angle(euler_deg_to_axis_angle(euler[None]))[0]
        (fact,) = [f for f in extract_facts(joints) if f.kind == "knee_bend" and f.subject == "left"]
        assert abs(fact.value - flex_deg) < 12.0  # the rest skeleton's shank is not exactly in line
        levels.append(fact.level)
    assert levels == ["straight", "slightly_bent", "bent", "deeply_bent"]


def test_every_phrase_of_every_template_parses_back():
    rng = np.random.default_rng(0)
    for kind, spec in SPECS.items():
        levels = list(spec.levels) or [""]
        for level in levels:
            for voice in VOICES:
                for _ in range(4):
                    if spec.nouns:
                        side = ["left", "right", "both"][rng.integers(3 if spec.mergeable else 2)]
                        subjects = ["left", "right"] if side == "both" else [side]
                    else:
                        side, subjects = "", [spec.subject]
                    target = ""
                    if kind == "hand_touch":
                        target = "head" if side == "both" else "right_knee"
                        subjects = [f"{s}_hand:{target}" for s in subjects]
                    clause = render_clause(spec, level, rng, voice, side, target)
                    got = {f.key for f in parse_facts(clause)}
                    assert got == {(kind, s, level) for s in subjects}, (clause, got)


def test_caption_parse_round_trip_on_sampled_poses():
    aa, _ = sample_poses(300, seed=11, global_orient="random")
    rng = np.random.default_rng(3)
    for facts in facts_for_poses(aa):
        text, stated = compose_caption(facts, rng)
        assert text and text[0].isupper() and text.endswith(".")
        assert sorted(f.key for f in parse_facts(text)) == sorted(f.key for f in stated)
        assert {f.key for f in stated} <= {f.key for f in facts}


def test_captions_vary_and_are_deterministic():
    facts = facts_for_poses(euler_deg_to_axis_angle(ARCHETYPES["running"][None]))[0]
    texts = {compose_caption(facts, np.random.default_rng(s))[0] for s in range(20)}
    assert len(texts) > 15
    assert compose_caption(facts, np.random.default_rng(5)) == compose_caption(facts, np.random.default_rng(5))


def test_fact_scores_and_unknown_text():
    truth = [Fact("knee_bend", "left", 90.0, "bent"), Fact("sit", "body", 0.5, "sitting")]
    scores = fact_scores("You are sitting. Your left knee is straight. The weather is nice.", truth)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert parse_facts("nothing to see here") == []
    assert len(PATTERNS) == len(SPECS)


def test_a_deep_forward_fold_is_bent_over_and_not_rolled():
    """The pelvis tipped 70-85 degrees forwards (its own forward axis then points at the floor): the torso is
    bent over, never "back", and not rolled to a side it does not lean to."""
    from unipose_sdk.data.archetypes import _make, mirror_euler_deg

    for tip_deg in (70.0, 80.0, 85.0):
        fold = _make(root=(tip_deg, 0, 0), hips=(-tip_deg - 45, 0, 3), knees=(90, 0, 0), ankles=(-30, 0, 0),
                     spine1=(30, 0, 0), spine2=(15, 0, 0), neck=(-25, 0, 0), shoulders=(0, -100, -30))
        for euler in (fold, mirror_euler_deg(fold)):
            keys = {f.key for f in facts_for_poses(euler_deg_to_axis_angle(euler[None]))[0]}
            assert ("torso_pitch", "torso", "bent_over") in keys, (tip_deg, sorted(keys))
            assert not any(k[0] == "torso_roll" for k in keys), (tip_deg, sorted(keys))
    # A sideways bend still reads as one, to the side it bends to (spine +z leans to the body's right).
    assert ("torso_roll", "torso", "right") in _keys("side_bend")
    assert ("torso_roll", "torso", "left") in {
        f.key for f in facts_for_poses(euler_deg_to_axis_angle(mirror_euler_deg(ARCHETYPES["side_bend"])[None]))[0]}


def test_a_sentence_in_a_frame_is_lower_cased_only_mid_sentence():
    from unipose_sdk.data.phrasing import in_frame

    assert in_frame("Now {}", "Raise your left arm.") == "Now raise your left arm."
    assert in_frame("Change it: {}", "Bend your knees.") == "Change it: bend your knees."
    assert in_frame("Okay. {}", "Raise your left arm") == "Okay. Raise your left arm"
    assert in_frame("{} too.", "Raise your left arm") == "Raise your left arm too."
