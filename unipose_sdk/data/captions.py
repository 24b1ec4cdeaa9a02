"""Captioner: facts about one pose -> varied natural sentences, and sentences -> the facts they state.

`caption(facts, rng)` picks the whole-body facts (lying, squatting, kneeling ...) and a random subset of the rest,
says left and right once when they agree ("both your knees are bent"), shuffles, and phrases each fact with a
random template and synonym in one voice per caption (second, first or third person, as PoseScript's captions).
`parse_facts(text)` recovers the (kind, subject, level) of every clause it recognises; `compose_caption` returns
the caption together with exactly the facts it states, so a caption -> parse round trip can be checked, and
generated descriptions can be scored by precision / recall of stated facts (`fact_scores`).
"""

from __future__ import annotations

import math

import numpy as np

from unipose_sdk.data.facts import FACT_KINDS, Fact
from unipose_sdk.data.phrasing import (
    VOICES,
    KindSpec,
    compile_patterns,
    join_clauses,
    match_clause,
    render_clause,
    split_clauses,
)

_BEND = {
    "straight": ["straight", "fully extended", "stretched straight"],
    "slightly_bent": ["slightly bent", "a little bent", "softly bent"],
    "bent": ["bent", "bent at about a right angle", "clearly bent"],
    "deeply_bent": ["deeply bent", "fully bent", "tightly folded"],
}
_LEFT_RIGHT = lambda verb: {"left": [f"{verb} to the left"], "right": [f"{verb} to the right"]}

