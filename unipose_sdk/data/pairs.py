"""Pose pairs: sample B as a meaningful edit of A, and say how to get from A to B as instructions.

`sample_pairs(n, seed)` draws pose A from the sampler and builds B by replacing one or two body regions (an arm,
a leg, the spine, the head) with the angles of another sampled pose, then clipping to the joint limits; the
global orientation is shared, as in PoseFix. Pairs whose change is too small to describe are redrawn.

`describe_pair(joints_a, joints_b, rng)` compares the facts of A and B (`facts.extract_facts`) and the motion of
the hands, feet and head in A's body frame, and phrases the changes as imperative instructions ("raise your left
hand above your head", "bend your right knee to a right angle", "lean forward"). Every instruction is a
`PairFact(kind, subject, before, after, value)`: after is the level B has (or "none" when a fact of A is gone;
for `move_*` kinds, a direction). `parse_pair_text` reads the (kind, subject, after) back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unipose_sdk.body.regions import REGION_JOINTS
from unipose_sdk.body.rotations import matrix_to_axis_angle
from unipose_sdk.body.skeleton import JOINT_INDEX as J
from unipose_sdk.data.captions import _BEND, _subjects
from unipose_sdk.data.facts import Fact, extract_facts
from unipose_sdk.data.phrasing import (
    SECOND_PERSON,
    KindSpec,
    compile_patterns,
    join_clauses,
    match_clause,
    render_clause,
    split_clauses,
)
from unipose_sdk.data.poses import (
    _random_root,
    clip_to_limits,
    euler_deg_to_matrix,
    joints_and_rotations,
    sample_euler_deg,
)

REGIONS = REGION_JOINTS  # the regions an edit replaces, the same the Editor keeps when an instruction names others


@dataclass(frozen=True)
class PairFact:
    kind: str
    subject: str
    before: str | None  # A's level ("none": A had no such fact); None when parsed from text
    after: str  # B's level, "none" when the fact is gone in B, or a direction for move_* kinds
    value: float = math.nan  # metres moved for move_* kinds, else nan

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.subject, self.after)


_NONE_OK = lambda *phrases: {"none": list(phrases)}
_DIRECTIONS = {"up": ["up", "upwards", "higher"], "down": ["down", "downwards", "lower"],
               "forward": ["forward", "to the front"], "backward": ["backward", "back"],
               "left": ["to the left", "to {P} left"], "right": ["to the right", "to {P} right"]}

INSTRUCTIONS: dict[str, KindSpec] = {s.kind: s for s in [
    KindSpec("knee_bend", ["{L}"], nouns=(("knee", "knees"), ("leg", "legs")), levels={
        "straight": ["straighten {PART}", "extend {PART} fully"],
        "slightly_bent": ["bend {PART} slightly", "bend {PART} a little"],
        "bent": ["bend {PART} to a right angle", "bend {PART} at about ninety degrees"],
        "deeply_bent": ["bend {PART} fully", "bend {PART} deeply"]}),
    KindSpec("elbow_bend", ["{L}"], nouns=(("elbow", "elbows"), ("arm", "arms")), levels={
        "straight": ["straighten {PART}", "extend {PART} fully"],
        "slightly_bent": ["bend {PART} slightly", "bend {PART} a little"],
        "bent": ["bend {PART} to a right angle", "bend {PART} at about ninety degrees"],
        "deeply_bent": ["bend {PART} fully", "bend {PART} deeply"]}),
    KindSpec("hand_height", ["{L}"], nouns=(("hand", "hands"),), levels={
        "above_head": ["raise {PART} above {P} head", "lift {PART} over {P} head"],
        "head": ["bring {PART} up to head height", "raise {PART} to {P} face"],
        "shoulder": ["move {PART} to shoulder height", "bring {PART} level with {P} shoulders"],
        "chest": ["bring {PART} to chest height", "move {PART} to chest level"],
        "waist": ["lower {PART} to hip height", "bring {PART} down to {P} waist"],
        "low": ["lower {PART} below {P} hips", "drop {PART} down low"]}),
    KindSpec("arm_direction", ["{L}"], nouns=(("arm", "arms"),), levels={
        "up": ["point {PART} straight up", "raise {PART} straight up"],
        "down": ["let {PART} hang down", "lower {PART} to {P} side"],
        "forward": ["stretch {PART} forward", "point {PART} forward"],
        "out": ["stretch {PART} out to the side", "extend {PART} sideways"],
        "backward": ["swing {PART} backwards", "point {PART} backwards"]}),
    KindSpec("thigh", ["{L}"], nouns=(("thigh", "thighs"), ("upper leg", "upper legs")), levels={
        "back": ["push {PART} backwards", "extend {PART} behind {P} body"],
        "raised": ["lift {PART} forward", "raise {PART} a little forward"],
        "right_angle": ["raise {PART} to hip height", "lift {PART} until it is horizontal"],
        "tucked": ["pull {PART} up to {P} chest", "tuck {PART} in to {P} chest"],
        **_NONE_OK("bring {PART} back under {P} hips", "let {PART} hang straight down")}),
    KindSpec("torso_pitch", ["{L}"], subject="torso", levels={
        "back": ["lean back", "lean backwards"], "upright": ["straighten {P} back", "bring {P} torso upright"],
        "slightly_forward": ["lean slightly forward", "tilt forward a little"],
        "forward": ["lean forward", "tilt {P} torso forward"],
        "bent_over": ["bend over", "fold {P} upper body forward"]}),
    KindSpec("torso_roll", ["{L}"], subject="torso", levels={
        "left": ["lean to the left", "bend sideways to the left"],
        "right": ["lean to the right", "bend sideways to the right"],
        **_NONE_OK("stop leaning sideways", "bring {P} torso back to the middle")}),
    KindSpec("torso_twist", ["{L}"], subject="torso", levels={
        "left": ["twist {P} torso to the left", "turn {P} shoulders to the left"],
        "right": ["twist {P} torso to the right", "turn {P} shoulders to the right"],
        **_NONE_OK("untwist {P} torso", "square {P} shoulders with {P} hips")}),
    KindSpec("head_pitch", ["{L}"], subject="head", levels={
        "down": ["look down", "lower {P} head"], "up": ["look up", "tilt {P} head back"],
        **_NONE_OK("look straight ahead", "hold {P} head level")}),
    KindSpec("head_roll", ["{L}"], subject="head", levels={
        "left": ["tilt {P} head to the left"], "right": ["tilt {P} head to the right"],
        **_NONE_OK("hold {P} head upright", "stop tilting {P} head")}),
    KindSpec("head_turn", ["{L}"], subject="head", levels={
        "left": ["turn {P} head to the left", "look to {P} left"],
        "right": ["turn {P} head to the right", "look to {P} right"],
        **_NONE_OK("turn {P} head back to the front", "face forward again")}),
    KindSpec("feet_distance", ["{L}"], subject="feet", levels={
        "together": ["bring {P} feet together", "close {P} feet"],
        "apart": ["set {P} feet hip-width apart", "move {P} feet slightly apart"],
        "wide": ["spread {P} feet wide apart", "take a wide stance"]}),
    KindSpec("kneel", ["{L}"], nouns=(("knee", "knees"),), levels={
        "kneeling": ["kneel on {PART}", "go down on {PART}"],
        **_NONE_OK("get up off {PART}", "lift {PART} off the ground")}),
    KindSpec("squat", ["{L}"], subject="body", levels={
        "squatting": ["squat down", "crouch down low"], **_NONE_OK("stand up from the squat", "rise out of the squat")}),
    KindSpec("sit", ["{L}"], subject="body", levels={
        "sitting": ["sit down", "take a seat"], **_NONE_OK("stand up from sitting", "get up out of the seat")}),
    KindSpec("posture", ["{L}"], subject="body", levels={
        "lying_back": ["lie down on {P} back", "lie face up"], "lying_front": ["lie face down", "lie on {P} stomach"],
        "lying_side": ["lie on {P} side"], "upside_down": ["turn upside down"],
        **_NONE_OK("get up off the ground", "get up from lying down")}),
    KindSpec("legs_crossed", ["{L}"], subject="legs", levels={
        "crossed": ["cross {P} legs", "cross {P} ankles"], **_NONE_OK("uncross {P} legs", "uncross {P} ankles")}),
    KindSpec("arms_crossed", ["{L}"], subject="arms", levels={
        "crossed": ["cross {P} arms", "fold {P} arms across {P} chest"],
        **_NONE_OK("uncross {P} arms", "unfold {P} arms")}),
    KindSpec("hand_touch", ["{L}"], nouns=(("hand", "hands"),), levels={
        "touching": ["put {PART} on {TARGET}", "place {PART} on {TARGET}", "touch {TARGET} with {PART}"],
        **_NONE_OK("take {PART} off {TARGET}", "move {PART} away from {TARGET}")}),
    KindSpec("leg_raised", ["{L}"], nouns=(("leg", "legs"), ("foot", "feet")), mergeable=False, levels={
        "raised": ["lift {PART} off the ground", "raise {PART}"], "raised_high": ["lift {PART} high", "raise {PART} up high"],
        **_NONE_OK("put {PART} back down", "lower {PART} to the ground")}),
    KindSpec("hand_behind_back", ["{L}"], nouns=(("hand", "hands"),), levels={
        "behind": ["put {PART} behind {P} back", "hide {PART} behind {P} back"],
        **_NONE_OK("bring {PART} out from behind {P} back")}),
    KindSpec("hands_distance", ["{L}"], subject="hands", levels={
        "together": ["bring {P} hands together", "join {P} hands"], "close": ["bring {P} hands close to each other"],
        "wide": ["spread {P} hands far apart", "move {P} hands wide apart"]}),
    KindSpec("move_hand", ["move {PART} {L}", "shift {PART} {L}"], nouns=(("hand", "hands"),), levels=_DIRECTIONS,
             mergeable=False),
    KindSpec("move_foot", ["move {PART} {L}", "shift {PART} {L}"], nouns=(("foot", "feet"),), levels=_DIRECTIONS,
             mergeable=False),
]}
PAIR_PATTERNS = {kind: compile_patterns(spec) for kind, spec in INSTRUCTIONS.items()}
_PRIORITY = ("posture", "squat", "sit", "kneel", "legs_crossed", "arms_crossed", "torso_pitch", "hand_touch")
assert set(_BEND) == set(INSTRUCTIONS["knee_bend"].levels)


# ---------------------------------------------------------------------------------------------- sampling
def sample_pairs(
    n: int, seed: int | np.random.Generator = 0, global_orient: str = "upright", min_move_m: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """n (A, B) pose pairs as axis-angle [n, 66] float32 each, and the regions edited in each pair."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    euler_a, _ = sample_euler_deg(n, rng)
    euler_b = euler_a.copy()
    edited: list[list[str]] = []
    names = list(REGIONS)
    for i in range(n):
        for _attempt in range(8):
            donor, _ = sample_euler_deg(1, rng)
            regions = [names[k] for k in rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False)]
            candidate = euler_a[i].copy()
            for region in regions:
                rows = [J[j] for j in REGIONS[region]]
                candidate[rows] = donor[0, rows]
            candidate = clip_to_limits(candidate)
            joints, rots = joints_and_rotations(_to_aa(np.stack([euler_a[i], candidate])))
            moved_m = np.linalg.norm((joints[1] - joints[1, :1]) - (joints[0] - joints[0, :1]), axis=-1).max()
            if moved_m >= min_move_m and pair_facts(joints[0], joints[1], rots[0], rots[1]):
                break  # a visible change that at least one instruction can name
        euler_b[i] = candidate
        edited.append(regions)
    rot_a, rot_b = euler_deg_to_matrix(euler_a), euler_deg_to_matrix(euler_b)
    if global_orient == "random":
        root = _random_root(rng, n, 15.0)
        rot_a[:, 0] = root @ rot_a[:, 0]
        rot_b[:, 0] = root @ rot_b[:, 0]
    to_aa = lambda r: matrix_to_axis_angle(r).reshape(n, -1).astype(np.float32)
    return to_aa(rot_a), to_aa(rot_b), edited


