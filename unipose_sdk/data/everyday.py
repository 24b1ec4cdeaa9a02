"""Everyday phrasings of a pose: what people type, not what the captioner's templates say.

`everyday_caption(facts, rng)` names one to three things about a pose the way a user asks for it: activity names
tied to geometry ("doing a squat", "in a T-pose", "down on one knee"), casual wording ("hands in the air"), and
several sentence shapes (a person / someone / a man ... doing it, an imperative "raise your left hand", a bare
noun phrase). Every rule fires only when the facts measured on the pose's joints (`data.facts`) show it, so the
text stays true to the pose; the captioner's `caption` keeps the exhaustive, template-like descriptions.

Left and right are the person's own, as everywhere in the data engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unipose_sdk.body.skeleton import JOINT_INDEX as J
from unipose_sdk.data.facts import Fact, pelvis_frame, unit_vector

SIDES = ("left", "right")
OTHER = {"left": "right", "right": "left"}

FactSet = set[tuple[str, str, str]]


@dataclass(frozen=True)
class Rule:
    """One thing a pose shows. `doing`: participle phrases ("raising {P} left hand"); `commands`: imperatives.
    {P} is the possessive of the subject ("their", "his", "her"; "your" in commands)."""

    name: str
    holds: Callable[[FactSet], bool]
    doing: tuple[str, ...]
    commands: tuple[str, ...] = ()
    body: bool = False  # a whole-body activity (stated first, at most one per text)
    weight: float = 1.0  # how often it is picked when it holds (common, dull facts less often)


def _has(facts: FactSet, kind: str, subject: str, *levels: str) -> bool:
    return any((kind, subject, level) in facts for level in levels)


def _has_kind(facts: FactSet, *kinds: str) -> bool:
    """Whether any fact of these kinds holds, whatever its subject and level."""
    return any(kind in kinds for kind, _, _ in facts)


def _hand_up(f: FactSet, side: str) -> bool:
    """Raised above the head, the way a user means it: never upside down (the arms then point at the floor)."""
    return (_has(f, "hand_height", side, "above_head") or _has(f, "arm_direction", side, "up")) and not _has(
        f, "posture", "body", "upside_down")


def _upright(f: FactSet) -> bool:
    """Standing (or jumping): not lying, upside down, sitting, squatting or kneeling."""
    return not _has_kind(f, "posture", "sit", "squat", "kneel", "seat")


def _striding(f: FactSet) -> bool:
    return _has_kind(f, "stride") and _upright(f) and not _has_kind(f, "lunge")


# Pelvis heights (m, above the lowest joint) of a seated pose: below the first it sits on the floor; from the second
# up, on something chair-high (sitting archetype 0.55-0.68 m; squats and cross-legged sitting 0.38-0.54 m).
FLOOR_SEAT_MAX_PELVIS_M = 0.3
CHAIR_SEAT_MIN_PELVIS_M = 0.56
# A seat with no `sit` fact (thighs raised, nothing else): the sitting-on-the-floor archetype's pelvis stays under
# this in 95 % of its draws, the standing bend at the hips (`bending_forward`) over it in 95 %.
LEGS_OUT_SEAT_MAX_PELVIS_M = 0.45


# Joint-measured keys for what people ask for but the captioner never states (so they are not facts, and the
# in-distribution metrics are unchanged): a thigh this far out of the pelvis' sagittal plane is a leg out to the
# side (a wide stance reaches ~15 deg); a wrist this low (m above the lowest joint) is a hand on the floor.
LEG_OUT_MIN_DEG = 30.0
HAND_ON_FLOOR_MAX_M = 0.2


def joint_keys(joints_m: np.ndarray) -> FactSet:
    """("leg_out", side, "sideways") and ("hand_floor", side, "touching") measured on grounded [22, 3] joints."""
    p = np.asarray(joints_m, dtype=np.float64)
    root = pelvis_frame(p)
    floor_m = p[:, 1].min()
    keys: FactSet = set()
    for s in SIDES:
        thigh = root @ unit_vector(p[J[f"{s}_knee"]] - p[J[f"{s}_hip"]])  # (left, up, forward)
        outward = thigh[0] if s == "left" else -thigh[0]
        if outward >= np.sin(np.radians(LEG_OUT_MIN_DEG)):
            keys.add(("leg_out", s, "sideways"))
        if p[J[f"{s}_wrist"], 1] - floor_m <= HAND_ON_FLOOR_MAX_M:
            keys.add(("hand_floor", s, "touching"))
    return keys


def _pelvis_height_m(joints_m: np.ndarray) -> float:
    return float(joints_m[J["pelvis"], 1] - np.min(joints_m[:, 1]))


def derived_keys(facts: list[Fact], joints_m: np.ndarray | None = None) -> FactSet:
    """Keys the rules need that are not facts of their own: ("seat", "body", "floor" | "low" | "chair") for a
    seated pose, and with the pose's joints, `joint_keys`. A `sit` fact says how high the pelvis is (a `sit` fact in
    mid-air is a tuck jump, not a seat); a pose with both thighs level or raised, feet down and no posture, squat,
    kneel or sit fact is sitting on the floor with the legs out (no one stands like that), when the pelvis is
    that low (a known pelvis higher up is a standing bend at the hips)."""
    keys = {f.key for f in facts} | (joint_keys(joints_m) if joints_m is not None else set())
    sits = [f for f in facts if f.kind == "sit"]
    airborne = _has(keys, "feet_ground", "feet", "neither")
    if sits and not airborne:
        height_m = sits[0].value
        keys.add(("seat", "body", "floor" if height_m < FLOOR_SEAT_MAX_PELVIS_M else
                  "chair" if height_m >= CHAIR_SEAT_MIN_PELVIS_M else "low"))
    elif sits:
        keys.discard(sits[0].key)
    elif (all(_has(keys, "thigh", s, "raised", "right_angle") for s in SIDES)
          and not airborne and not _has_kind(keys, "posture", "squat", "kneel")
          and (joints_m is None or _pelvis_height_m(joints_m) < LEGS_OUT_SEAT_MAX_PELVIS_M)):
        keys.add(("seat", "body", "floor"))
    return keys


def _hand_on_floor(f: FactSet, side: str) -> bool:
    """A hand put down on the floor: not lying or upside down, where the hands are on the floor anyway."""
    return _has(f, "hand_floor", side, "touching") and not _has_kind(f, "posture")


def _side_rules(side: str) -> list[Rule]:
    other = OTHER[side]
    return [
        Rule(f"{side}_hand_up", lambda f: _hand_up(f, side) and not _hand_up(f, other),
             (f"raising {{P}} {side} hand", f"with {{P}} {side} hand up in the air",
              f"reaching up with {{P}} {side} arm",
              f"holding {{P}} {side} arm up high", f"pointing at the ceiling with {{P}} {side} hand",
              f"lifting {{P}} {side} arm above {{P}} head", f"with {{P}} {side} arm stretched overhead"),
             (f"raise your {side} hand", f"put your {side} hand up", f"lift your {side} arm above your head",
              f"reach up with your {side} arm", f"point at the sky with your {side} hand")),
        Rule(f"{side}_arm_side", lambda f: _has(f, "arm_direction", side, "out") and not _has(
            f, "arm_direction", other, "out"),
             (f"holding {{P}} {side} arm out to the side", f"pointing to {{P}} {side}",
              f"with {{P}} {side} arm extended sideways", f"stretching {{P}} {side} arm out sideways"),
             (f"stretch your {side} arm out to the side", f"point to your {side} with your arm straight")),
        Rule(f"{side}_arm_forward", lambda f: _has(f, "arm_direction", side, "forward") and not _has(
            f, "arm_direction", other, "forward"),
             (f"reaching forward with {{P}} {side} arm", f"pointing straight ahead with {{P}} {side} arm",
              f"holding {{P}} {side} arm out in front", f"offering a handshake with {{P}} {side} hand"),
             (f"reach forward with your {side} arm", f"point ahead with your {side} arm")),
        Rule(f"{side}_leg_up", lambda f: _has(f, "leg_raised", side, "raised", "raised_high") and not _has(
            f, "leg_raised", other, "raised", "raised_high") and _upright(f),
             (f"standing on {{P}} {other} leg", f"lifting {{P}} {side} leg", f"balancing on {{P}} {other} foot",
              f"with {{P}} {side} foot off the ground", f"raising {{P}} {side} knee"),
             (f"stand on your {other} leg", f"lift your {side} foot off the floor", f"balance on your {other} foot")),
        Rule(f"{side}_leg_out", lambda f: _has(f, "leg_out", side, "sideways")
             and _has(f, "leg_raised", side, "raised", "raised_high") and _upright(f),
             (f"lifting {{P}} {side} leg out to the side", f"kicking {{P}} {side} leg out sideways",
              f"with {{P}} {side} leg raised to the side", f"doing a side kick with {{P}} {side} leg"),
             (f"lift your {side} leg out to the side", f"kick your {side} leg out sideways",
              f"raise your {side} leg sideways")),
        Rule(f"{side}_hand_floor", lambda f: _hand_on_floor(f, side) and not _hand_on_floor(f, other),
             (f"touching the floor with {{P}} {side} hand", f"reaching down to the ground with {{P}} {side} hand",
              f"with {{P}} {side} hand on the floor"),
             (f"touch the floor with your {side} hand", f"put your {side} hand on the ground")),
        Rule(f"{side}_wave", lambda f: _has(f, "hand_height", side, "head", "above_head")
             and _has(f, "elbow_bend", side, "bent", "deeply_bent") and _upright(f)
             and not _has(f, "hand_height", other, "head", "above_head") and (("hand_touch", f"{side}_hand:head",
                                                                                "touching") not in f),
             (f"waving with {{P}} {side} hand", f"waving hello with {{P}} {side} hand", "waving goodbye",
              f"waving {{P}} {side} hand in the air"),
             (f"wave with your {side} hand", f"wave hello with your {side} hand")),
        Rule(f"{side}_tree", lambda f: _has(f, "leg_raised", side, "raised", "raised_high")
             and _has(f, "leg_out", side, "sideways") and _has(f, "knee_bend", side, "deeply_bent")
             and _has(f, "knee_bend", other, "straight", "slightly_bent") and _upright(f)
             and not _has(f, "feet_distance", "feet", "wide"),
             ("doing the tree pose", "in a yoga tree pose", f"balancing in tree pose on {{P}} {other} leg"),
             ("do the tree pose", f"stand in tree pose on your {other} leg"), body=True),
        Rule(f"{side}_hand_head", lambda f: any(k == "hand_touch" and s == f"{side}_hand:head" for k, s, _ in f),
             (f"touching {{P}} head with {{P}} {side} hand", f"scratching {{P}} head with {{P}} {side} hand",
              f"with {{P}} {side} hand on {{P}} head"),
             (f"put your {side} hand on your head", f"touch your head with your {side} hand")),
        Rule(f"{side}_hand_foot", lambda f: any(k == "hand_touch" and s.startswith(f"{side}_hand:")
                                                and s.endswith("foot") for k, s, _ in f),
             (f"touching {{P}} foot with {{P}} {side} hand", f"reaching down to {{P}} foot with {{P}} {side} hand",
              "tying a shoelace"),
             (f"touch your foot with your {side} hand",)),
        Rule(f"{side}_kneel", lambda f: _has(f, "kneel", side, "kneeling") and not _has(f, "kneel", other, "kneeling"),
             (f"down on {{P}} {side} knee", "kneeling on one knee", f"resting on {{P}} {side} knee",
              "proposing on one knee"),
             (f"go down on your {side} knee", "kneel on one knee"), body=True),
        Rule(f"{side}_lunge", lambda f: _has(f, "lunge", side, "lunging"),
             (f"lunging forward with {{P}} {side} leg", "doing a lunge", f"stepping far forward on {{P}} {side} foot"),
             (f"lunge forward with your {side} leg", "do a lunge"), body=True),
        Rule(f"{side}_step", lambda f: _has(f, "stride", side, "forward") and _striding(f),
             (f"stepping forward with {{P}} {side} foot", f"with {{P}} {side} foot in front",
              f"taking a step with {{P}} {side} leg", f"with {{P}} {side} leg forward and the other behind",
              f"mid-step, {side} foot ahead"),
             (f"step forward with your {side} foot", f"put your {side} foot forward",
              f"take a step with your {side} leg")),
        # A sideways lean is not measurable on a spine bent over towards the floor.
        Rule(f"{side}_lean", lambda f: _has(f, "torso_roll", "torso", side)
             and not _has(f, "torso_pitch", "torso", "bent_over"),
             (f"leaning to {{P}} {side}", f"bending sideways to the {side}", f"tilting {{P}} upper body {side}"),
             (f"lean to your {side}", f"bend sideways to the {side}")),
        Rule(f"{side}_look", lambda f: _has(f, "head_turn", "head", side),
             (f"looking to {{P}} {side}", f"turning {{P}} head {side}", f"glancing over {{P}} {side} shoulder"),
             (f"look to your {side}", f"turn your head to the {side}")),
    ]


RULES: list[Rule] = [
    Rule("lying_back", lambda f: _has(f, "posture", "body", "lying_back"),
         ("lying on {P} back", "lying down face up", "sleeping on {P} back", "resting flat on the floor",
          "lying on the ground looking at the sky"), ("lie down on your back", "lie flat facing up"), body=True),
    Rule("lying_front", lambda f: _has(f, "posture", "body", "lying_front"),
         ("lying face down", "lying on {P} stomach", "lying on the floor face first"),
         ("lie face down", "lie on your stomach"), body=True),
    Rule("lying_side", lambda f: _has(f, "posture", "body", "lying_side"),
         ("lying on {P} side", "resting on one side on the ground", "sleeping on {P} side"),
         ("lie on your side",), body=True),
    Rule("squat", lambda f: _has(f, "squat", "body", "squatting"),
         ("doing a squat", "squatting down", "crouching low", "in a deep crouch", "hunkering down"),
         ("squat down", "do a deep squat", "crouch down low"), body=True),
    Rule("sit", lambda f: _has(f, "seat", "body", "chair", "low"),
         ("sitting down", "seated", "taking a seat"), ("sit down", "take a seat"), body=True),
    Rule("sit_chair", lambda f: _has(f, "seat", "body", "chair"),
         ("sitting on a chair", "sitting on a bench", "seated on a chair"), ("sit on a chair",), body=True),
    Rule("sit_floor", lambda f: _has(f, "seat", "body", "floor"),
         ("sitting on the floor", "sitting on the ground", "seated on the floor", "sitting down on the ground"),
         ("sit down on the floor", "sit on the ground"), body=True),
    Rule("sit_floor_legs_out", lambda f: _has(f, "seat", "body", "floor")
         and all(_has(f, "knee_bend", s, "straight", "slightly_bent") for s in SIDES),
         ("sitting on the floor with {P} legs out straight", "sitting with {P} legs extended on the ground",
          "seated on the ground, legs straight ahead"), ("sit on the floor and straighten your legs",), body=True),
    Rule("upside_down", lambda f: _has(f, "posture", "body", "upside_down"),
         ("doing a handstand", "upside down", "balancing on {P} hands", "standing on {P} hands",
          "in a handstand"), ("do a handstand", "stand on your hands", "go upside down"), body=True),
    Rule("walk", lambda f: _striding(f) and _has(f, "feet_ground", "feet", "both"),
         ("walking", "walking forward", "in mid-stride", "taking a step", "out for a walk"),
         ("walk forward", "take a step forward"), body=True),
    Rule("run", lambda f: _striding(f) and any(_has(f, "knee_bend", s, "bent", "deeply_bent") for s in SIDES)
         and (_has(f, "feet_ground", "feet", "neither") or any(_has(f, "leg_raised", s, "raised", "raised_high")
                                                                 for s in SIDES)),
         ("running", "jogging", "sprinting", "out for a run"), ("run", "start running"), body=True),
    Rule("kneel", lambda f: all(_has(f, "kneel", s, "kneeling") for s in SIDES),
         ("kneeling on both knees", "on {P} knees", "kneeling down"), ("kneel down", "get on your knees"), body=True),
    Rule("jump", lambda f: _has(f, "feet_ground", "feet", "neither")
         and not _has_kind(f, "posture"),
         ("jumping", "in mid-air", "leaping off the ground", "jumping up"), ("jump", "jump into the air"), body=True),
    Rule("bent_over", lambda f: _has(f, "torso_pitch", "torso", "bent_over"),
         ("bending over", "bowing deeply", "bent forward at the waist"), ("bend forward at the waist", "bow deeply"),
         body=True),
    Rule("pick_up", lambda f: _has(f, "torso_pitch", "torso", "bent_over", "forward")
         and all(_hand_on_floor(f, s) for s in SIDES),
         ("bending down to pick something up", "picking something up off the floor",
          "reaching down to the floor with both hands"),
         ("bend down and touch the floor", "pick something up off the floor"), body=True),
    Rule("touch_toes", lambda f: _has(f, "torso_pitch", "torso", "bent_over")
         and all(_has(f, "knee_bend", s, "straight", "slightly_bent") for s in SIDES)
         and any(k == "hand_touch" and s.endswith("foot") for k, s, _ in f),
         ("touching {P} toes", "bending forward to touch {P} toes", "doing a forward fold"),
         ("touch your toes", "bend forward and touch your toes"), body=True),
    Rule("lean_forward", lambda f: _has(f, "torso_pitch", "torso", "forward", "slightly_forward"),
         ("leaning forward", "bowing slightly", "tipping {P} upper body forward"), ("lean forward", "bow a little")),
    Rule("lean_back", lambda f: _has(f, "torso_pitch", "torso", "back"),
         ("leaning back", "arching {P} back", "leaning backwards"), ("lean back", "arch your back")),
    Rule("warrior", lambda f: _has(f, "feet_distance", "feet", "wide") and _upright(f)
         and all(_has(f, "arm_direction", s, "out") for s in SIDES)
         and sum(_has(f, "knee_bend", s, "bent", "deeply_bent") for s in SIDES) == 1
         and sum(_has(f, "knee_bend", s, "straight", "slightly_bent") for s in SIDES) == 1,
         ("in warrior two", "doing a warrior pose", "in a yoga warrior stance"),
         ("do warrior two", "get into a warrior pose"), body=True),
    Rule("airplane", lambda f: _has(f, "torso_pitch", "torso", "bent_over")
         and _has(f, "feet_ground", "feet", "left_only", "right_only")
         and all(_has(f, "knee_bend", s, "straight", "slightly_bent") for s in SIDES),
         ("doing an airplane balance", "balancing on one leg with {P} body tipped forward",
          "tipping forward on one leg like an airplane"), ("balance on one leg and tip forward like an airplane",),
         body=True),
    Rule("jumping_jack", lambda f: _has(f, "feet_distance", "feet", "wide") and _upright(f)
         and all(_hand_up(f, s) for s in SIDES),
         ("doing a jumping jack", "doing star jumps", "making a star shape with {P} body"),
         ("do a jumping jack", "make a star shape with your body"), body=True),
    Rule("meditate", lambda f: _has(f, "legs_crossed", "legs", "crossed") and _has(f, "seat", "body", "floor", "low")
         and not any(_has(f, "hand_height", s, "shoulder", "head", "above_head") for s in SIDES),
         ("meditating", "sitting in a meditation pose", "meditating cross-legged"), ("sit and meditate cross-legged",),
         body=True),
    Rule("pray", lambda f: _has(f, "hands_distance", "hands", "together")
         and any(_has(f, "hand_height", s, "chest", "shoulder") for s in SIDES),
         ("praying", "with {P} hands pressed together in prayer", "praying with folded hands"),
         ("put your hands together in prayer",)),
    Rule("t_pose", lambda f: all(_has(f, "arm_direction", s, "out") for s in SIDES),
         ("doing a t-pose", "in a T-pose", "with both arms spread out like wings", "holding {P} arms out to the sides",
          "spreading {P} arms wide like an airplane"),
         ("do a T-pose", "spread your arms out to the sides", "hold both arms out sideways")),
    Rule("hands_up", lambda f: all(_hand_up(f, s) for s in SIDES),
         ("with both hands in the air", "raising both arms", "reaching for the sky", "cheering with both arms up",
          "stretching both arms overhead", "holding {P} hands up"),
         ("put your hands up", "raise both arms", "reach for the sky with both hands", "put both hands up")),
    Rule("arms_down", lambda f: all(_has(f, "arm_direction", s, "down") for s in SIDES),
         ("with {P} arms hanging at {P} sides", "keeping {P} arms down", "with {P} arms relaxed by {P} sides"),
         ("let your arms hang down", "keep your arms at your sides"), weight=0.5),
    Rule("arms_forward", lambda f: all(_has(f, "arm_direction", s, "forward") for s in SIDES),
         ("with both arms straight out in front", "reaching forward with both arms", "sleepwalking like a zombie"),
         ("stretch both arms forward", "hold both arms out in front of you")),
    Rule("arms_crossed", lambda f: _has(f, "arms_crossed", "arms", "crossed"),
         ("with {P} arms crossed", "with {P} arms folded", "crossing {P} arms over {P} chest"),
         ("cross your arms", "fold your arms")),
    Rule("hands_hips", lambda f: all(any(k == "hand_touch" and s.startswith(f"{side}_hand:") and s.endswith("hip")
                                         for k, s, _ in f) for side in SIDES),
         ("with {P} hands on {P} hips", "standing akimbo", "in a superhero stance with hands on hips"),
         ("put your hands on your hips",)),
    Rule("hands_floor", lambda f: all(_hand_on_floor(f, s) for s in SIDES),
         ("touching the floor with both hands", "with both hands on the ground", "putting {P} palms flat on the floor"),
         ("touch the floor with both hands", "put your hands flat on the ground")),
    Rule("hands_together", lambda f: _has(f, "hands_distance", "hands", "together"),
         ("with {P} hands together", "clasping {P} hands", "pressing {P} palms together", "clapping"),
         ("put your hands together", "clasp your hands")),
    Rule("hands_behind", lambda f: all(_has(f, "hand_behind_back", s, "behind") for s in SIDES),
         ("with {P} hands behind {P} back", "holding {P} hands behind {P} back"),
         ("put your hands behind your back",)),
    Rule("feet_wide", lambda f: _has(f, "feet_distance", "feet", "wide") and _upright(f),
         ("with {P} feet wide apart", "in a wide stance", "standing with legs spread"),
         ("spread your feet wide", "take a wide stance")),
    Rule("feet_together", lambda f: _has(f, "feet_distance", "feet", "together") and _upright(f)
         and not _has_kind(f, "stride"),
         ("with {P} feet together", "standing with feet side by side"), ("put your feet together",), weight=0.25),
    Rule("legs_crossed", lambda f: _has(f, "legs_crossed", "legs", "crossed"),
         ("with {P} legs crossed", "crossing {P} legs"), ("cross your legs",)),
    Rule("cross_legged", lambda f: _has(f, "legs_crossed", "legs", "crossed")
         and _has(f, "seat", "body", "floor", "low"),
         ("sitting cross-legged", "sitting cross-legged on the floor", "sitting with crossed legs on the ground"),
         ("sit cross-legged on the floor",), body=True),
    Rule("look_down", lambda f: _has(f, "head_pitch", "head", "down"),
         ("looking down", "with {P} head bowed", "looking at the floor"), ("look down", "bow your head")),
    Rule("look_up", lambda f: _has(f, "head_pitch", "head", "up") and not _has(f, "posture", "body", "upside_down"),
         ("looking up", "gazing at the sky", "tilting {P} head back"), ("look up", "look up at the ceiling")),
    Rule("knees_bent", lambda f: all(_has(f, "knee_bend", s, "bent", "deeply_bent") for s in SIDES)
         and _upright(f),
         ("with both knees bent", "bending {P} knees", "in a half crouch"), ("bend your knees",)),
    Rule("standing_straight", lambda f: _upright(f) and not _has_kind(f, "stride")
         and _has(f, "torso_pitch", "torso", "upright")
         and all(_has(f, "knee_bend", s, "straight") for s in SIDES)
         and all(_has(f, "arm_direction", s, "down") for s in SIDES),
         ("standing up straight", "standing at attention", "standing still", "in a neutral standing pose"),
         ("stand up straight", "stand at attention"), body=True),
] + [rule for side in SIDES for rule in _side_rules(side)]

SUBJECTS = (("a person", "their"), ("someone", "their"), ("a man", "his"), ("a woman", "her"),
            ("person", "their"), ("somebody", "their"), ("a guy", "his"), ("a girl", "her"), ("the figure", "their"),
            ("an athlete", "their"), ("a kid", "their"), ("a dancer", "their"))


def matching_rules(facts: list[Fact], joints_m: np.ndarray | None = None) -> list[Rule]:
    """The rules that hold for a pose; the rules on `joint_keys` need its grounded joints."""
    keys = derived_keys(facts, joints_m)
    return [rule for rule in RULES if rule.holds(keys)]


def everyday_caption(facts: list[Fact], rng: np.random.Generator, max_rules: int = 3,
                     joints_m: np.ndarray | None = None, include: str | None = None) -> str | None:
    """One everyday phrasing of one to `max_rules` things the pose shows; None when no rule fits.

    include: the name of a rule the text must state (it must hold for the pose, else ValueError): training draws
    poses by what they show (`training.batches.ConceptIndex`), so the text has to say it."""
    rules = matching_rules(facts, joints_m)
    if not rules:
        return None
    forced = [r for r in rules if r.name == include]
    if include is not None and not forced:
        raise ValueError(f"rule {include!r} does not hold for this pose; it shows {[r.name for r in rules]}")
    body = [r for r in rules if r.body]
    rest = [r for r in rules if not r.body and r not in forced]
    if forced and forced[0].body:
        chosen = forced
    else:
        chosen = [body[int(rng.integers(len(body)))]] if body and rng.random() < 0.9 else []
        chosen += forced
    count = int(rng.integers(1, max_rules + 1)) - len(chosen)
    if rest and count > 0:
        weights = np.array([r.weight for r in rest])
        picks = rng.choice(len(rest), size=min(count, len(rest)), replace=False, p=weights / weights.sum())
        chosen += [rest[int(i)] for i in picks]
    if not chosen:
        chosen = [rules[int(rng.integers(len(rules)))]]
    shape = rng.random()
    commandable = [r for r in chosen if r.commands]
    if shape < 0.3 and len(commandable) == len(chosen):
        parts = [r.commands[int(rng.integers(len(r.commands)))] for r in chosen]
        return _join(parts, rng, ("and", "while you", ", then")).capitalize()
    subject, possessive = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    parts = [r.doing[int(rng.integers(len(r.doing)))].replace("{P}", possessive) for r in chosen]
    text = _join(parts, rng, ("and", "while", ","))
    if shape < 0.45:
        return text  # a bare phrase: "doing a squat and raising their left hand"
    verb = " is " if rng.random() < 0.4 and not text.startswith(("with ", "in ", "on ", "down ")) else " "
    return f"{subject}{verb}{text}"


def _join(parts: list[str], rng: np.random.Generator, connectors: tuple[str, ...]) -> str:
    text = parts[0]
    for part in parts[1:]:
        # "while with ..." is not English: a "with" phrase is joined by a comma or "and".
        usable = [c for c in connectors if not part.startswith("with ") or c in (",", "and")] or [","]
        connector = usable[int(rng.integers(len(usable)))]
        text += f"{connector} {part}" if connector.startswith(",") else f" {connector} {part}"
    return text