SPECS: dict[str, KindSpec] = {s.kind: s for s in [
    KindSpec("posture", ["{SB} {L}"], subject="body", levels={
        "lying_back": ["lying on {P} back", "lying face up", "lying flat on {P} back"],
        "lying_front": ["lying on {P} stomach", "lying face down", "lying on {P} front"],
        "lying_side": ["lying on {P} side", "lying sideways on the ground"],
        "upside_down": ["upside down", "in an inverted position"]}),
    KindSpec("squat", ["{SB} {L}"], subject="body", levels={
        "squatting": ["squatting", "in a deep squat", "crouching down", "squatting down low"]}),
    KindSpec("sit", ["{SB} {L}"], subject="body", levels={
        "sitting": ["sitting", "seated", "in a sitting position", "sitting down"]}),
    KindSpec("kneel", ["{SB} kneeling on {PART}", "{PART} {IS} resting on the ground"],
             nouns=(("knee", "knees"),), levels={"kneeling": []}),
    KindSpec("lunge", ["{SB} lunging forward on {PART}", "{SB} in a lunge with {PART} in front"],
             nouns=(("leg", "legs"),), levels={"lunging": []}, mergeable=False),
    KindSpec("torso_pitch", ["{P} torso is {L}", "{P} upper body is {L}", ("{SB} {L}", ("back", "forward",
             "slightly_forward", "bent_over")), ("{SB} keeping {P} back straight", ("upright",))], subject="torso", levels={
        "back": ["leaning back", "leaning backwards", "tilted backwards"],
        "upright": ["upright", "held upright", "vertical"],
        "slightly_forward": ["leaning slightly forward", "tilted a little forward"],
        "forward": ["leaning forward", "tilted forward"],
        "bent_over": ["bent over", "bent far forward", "folded forward"]}),
    KindSpec("torso_roll", ["{P} torso is {L}", "{SB} {L}"], subject="torso", levels={
        "left": ["leaning to the left", "bending sideways to the left"],
        "right": ["leaning to the right", "bending sideways to the right"]}),
    KindSpec("torso_twist", ["{P} torso is {L}", "{P} shoulders are {L}", "{P} upper body is {L}"],
             subject="torso", levels={"left": ["twisted to the left", "rotated to the left"],
                                      "right": ["twisted to the right", "rotated to the right"]}),
    KindSpec("knee_bend", ["{PART} {IS} {L}"], nouns=(("knee", "knees"), ("leg", "legs")), levels=_BEND),
    KindSpec("elbow_bend", ["{PART} {IS} {L}"], nouns=(("elbow", "elbows"), ("arm", "arms")), levels=_BEND),
    KindSpec("thigh", ["{PART} {IS} {L}"], nouns=(("thigh", "thighs"), ("upper leg", "upper legs")), levels={
        "back": ["stretched back", "extended behind {P} body"],
        "raised": ["raised forward", "lifted forward"],
        "right_angle": ["horizontal", "level with {P} hips", "at a right angle to {P} torso"],
        "tucked": ["pulled up to {P} chest", "tucked in close to {P} chest"]}),
    KindSpec("leg_raised", ["{PART} {IS} {L}"], nouns=(("leg", "legs"), ("foot", "feet")), mergeable=False,
             levels={"raised": ["raised", "lifted off the ground", "off the floor"],
                     "raised_high": ["raised high", "lifted high", "held up high"]}),
    KindSpec("feet_ground", ["{L}"], subject="feet", levels={
        "both": ["both {P} feet are on the ground", "both {P} feet touch the ground"],
        "left_only": ["only {P} left foot touches the ground", "{P} left foot is the only one on the ground"],
        "right_only": ["only {P} right foot touches the ground", "{P} right foot is the only one on the ground"],
        "neither": ["neither of {P} feet touches the ground", "both {P} feet are off the ground"]}),
    KindSpec("feet_distance", ["{P} feet are {L}", "{SB} keeping {P} feet {L}"], subject="feet", levels={
        "together": ["together", "close together", "next to each other"],
        "apart": ["hip-width apart", "slightly apart", "a little apart"],
        "wide": ["wide apart", "far apart", "spread wide"]}),
    KindSpec("legs_crossed", ["{P} legs are crossed", "{SB} crossing {P} legs", "{P} ankles are crossed"],
             subject="legs", levels={"crossed": []}),
    KindSpec("stride", ["{PART} {IS} in front", "{PART} {IS} forward", "{PART} {IS} ahead of the other"],
             nouns=(("foot", "feet"), ("leg", "legs")), levels={"forward": []}, mergeable=False),
    KindSpec("leg_symmetry", ["{P} legs mirror each other", "{P} legs are symmetric",
                              "{P} legs are in the same position"], subject="legs", levels={"symmetric": []}),
    KindSpec("hand_height", ["{PART} {IS} {L}"], nouns=(("hand", "hands"), ("wrist", "wrists")), levels={
        "above_head": ["above {P} head", "raised above {P} head", "higher than {P} head"],
        "head": ["at head height", "level with {P} face"],
        "shoulder": ["at shoulder height", "level with {P} shoulders"],
        "chest": ["at chest height", "at chest level"],
        "waist": ["at hip height", "at waist level", "down by {P} hips"],
        "low": ["below {P} hips", "down low"]}),
    KindSpec("arm_direction", ["{PART} {IS} {L}"], nouns=(("arm", "arms"),), levels={
        "up": ["pointing up", "raised straight up", "stretched upwards"],
        "down": ["hanging down", "pointing down", "lowered"],
        "forward": ["pointing forward", "stretched out in front", "extended forward"],
        "out": ["stretched out to the side", "extended sideways", "spread out sideways"],
        "backward": ["pointing backwards", "reaching back"]}),
    KindSpec("hands_distance", ["{P} hands are {L}"], subject="hands", levels={
        "together": ["together", "touching each other", "joined"],
        "close": ["close to each other", "near each other"],
        "wide": ["far apart", "wide apart", "spread far apart"]}),
    KindSpec("hand_touch", ["{PART} {IS} on {TARGET}", "{PART} {IS} touching {TARGET}",
                            "{PART} {IS} resting on {TARGET}"], nouns=(("hand", "hands"),),
             levels={"touching": []}),
    KindSpec("hand_behind_back", ["{PART} {IS} behind {P} back", "{PART} {IS} held behind {P} back"],
             nouns=(("hand", "hands"),), levels={"behind": []}),
    KindSpec("arms_crossed", ["{P} arms are crossed", "{SB} crossing {P} arms",
                              "{P} arms are folded across {P} chest"], subject="arms", levels={"crossed": []}),
    KindSpec("arm_symmetry", ["{P} arms mirror each other", "{P} arms are symmetric",
                              "{P} arms are held the same way"], subject="arms", levels={"symmetric": []}),
    KindSpec("head_pitch", ["{P} head is {L}", ("{SB} looking down", ("down",)), ("{SB} looking up", ("up",))],
             subject="head", levels={"down": ["tilted down", "bowed", "lowered"],
                                     "up": ["tilted back", "raised", "tipped up"]}),
    KindSpec("head_roll", ["{P} head is {L}"], subject="head", levels={
        "left": ["tilted to the left", "tilted toward {P} left shoulder"],
        "right": ["tilted to the right", "tilted toward {P} right shoulder"]}),
    KindSpec("head_turn", ["{P} head is {L}", ("{SB} looking to {P} left", ("left",)),
                           ("{SB} looking to {P} right", ("right",))], subject="head", levels={
        "left": ["turned to the left", "turned to {P} left"],
        "right": ["turned to the right", "turned to {P} right"]}),
]}
assert set(SPECS) == set(FACT_KINDS), set(SPECS) ^ set(FACT_KINDS)
PATTERNS = {kind: compile_patterns(spec) for kind, spec in SPECS.items()}
WHOLE_BODY_KINDS = ("posture", "squat", "sit", "kneel", "lunge")