def _to_aa(euler_deg: np.ndarray) -> np.ndarray:
    return matrix_to_axis_angle(euler_deg_to_matrix(euler_deg)).reshape(len(euler_deg), -1)


# ---------------------------------------------------------------------------------------------- describing
def _body_frame(p: np.ndarray) -> np.ndarray:
    left = p[J["left_hip"]] - p[J["right_hip"]]
    up = p[J["spine1"]] - p[J["pelvis"]]
    up = up / np.linalg.norm(up)
    left = left - np.dot(left, up) * up
    left = left / np.linalg.norm(left)
    return np.stack([left, up, np.cross(left, up)])


def pair_facts(
    joints_a: np.ndarray, joints_b: np.ndarray, rot_a: np.ndarray | None = None, rot_b: np.ndarray | None = None,
    min_move_m: float = 0.2,
) -> list[PairFact]:
    """Every describable change from A to B (level changes, vanished facts, big hand / foot moves)."""
    facts_a = {(f.kind, f.subject): f for f in extract_facts(joints_a, rot_a)}
    facts_b = {(f.kind, f.subject): f for f in extract_facts(joints_b, rot_b)}
    out = []
    for (kind, subject), fb in facts_b.items():
        fa = facts_a.get((kind, subject))
        if kind in INSTRUCTIONS and (fa is None or fa.level != fb.level) and fb.level in INSTRUCTIONS[kind].levels:
            out.append(PairFact(kind, subject, fa.level if fa else "none", fb.level))
    for (kind, subject), fa in facts_a.items():
        if (kind, subject) not in facts_b and kind in INSTRUCTIONS and "none" in INSTRUCTIONS[kind].levels:
            out.append(PairFact(kind, subject, fa.level, "none"))
    # Hand and foot motion relative to the pelvis, in A's body frame (left, up, forward).
    frame = _body_frame(joints_a)
    for kind, joint in (("move_hand", "wrist"), ("move_foot", "ankle")):
        for side in ("left", "right"):
            j = J[f"{side}_{joint}"]
            move = frame @ ((joints_b[j] - joints_b[0]) - (joints_a[j] - joints_a[0]))
            size_m = float(np.linalg.norm(move))
            if size_m < min_move_m:
                continue
            axis = int(np.argmax(np.abs(move)))
            if abs(move[axis]) < 0.75 * size_m:
                continue  # diagonal moves are better told by the level facts
            direction = [("left", "right"), ("up", "down"), ("forward", "backward")][axis][int(move[axis] < 0)]
            out.append(PairFact(kind, side, None, direction, round(size_m, 4)))
    return out


