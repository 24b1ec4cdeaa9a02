"""Synthetic data engine for training the embedded unipose-tiny model: poses, captions, pair edits, renders.

    poses       sample_poses(n, seed, mix=..., global_orient=...) -> (axis_angle [n, 66], labels)
    archetypes  ARCHETYPES: named postures as per-joint Euler angles (ARCHETYPE_NAMES: the 26 every pool draws
                from; TRAINING_ARCHETYPE_NAMES adds 13 that only training pools draw from)
    facts       extract_facts(joints_m, global_rotmat=None) -> [Fact(kind, subject, value, level)]
    captions    caption(facts, rng) / compose_caption(...) -> (text, stated) / parse_facts(text) / fact_scores
    pairs       sample_pairs(n, seed) / describe_pair(joints_a, joints_b, rng) -> (text, pair_facts) /
                parse_pair_text(text)
    render      render_views(joints_m, rng) -> {"clip": ..., "pose": ...} images + 2D joints
    dataset     make_dataset(out_dir, seed, size) (the `unipose data make` command)
Modules import lazily-cheap dependencies only (numpy, torch for FK); nothing here downloads anything.
"""

from unipose_sdk.data.captions import caption, compose_caption, fact_scores, parse_facts
from unipose_sdk.data.facts import FACT_KINDS, Fact, extract_facts, facts_for_poses
from unipose_sdk.data.pairs import PairFact, describe_pair, pair_facts, parse_pair_text, sample_pairs
from unipose_sdk.data.poses import joints_and_rotations, joints_from_axis_angle, sample_poses
from unipose_sdk.data.render import render_views

__all__ = [
    "FACT_KINDS", "Fact", "PairFact", "caption", "compose_caption", "describe_pair", "extract_facts", "fact_scores",
    "facts_for_poses", "joints_and_rotations", "joints_from_axis_angle", "pair_facts", "parse_facts",
    "parse_pair_text", "render_views", "sample_pairs", "sample_poses",
]