# --------------------------------------------------------------------------------------------------- render
def _statements(facts: list[Fact], rng: np.random.Generator, merge_prob: float) -> list[tuple[list[Fact], str, str]]:
    """Group facts into statements: (facts stated, side or "both" or "", touch target)."""
    out = []
    used: set[int] = set()
    for i, fact in enumerate(facts):
        if i in used:
            continue
        used.add(i)
        spec = SPECS[fact.kind]
        if fact.kind == "hand_touch":
            side, target = fact.subject.split("_hand:")
            mate = _touch_mate(facts, fact, used)
            if mate is not None and rng.random() < merge_prob:
                used.add(next(j for j, f in enumerate(facts) if f is mate))
                shared = target if target == "head" else target.split("_")[1] + "s"
                out.append(([fact, mate], "both", "feet" if shared == "foots" else shared))
            else:
                out.append(([fact], side, target))
            continue
        if spec.nouns and spec.mergeable and fact.subject in ("left", "right"):
            other = "right" if fact.subject == "left" else "left"
            mate = next((j for j, f in enumerate(facts) if j not in used and j != i and f.kind == fact.kind
                         and f.subject == other and f.level == fact.level), None)
            if mate is not None and rng.random() < merge_prob:
                used.add(mate)
                out.append(([fact, facts[mate]], "both", ""))
                continue
        out.append(([fact], fact.subject if spec.nouns else "", ""))
    return out


def _touch_mate(facts: list[Fact], fact: Fact, used: set[int]) -> Fact | None:
    """The other hand on the same place (the head) or on its own side's hip / knee / foot."""
    side, target = fact.subject.split("_hand:")
    other = "right" if side == "left" else "left"
    if target == "head":
        wanted = f"{other}_hand:head"
    elif target.startswith(side + "_") and not target.endswith("shoulder"):
        wanted = f"{other}_hand:{other}_{target.split('_')[1]}"
    else:
        return None
    return next((f for j, f in enumerate(facts) if j not in used and f.kind == "hand_touch"
                 and f.subject == wanted), None)


def compose_caption(
    facts: list[Fact], rng: np.random.Generator, max_facts: int | None = None, voice: dict | None = None,
    merge_prob: float = 0.8,
) -> tuple[str, list[Fact]]:
    """(caption text, the facts it states). max_facts: how many non-whole-body facts at most (default 3..8)."""
    voice = VOICES[rng.integers(len(VOICES))] if voice is None else voice
    body = [f for f in facts if f.kind in WHOLE_BODY_KINDS]
    rest = [f for f in facts if f.kind not in WHOLE_BODY_KINDS]
    k = int(rng.integers(3, 9)) if max_facts is None else max_facts
    chosen = [rest[i] for i in sorted(rng.permutation(len(rest))[:k])]
    statements = _statements(body, rng, merge_prob)
    others = _statements(chosen, rng, merge_prob)
    statements += [others[i] for i in rng.permutation(len(others))]
    clauses, stated = [], []
    for group, side, target in statements:
        spec = SPECS[group[0].kind]
        clauses.append(render_clause(spec, group[0].level, rng, voice, side, target))
        stated.extend(group)
    if not clauses:
        return "", []
    return join_clauses(clauses, rng, voice), stated


def caption(facts: list[Fact], rng: np.random.Generator, **kwargs) -> str:
    """Caption text only (see `compose_caption`)."""
    return compose_caption(facts, rng, **kwargs)[0]


# --------------------------------------------------------------------------------------------------- parse
def _subjects(kind: str, groups: dict[str, str | None]) -> list[str]:
    spec = SPECS[kind]
    if not spec.nouns:
        return [spec.subject]
    sides = [groups["side"]] if groups.get("side") and not groups.get("both") else ["left", "right"]
    if kind != "hand_touch":
        return sides
    target, tside = groups["target"], groups.get("tside")
    if target == "head":
        return [f"{s}_hand:head" for s in sides]
    name = {"hips": "hip", "knees": "knee", "feet": "foot", "foot": "foot"}.get(target, target)
    if tside:
        return [f"{s}_hand:{tside}_{name}" for s in sides]
    # "your hands are on your hips": each hand on its own side; "your left hand is on your knee": its own side
    return [f"{s}_hand:{s}_{name}" for s in sides]


def parse_facts(text: str) -> list[Fact]:
    """Facts a caption states, in order, without duplicates. Values are unknown (nan); compare `.key`s."""
    out: list[Fact] = []
    seen: set[tuple[str, str, str]] = set()
    for clause in split_clauses(text):
        found = match_clause(clause, PATTERNS)
        if found is None:
            continue
        kind, match, level = found
        for subject in _subjects(kind, match.groupdict()):
            fact = Fact(kind, subject, math.nan, level)
            if fact.key not in seen:
                seen.add(fact.key)
                out.append(fact)
    return out


def fact_scores(predicted_text: str, reference: list[Fact]) -> dict[str, float]:
    """Precision / recall / F1 of the facts a (generated) description states, against reference facts.

    Precision: share of stated facts that are true of the pose (present in `reference`, e.g. all its facts).
    Recall: share of `reference` facts that are stated (use the stated facts of a ground-truth caption).
    """
    stated = {f.key for f in parse_facts(predicted_text)}
    truth = {f.key for f in reference}
    hits = len(stated & truth)
    precision = hits / len(stated) if stated else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "stated": float(len(stated))}