def _merge_sides(facts: list[PairFact], rng: np.random.Generator) -> list[tuple[list[PairFact], str, str]]:
    out, used = [], set()
    for i, f in enumerate(facts):
        if i in used:
            continue
        used.add(i)
        spec = INSTRUCTIONS[f.kind]
        if f.kind == "hand_touch":
            side, target = f.subject.split("_hand:")
            out.append(([f], side, target))
            continue
        if spec.nouns and spec.mergeable:
            other = "right" if f.subject == "left" else "left"
            mate = next((j for j, g in enumerate(facts) if j not in used and g.kind == f.kind
                         and g.subject == other and g.after == f.after), None)
            if mate is not None and rng.random() < 0.8:
                used.add(mate)
                out.append(([f, facts[mate]], "both", ""))
                continue
        out.append(([f], f.subject if spec.nouns else "", ""))
    return out


def describe_pair(
    joints_a: np.ndarray, joints_b: np.ndarray, rng: np.random.Generator, rot_a: np.ndarray | None = None,
    rot_b: np.ndarray | None = None, max_instructions: int | None = None,
) -> tuple[str, list[PairFact]]:
    """(instruction text, the pair facts it states). Whole-body changes first, then a random few others."""
    facts = pair_facts(joints_a, joints_b, rot_a, rot_b)
    if not facts:
        return "", []
    first = [f for f in facts if f.kind in _PRIORITY[:4]]
    rest = [f for f in facts if f.kind not in _PRIORITY[:4]]
    k = int(rng.integers(2, 5)) if max_instructions is None else max_instructions
    chosen = [rest[i] for i in sorted(rng.permutation(len(rest))[:k])]
    groups = _merge_sides(first, rng)
    others = _merge_sides(chosen, rng)
    groups += [others[i] for i in rng.permutation(len(others))]
    clauses, stated = [], []
    for group, side, target in groups:
        clauses.append(render_clause(INSTRUCTIONS[group[0].kind], group[0].after, rng, SECOND_PERSON, side, target))
        stated.extend(group)
    return join_clauses(clauses, rng, SECOND_PERSON, joiners=(", and ", " and ", ", then ", " then ", "; ")), stated


def parse_pair_text(text: str) -> list[PairFact]:
    """The (kind, subject, after) of every instruction recognised in text."""
    out, seen = [], set()
    for clause in split_clauses(text):
        found = match_clause(clause, PAIR_PATTERNS)
        if found is None:
            continue
        kind, match, level = found
        groups = match.groupdict()
        if kind in ("move_hand", "move_foot"):
            subjects = [groups["side"]] if groups.get("side") else ["left", "right"]
        else:
            subjects = _subjects(kind, groups) if INSTRUCTIONS[kind].nouns else [INSTRUCTIONS[kind].subject]
        for subject in subjects:
            fact = PairFact(kind, subject, None, level)
            if fact.key not in seen:
                seen.add(fact.key)
                out.append(fact)
    return out


def facts_hold(pair_fact: PairFact, facts_b: list[Fact]) -> bool:
    """Does B have what the instruction asks for? (move_* facts are checked on joints, not here.)"""
    keys = {(f.kind, f.subject): f.level for f in facts_b}
    if pair_fact.after == "none":
        return (pair_fact.kind, pair_fact.subject) not in keys
    return keys.get((pair_fact.kind, pair_fact.subject)) == pair_fact.after
