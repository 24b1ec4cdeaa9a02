"""Metric functions of `unipose evaluate`: joint errors, fact agreement, and the trivial baselines.

All joint errors are in millimetres over the 22 joints of the built-in skeleton, after aligning the pelvis
(MPJPE) or after a similarity Procrustes fit (PA-MPJPE: best scale, rotation and translation of the prediction).
Fact metrics use the data engine's own fact extractor and caption / instruction parsers, so they measure whether
the generated pose or text says what is true, not whether it copies a reference string.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from unipose_sdk.data.captions import compose_caption, fact_scores, parse_facts
from unipose_sdk.data.facts import Fact, facts_for_poses
from unipose_sdk.data.pairs import PairFact, facts_hold, parse_pair_text
from unipose_sdk.data.poses import joints_and_rotations

MOVE_KINDS = ("move_hand", "move_foot")  # motion instructions: no level to check on the edited pose's facts


# ---------------------------------------------------------------------------------------------- joint errors
def mpjpe_mm(pred_m: np.ndarray, true_m: np.ndarray) -> np.ndarray:
    """Per-sample mean joint distance after aligning the pelvis (joint 0): [N, J, 3] x2 -> [N] mm."""
    pred = pred_m - pred_m[:, :1]
    true = true_m - true_m[:, :1]
    return np.linalg.norm(pred - true, axis=-1).mean(axis=-1) * 1000.0


def procrustes_align(pred_m: np.ndarray, true_m: np.ndarray) -> np.ndarray:
    """The similarity transform of each prediction [N, J, 3] that best fits the truth (least squares)."""
    out = np.empty_like(pred_m, dtype=np.float64)
    for i, (p, t) in enumerate(zip(pred_m.astype(np.float64), true_m.astype(np.float64))):
        mu_p, mu_t = p.mean(axis=0), t.mean(axis=0)
        p0, t0 = p - mu_p, t - mu_t
        u, s, vt = np.linalg.svd(p0.T @ t0)
        d = np.sign(np.linalg.det(u @ vt))  # no reflections
        fix = np.diag([1.0, 1.0, d])
        rotation = u @ fix @ vt
        scale = (s * np.diag(fix)).sum() / max((p0 ** 2).sum(), 1e-12)
        out[i] = scale * p0 @ rotation + mu_t
    return out


def pa_mpjpe_mm(pred_m: np.ndarray, true_m: np.ndarray) -> np.ndarray:
    """Per-sample MPJPE after the Procrustes fit: [N] mm."""
    aligned = procrustes_align(pred_m, true_m)
    return np.linalg.norm(aligned - true_m, axis=-1).mean(axis=-1) * 1000.0


def joints_of(axis_angle: np.ndarray) -> np.ndarray:
    """Axis-angle [N, 66] -> joints [N, 22, 3] metres, the data engine's FK (the evaluation's one skeleton)."""
    return joints_and_rotations(np.asarray(axis_angle, dtype=np.float32))[0]


# ---------------------------------------------------------------------------------------------- facts
def fact_holds_fraction(stated: Sequence[Fact], facts_of_pose: Sequence[Fact]) -> float:
    """Share of stated facts (e.g. a prompt's) that hold on a pose, given all facts of that pose. NaN if none."""
    if not stated:
        return float("nan")
    true_keys = {f.key for f in facts_of_pose}
    return sum(f.key in true_keys for f in stated) / len(stated)


def description_scores(text: str, all_true_facts: Sequence[Fact], reference_stated: Sequence[Fact]) -> dict[str, float]:
    """Precision against everything true of the pose; recall of the facts a reference caption states."""
    return {"precision": fact_scores(text, list(all_true_facts))["precision"],
            "recall": fact_scores(text, list(reference_stated))["recall"],
            "stated": float(len(parse_facts(text)))}


def pair_scores(text: str, true_pair_facts: Sequence[PairFact], reference_stated: Sequence[PairFact],
                ) -> dict[str, float]:
    """Precision / recall of the (kind, subject, after) instructions a generated difference text states."""
    stated = {f.key for f in parse_pair_text(text)}
    truth = {f.key for f in true_pair_facts}
    reference = {f.key for f in reference_stated}
    precision = len(stated & truth) / len(stated) if stated else 0.0
    recall = len(stated & reference) / len(reference) if reference else float("nan")
    return {"precision": precision, "recall": recall, "stated": float(len(stated))}


def edit_holds_fraction(instruction_facts: Sequence[PairFact], facts_of_edited: Sequence[Fact]) -> float:
    """Share of the instructed level changes (move_* excluded) that hold on the edited pose. NaN if none."""
    checkable = [f for f in instruction_facts if f.kind not in MOVE_KINDS]
    if not checkable:
        return float("nan")
    return sum(facts_hold(f, list(facts_of_edited)) for f in checkable) / len(checkable)


def facts_of(axis_angle: np.ndarray) -> list[list[Fact]]:
    return facts_for_poses(np.asarray(axis_angle, dtype=np.float32))


# ---------------------------------------------------------------------------------------------- baselines
def mean_pose_axis_angle(axis_angle: np.ndarray) -> np.ndarray:
    """The per-joint rotation mean (chordal L2 mean: average the matrices, project to SO(3)) -> [66]."""
    import torch

    from unipose_sdk.body.pose import Pose

    rotmat = Pose.from_axis_angle(torch.from_numpy(np.asarray(axis_angle, dtype=np.float32))).rotmat
    mean = rotmat.double().mean(dim=0)  # [22, 3, 3]
    u, _, vt = torch.linalg.svd(mean)
    det = torch.det(u @ vt)
    fix = torch.diag_embed(torch.stack([torch.ones_like(det), torch.ones_like(det), det], dim=-1))
    projected = (u @ fix @ vt).float()
    return Pose.from_rotmat(projected.unsqueeze(0)).axis_angle().reshape(-1).numpy()


def most_frequent_text(candidates: Sequence[str], stated_keys: Sequence[Sequence[tuple]], min_facts: int = 1) -> str:
    """The trivial 'most frequent' answer: the candidate whose stated facts are, on average, the most frequent
    among all candidates' statements (texts are composed at random, so exact strings rarely repeat; what repeats
    is what they say). Ties go to the first candidate."""
    counts = Counter(key for keys in stated_keys for key in set(keys))
    best, best_score = candidates[0], -1.0
    for text, keys in zip(candidates, stated_keys):
        keys = set(keys)
        if len(keys) < min_facts:
            continue
        score = sum(counts[k] for k in keys) / len(keys)
        if score > best_score:
            best, best_score = text, score
    return best


def most_frequent_caption(facts: Sequence[Sequence[Fact]], rng: np.random.Generator, min_facts: int = 3) -> str:
    """Most frequent caption of a training pool (see `most_frequent_text`), from one caption per pose."""
    composed = [compose_caption(list(f), rng) for f in facts]
    composed = [(text, stated) for text, stated in composed if text]
    return most_frequent_text([t for t, _ in composed], [[f.key for f in s] for _, s in composed], min_facts)


def nan_mean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else float("nan")
