"""Body regions, the regions an edit instruction names, and a pose that takes only those regions from an edit.

An instruction such as "raise your left arm above your head" says what changes, and by saying nothing about the
rest it asks that the rest stay. The Editor's model rewrites the whole pose, and a small model moves what it was
not asked to move (on the embedded model's held-out pairs the edited pose was further from the target than the
unchanged input). `regions_named` reads which regions an instruction names, in plain body-part English (arm,
hand, elbow, knee, foot, torso, back, head, look, lean ...) with the side each is given; `take_regions` keeps the
source pose's joint rotations everywhere else, the global orientation included.

An instruction that names no region, or that names a whole-body posture or movement (squat, sit, kneel, lie down,
jump, turn around, "whole body" ...), gets the model's whole pose: there, every joint may change.

Rotations are local (each joint relative to its parent), so a region keeps its own shape when a joint above it
changes: an arm taken from the source still hangs the same way from a torso that the edit bent.
"""

from __future__ import annotations

import re

import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_INDEX

REGION_JOINTS: dict[str, tuple[str, ...]] = {
    "left_arm": ("left_collar", "left_shoulder", "left_elbow", "left_wrist"),
    "right_arm": ("right_collar", "right_shoulder", "right_elbow", "right_wrist"),
    "left_leg": ("left_hip", "left_knee", "left_ankle", "left_foot"),
    "right_leg": ("right_hip", "right_knee", "right_ankle", "right_foot"),
    "spine": ("spine1", "spine2", "spine3"),
    "head": ("neck", "head"),
}

# Words naming a part of a sided limb (singular and plural) or a central region.
_ARM_WORDS = ("arm", "hand", "elbow", "wrist", "forearm", "shoulder", "fist", "finger", "palm", "thumb", "biceps")
_LEG_WORDS = ("leg", "knee", "foot", "feet", "ankle", "thigh", "shin", "toe", "heel", "hip", "calf", "calves")
_SPINE_WORDS = ("torso", "your back", "the back", "his back", "her back", "their back", "lower back", "upper back",
                "spine", "chest", "waist", "trunk", "upper body", "belly", "stomach", "lean", "leaning", "arch",
                "twist", "hunch", "slouch", "bend forward", "bend over", "bend backward", "bend sideways",
                "bend to the", "bend your body", "bow")
# "look" names the head only as gazing somewhere ("look up", "looking at"), not as seeming ("look happier").
_HEAD_WORDS = ("head", "neck", "chin", "face", "nod", "eyes") + tuple(
    f"{verb} {where}" for verb in ("look", "looking", "gaze", "gazing", "glance", "glancing")
    for where in ("up", "down", "left", "right", "to", "at", "over", "toward", "towards", "away", "back", "straight",
                  "ahead", "forward", "sideways", "behind", "around", "into", "upward", "downward"))
# A whole-body posture or movement: every joint may change.
_WHOLE_BODY = ("squat", "crouch", "sit", "seated", "kneel", "lie", "lying", "lay down", "jump", "hop", "stand",
               "standing", "balance", "get up", "turn around", "spin", "whole body", "entire body", "full body",
               "everything", "walk", "run", "lunge", "t-pose", "t pose", "star", "cartwheel", "handstand", "plank",
               "push-up", "yoga", "dance", "fall", "roll over", "flip")
# After one of these, a body part is where something goes, not what moves ("raise your left hand above your
# head", "hands on your hips", "touch your knee with ..."): it is not named as changing.
_TARGET_MARKERS = ("above", "over", "on", "onto", "to", "towards", "toward", "behind", "near", "next to", "in front of",
                   "at", "against", "under", "below", "beside", "by", "between", "around", "across", "touch",
                   "touching", "reach for", "reaching for", "grab", "grabbing", "hold", "holding", "cover",
                   "covering", "than", "as high as", "level with")

_CLAUSE_SPLIT = re.compile(r"[.,;:!?]|\band\b|\bthen\b|\bwhile\b|\bwith\b|\bbut\b", re.IGNORECASE)


def _words(words: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for any word (or phrase) of `words`, at word boundaries, plurals included."""
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")(?:s|es)?\b")


_ARM, _LEG, _SPINE, _HEAD = _words(_ARM_WORDS), _words(_LEG_WORDS), _words(_SPINE_WORDS), _words(_HEAD_WORDS)
_WHOLE, _TARGET = _words(_WHOLE_BODY), _words(_TARGET_MARKERS)
_SIDE = re.compile(r"\b(left|right|both)\b")


def _starts(pattern: re.Pattern[str], text: str) -> list[int]:
    """Where the pattern's words start in `text`."""
    return [match.start() for match in pattern.finditer(text)]


def regions_named(instruction: str) -> frozenset[str] | None:
    """The regions (keys of REGION_JOINTS) an instruction names, or None: it names none, or a whole-body change.

    A limb word takes the side that precedes it in its clause ("your left arm", "the right knee"); "both", a
    plural ("arms", "hands", "feet") or no side names both sides.
    """
    text = " ".join(instruction.lower().replace("’", "'").split())
    if _WHOLE.search(text):
        return None
    regions: set[str] = set()
    for clause in _CLAUSE_SPLIT.split(text):
        clause = clause.strip()
        if not clause:
            continue
        for pattern, limb in ((_ARM, "arm"), (_LEG, "leg")):
            for start in _starts(pattern, clause):
                before = clause[:start]
                if _TARGET.search(before):
                    continue
                sides = _SIDE.findall(before)
                word = re.match(r"[a-z]+", clause[start:])
                plural = word is not None and (word.group(0).endswith("s") and word.group(0) not in ("biceps",)
                                               or word.group(0) in ("feet", "calves"))
                side = sides[-1] if sides else "both"
                if side == "both" or plural and not sides:
                    regions.update({f"left_{limb}", f"right_{limb}"})
                else:
                    regions.add(f"{side}_{limb}")
        for pattern, region in ((_SPINE, "spine"), (_HEAD, "head")):
            if any(not _TARGET.search(clause[:start]) for start in _starts(pattern, clause)):
                regions.add(region)
    return frozenset(regions) or None


def take_regions(source: Pose, edited: Pose, regions: frozenset[str] | set[str]) -> Pose:
    """The source pose with the joint rotations of `regions` taken from `edited` (both of the same batch size);
    every other joint, the global orientation included, keeps the source's rotation."""
    rotmat = source.rotmat.clone()
    rows = [JOINT_INDEX[name] for region in sorted(regions) for name in REGION_JOINTS[region]]
    if rows:
        index = torch.tensor(rows, dtype=torch.long)
        rotmat[:, index] = edited.rotmat.to(rotmat.device)[:, index]
    return Pose(rotmat)
