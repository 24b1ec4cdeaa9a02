"""The small template language shared by the pose captioner and the pair describer: render and parse.

A template is a lowercase clause with slots:
  {SB}      subject + "to be" of the chosen voice    "you are" / "i am" / "they are" / "the person is" / ...
  {P}       possessive of the voice                  "your" / "my" / "their" / "his" / "her"
  {PART}    a body part with side, or both sides     "your left knee" / "both your knees" / "your knees"
  {IS}      "is" or "are", agreeing with {PART}
  {TARGET}  what a hand touches                      "your head" / "your right knee" / "your hips"
  {L}       a phrase naming the fact's level (phrases may contain {P} or {SB})
Rendering fills the slots at random; parsing turns every (template, phrase) into a regular expression with named
groups (side, both, tside, target) that states one level, and matches it against a whole clause. Because every clause
is matched whole (`fullmatch`), alternation order never matters and a clause means exactly one thing.

Clauses are joined with ", and", " and", ", while", ";" or ". "; templates therefore never contain those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

VOICES: tuple[dict[str, str], ...] = (
    {"SB": "you are", "P": "your"},
    {"SB": "i am", "P": "my"},
    {"SB": "they are", "P": "their"},
    {"SB": "the person is", "P": "their"},
    {"SB": "he is", "P": "his"},
    {"SB": "she is", "P": "her"},
)
SECOND_PERSON = VOICES[0]
_SB_RE = "(?:" + "|".join(sorted({v["SB"] for v in VOICES})) + ")"
_P_RE = "(?:" + "|".join(sorted({v["P"] for v in VOICES})) + ")"
CLAUSE_SPLIT_RE = re.compile(
    r"\s*(?:[.;!]\s*|,\s*and\s+|,\s*while\s+|,\s*then\s+|\s+and\s+|\s+while\s+|\s+then\s+|,\s*)\s*")
_FORBIDDEN = (" and ", " while ", ",", ";", ".", " then ")


@dataclass
class KindSpec:
    """How one kind of fact is phrased."""

    kind: str
    templates: list[str | tuple[str, tuple[str, ...]]]  # text, or (text, the only levels it may state)
    levels: dict[str, list[str]] = field(default_factory=dict)  # level -> phrases for {L}
    nouns: tuple[tuple[str, str], ...] = ()  # (singular, plural) names of {PART}; empty: the kind has no sides
    subject: str = ""  # fixed subject of side-less kinds ("body", "torso", ...)
    mergeable: bool = True  # may "left" and "right" with one level be said once, as "both"?


def check_spec(spec: KindSpec) -> None:
    for template in spec.templates:
        text = template if isinstance(template, str) else template[0]
        pieces = [text] + [p for phrases in spec.levels.values() for p in phrases]
        for piece in pieces:
            bare = re.sub(r"\{[A-Z]+\}", "", piece)
            if any(bad in f" {piece} " for bad in _FORBIDDEN) or bare != bare.lower():
                raise ValueError(f"{spec.kind}: {piece!r} must be lowercase without clause separators")


def _fill_voice(text: str, voice: dict[str, str]) -> str:
    return text.replace("{SB}", voice["SB"]).replace("{P}", voice["P"])


def _voice_re(text: str) -> str:
    """Escape a literal piece and turn its {SB} / {P} into alternations."""
    out = re.escape(text).replace(r"\{SB\}", _SB_RE).replace(r"\{P\}", _P_RE)
    return out.replace(r"\{", "{").replace(r"\}", "}")


def templates_for(spec: KindSpec, level: str) -> list[str]:
    out = []
    for template in spec.templates:
        if isinstance(template, str):
            out.append(template)
        elif level in template[1]:
            out.append(template[0])
    return out


def render_clause(
    spec: KindSpec, level: str, rng: np.random.Generator, voice: dict[str, str], side: str = "",
    target: str = "",
) -> str:
    """One clause stating (spec.kind, side, level). side: "left" / "right" / "both" / "" (side-less kinds).
    target: for hand touches, "head", "left_knee", ... or "hips" / "knees" (each hand on its own side)."""
    options = templates_for(spec, level)
    if not options:
        raise ValueError(f"no template of {spec.kind} can state level {level!r}")
    text = options[rng.integers(len(options))]
    if "{L}" in text:
        phrases = spec.levels[level]
        text = text.replace("{L}", phrases[rng.integers(len(phrases))])
    if "{PART}" in text:
        singular, plural = spec.nouns[rng.integers(len(spec.nouns))]
        if side == "both":
            part = ["both {P} " + plural, "{P} " + plural, "both of {P} " + plural][rng.integers(3)]
        else:
            part = "{P} " + side + " " + singular
        text = text.replace("{PART}", part).replace("{IS}", "are" if side == "both" else "is")
    if "{TARGET}" in text:
        if target in ("hips", "knees", "feet", "head"):
            phrase = "{P} " + target
        else:
            tside, _, name = target.partition("_")
            phrase = "{P} " + (f"{tside} {name}" if name else tside)
        text = text.replace("{TARGET}", phrase)
    return _fill_voice(text, voice)


_TARGET_RE = _P_RE + r" (?:(?P<tside>left|right) )?(?P<target>head|hips|hip|knees|knee|feet|foot|shoulder)"


def _clause_re(text: str, part_re: str) -> str:
    pieces = re.split(r"(\{PART\}|\{IS\}|\{TARGET\})", text)
    slots = {"{PART}": part_re, "{IS}": "(?:is|are)", "{TARGET}": _TARGET_RE}
    return "".join(slots.get(piece) or _voice_re(piece) for piece in pieces)


def compile_patterns(spec: KindSpec) -> list[tuple[re.Pattern[str], str]]:
    """One regex per (template, level phrase), each with the level it states. Phrases may hold any slot."""
    check_spec(spec)
    nouns = "|".join(n for pair in spec.nouns for n in pair)
    part_re = rf"(?P<both>both (?:of )?)?{_P_RE} (?:(?P<side>left|right) )?(?:{nouns})"
    out = []
    for template in spec.templates:
        text, only = (template, None) if isinstance(template, str) else template
        levels = list(spec.levels) if only is None else list(only)
        for level in levels:
            phrases = spec.levels.get(level) or [""]
            for phrase in (phrases if "{L}" in text else [""]):
                concrete = text.replace("{L}", phrase)
                out.append((re.compile(_clause_re(concrete, part_re)), level))
    return out


def split_clauses(text: str) -> list[str]:
    """Lowercase text -> clauses (separators removed, whitespace normalised)."""
    text = re.sub(r"\s+", " ", text.lower().replace("\u2019", "'")).strip()
    return [c.strip(" .") for c in CLAUSE_SPLIT_RE.split(text) if c.strip(" .")]


def match_clause(clause: str, patterns: dict[str, list]) -> tuple[str, re.Match[str], str] | None:
    """The (kind, match, level) a clause states, or None."""
    for kind, compiled in patterns.items():
        for regex, level in compiled:
            m = regex.fullmatch(clause)
            if m is not None:
                return kind, m, level
    return None


def join_clauses(clauses: list[str], rng: np.random.Generator, voice: dict[str, str],
                 joiners: tuple[str, ...] = (", and ", " and ", ", while ", "; ")) -> str:
    """Clauses -> sentences of one or two clauses, capitalised, ending with a full stop."""
    sentences = []
    i = 0
    while i < len(clauses):
        if i + 1 < len(clauses) and rng.random() < 0.45:
            joiner = joiners[rng.integers(len(joiners))]
            sentences.append(clauses[i] + joiner + clauses[i + 1])
            i += 2
        else:
            sentences.append(clauses[i])
            i += 1
    text = ". ".join(s[0].upper() + s[1:] for s in sentences) + "."
    if voice["SB"] == "i am":
        text = re.sub(r"\bi\b", "I", text)
    return text


def in_frame(frame: str, sentence: str) -> str:
    """`sentence` in the "{}" slot of `frame`, lower-cased at its start where the frame's words before the slot do
    not end a sentence: "Now {}" -> "Now raise your left arm.", "Okay. {}" and "{}" keep "Raise"."""
    before = frame.split("{}", 1)[0].rstrip()
    if before and not before.endswith((".", "!", "?")):
        sentence = sentence[:1].lower() + sentence[1:]
    return frame.format(sentence)

