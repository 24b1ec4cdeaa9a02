"""Data pools for training and evaluation, drawn from the synthetic data engine with a fixed seed.

The slow parts of the data engine (facts: ~3 ms a pose, pair instructions: ~25 ms a pair, renders: ~16 ms an
image) are done once per pool and cached; the cheap parts (which caption of a pose, which phrasing of a prompt)
are drawn per training example, so every epoch sees new text. A pool holds:

    poses   axis-angle [N, 66], joints_m [N, 22, 3], all facts of each pose, its pose-tokenizer codes [N, 80]
    pairs   A / B axis-angle and codes, the instruction texts with the pair facts they state, B's facts
    images  renders [M, 112, 112, 3] uint8 of the first poses and of the first pairs' A and B, with the 2D
            joints (pixels) and root-relative 3D joints used by the vision pretraining

Deterministic given (seed, sizes, pose tokenizer): each part draws from its own Generator seeded with
(seed, part). Evaluation uses a different seed from training (`EVAL_SEED_OFFSET`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.data.archetypes import ARCHETYPE_NAMES
from unipose_sdk.data.facts import Fact, facts_for_poses
from unipose_sdk.data.pairs import PairFact, describe_pair, sample_pairs
from unipose_sdk.data.poses import DEFAULT_MIX, joints_and_rotations, sample_poses
from unipose_sdk.data.render import render_views

log = logging.getLogger("unipose_sdk.training")

EVAL_SEED_OFFSET = 10_007  # evaluation pools: seed + this, never a training seed
POOL_VERSION = 1
IMAGE_VIEW = {"clip": (112, 112)}  # one square render; both tower views are cut from it, as at inference
_PARTS = {"poses": 1, "pairs": 2, "renders": 3}


@dataclass
class PoolSizes:
    poses: int = 12000
    pairs: int = 3000
    pose_images: int = 8000  # renders of poses[:pose_images]
    pair_images: int = 1000  # renders of pairs[:pair_images], A and B
    texts_per_pair: int = 2

    def scaled(self, factor: float) -> PoolSizes:
        """Every count times `factor` (texts per pair kept): a longer run draws from more distinct poses."""
        if not factor > 0:
            raise ValueError(f"pool scale {factor!r}: expected a number > 0")
        count = lambda n: max(1, round(n * factor))  # noqa: E731
        return PoolSizes(count(self.poses), count(self.pairs), count(self.pose_images), count(self.pair_images),
                         self.texts_per_pair)


@dataclass
class Pool:
    seed: int
    sizes: PoolSizes
    axis_angle: np.ndarray  # [N, 66] float32
    joints_m: np.ndarray  # [N, 22, 3] float32, grounded
    facts: list[list[Fact]]
    codes: np.ndarray  # [N, 80] int64
    pair_a: np.ndarray  # [K, 66]
    pair_b: np.ndarray
    pair_joints_a: np.ndarray  # [K, 22, 3]
    pair_joints_b: np.ndarray
    pair_codes_a: np.ndarray  # [K, 80]
    pair_codes_b: np.ndarray
    pair_texts: list[list[tuple[str, list[PairFact]]]]  # per pair, non-empty instructions
    pair_facts_b: list[list[Fact]]
    images: np.ndarray  # [M, 112, 112, 3] uint8
    image_joints_2d: np.ndarray  # [M, 22, 2] pixels (x right, y down)
    image_joints_m: np.ndarray  # [M, 22, 3] root-relative metres
    image_of_pose: np.ndarray  # [pose_images] index into images
    image_of_pair_a: np.ndarray  # [pair_images]
    image_of_pair_b: np.ndarray
    archetypes: tuple[str, ...] = ARCHETYPE_NAMES  # what the poses were drawn around (`build_pool`)
    mix: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_MIX))  # and how

    @property
    def num_poses(self) -> int:
        return int(self.axis_angle.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.pair_a.shape[0])


def _rng(seed: int, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, _PARTS[part]])


def encode_codes(pose_tokenizer: torch.nn.Module | None, axis_angle: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Axis-angle [N, 66] -> codes [N, 80] with the frozen pose tokenizer (as `UniPose.encode_poses` does);
    without a tokenizer (evaluation pools, which go through the task classes) -> [N, 0]."""
    if pose_tokenizer is None:
        return np.zeros((len(axis_angle), 0), np.int64)
    out = []
    with torch.inference_mode():
        for i in range(0, len(axis_angle), chunk):
            pose = Pose.from_axis_angle(torch.from_numpy(np.ascontiguousarray(axis_angle[i:i + chunk])))
            out.append(pose_tokenizer.encode(pose.rotation_6d()).cpu().numpy().astype(np.int64))
    return np.concatenate(out) if out else np.zeros((0, 80), np.int64)


def _render(joints: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    images, joints_2d = [], []
    for j in joints:
        view = render_views(j, rng, views=IMAGE_VIEW)["clip"]
        images.append(view["image"])
        joints_2d.append(view["joints_2d"])
    size = IMAGE_VIEW["clip"]
    return (np.stack(images) if images else np.zeros((0, *size, 3), np.uint8),
            np.stack(joints_2d).astype(np.float32) if joints_2d else np.zeros((0, 22, 2), np.float32))


def build_pool(seed: int, sizes: PoolSizes, pose_tokenizer: torch.nn.Module | None,
               archetypes: tuple[str, ...] = ARCHETYPE_NAMES, mix: Mapping[str, float] | None = None) -> Pool:
    """Draw every part of a pool (see the module docstring); logs the time of each part. `archetypes`: the named
    postures the poses are drawn around, `mix`: how (`data.poses.sample_poses`; training pools add
    `TRAINING_ARCHETYPE_NAMES` and `TRAINING_MIX`; evaluation keeps the defaults, so its pool never changes)."""
    start = time.perf_counter()
    axis_angle, _ = sample_poses(sizes.poses, _rng(seed, "poses"), mix=mix, archetypes=tuple(archetypes))
    joints_m, _ = joints_and_rotations(axis_angle)
    facts = facts_for_poses(axis_angle)
    codes = encode_codes(pose_tokenizer, axis_angle)
    log.info("pool seed %d: %d poses with facts and codes in %.1f s", seed, sizes.poses, time.perf_counter() - start)

    start = time.perf_counter()
    pair_rng = _rng(seed, "pairs")
    pair_a, pair_b, _ = sample_pairs(sizes.pairs, pair_rng)
    joints_a, rot_a = joints_and_rotations(pair_a)
    joints_b, rot_b = joints_and_rotations(pair_b)
    pair_texts = []
    for i in range(sizes.pairs):
        texts = [describe_pair(joints_a[i], joints_b[i], pair_rng, rot_a[i], rot_b[i])
                 for _ in range(sizes.texts_per_pair)]
        pair_texts.append([(t, f) for t, f in texts if t])
    pair_facts_b = facts_for_poses(pair_b)
    codes_a, codes_b = encode_codes(pose_tokenizer, pair_a), encode_codes(pose_tokenizer, pair_b)
    log.info("pool seed %d: %d pairs in %.1f s", seed, sizes.pairs, time.perf_counter() - start)

    start = time.perf_counter()
    render_rng = _rng(seed, "renders")
    n_pose, n_pair = min(sizes.pose_images, sizes.poses), min(sizes.pair_images, sizes.pairs)
    chosen = np.concatenate([joints_m[:n_pose], joints_a[:n_pair], joints_b[:n_pair]])
    images, joints_2d = _render(chosen, render_rng)
    image_joints_m = (chosen - chosen[:, :1]).astype(np.float32)
    log.info("pool seed %d: %d renders in %.1f s", seed, len(chosen), time.perf_counter() - start)
    return Pool(seed, sizes, axis_angle, joints_m.astype(np.float32), facts, codes, pair_a, pair_b,
                joints_a.astype(np.float32), joints_b.astype(np.float32), codes_a, codes_b, pair_texts, pair_facts_b,
                images, joints_2d, image_joints_m, np.arange(n_pose), n_pose + np.arange(n_pair),
                n_pose + n_pair + np.arange(n_pair), tuple(archetypes), dict(DEFAULT_MIX if mix is None else mix))


# The arrays of a Pool stored in the cache (codes are not: they belong to a pose tokenizer and are re-encoded).
_CACHED_ARRAYS = ("axis_angle", "joints_m", "pair_a", "pair_b", "pair_joints_a", "pair_joints_b", "images",
                  "image_joints_2d", "image_joints_m", "image_of_pose", "image_of_pair_a", "image_of_pair_b")
_META_ARRAY = "meta_json"  # the texts and facts, as UTF-8 JSON bytes in a uint8 array


def cache_path(directory: Path, seed: int) -> Path:
    return Path(directory) / f"pool-seed{seed}.npz"


def save_pool(pool: Pool, path: Path) -> None:
    """Write the pool as one npz of plain arrays (no pickled objects; readable with allow_pickle=False), atomically."""
    meta = {
        "version": POOL_VERSION, "seed": pool.seed, "sizes": dataclasses.asdict(pool.sizes),
        "archetypes": list(pool.archetypes), "mix": pool.mix,
        "facts": [[dataclasses.astuple(f) for f in facts] for facts in pool.facts],
        "pair_texts": [[[text, [dataclasses.astuple(f) for f in pair_facts]] for text, pair_facts in texts]
                       for texts in pool.pair_texts],
        "pair_facts_b": [[dataclasses.astuple(f) for f in facts] for facts in pool.pair_facts_b],
    }
    arrays = {name: np.ascontiguousarray(getattr(pool, name)) for name in _CACHED_ARRAYS}
    arrays[_META_ARRAY] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_pool(path: Path, seed: int, sizes: PoolSizes, pose_tokenizer: torch.nn.Module | None,
              archetypes: tuple[str, ...] = ARCHETYPE_NAMES, mix: Mapping[str, float] | None = None) -> Pool | None:
    """The cached pool, or None (logged) when the file is absent, damaged or made for other seeds / sizes /
    archetypes / mix (a cache from before pools recorded them was drawn from `ARCHETYPE_NAMES`, `DEFAULT_MIX`)."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _CACHED_ARRAYS}
            meta = json.loads(data[_META_ARRAY].tobytes().decode("utf-8"))
        if (meta["version"] != POOL_VERSION or meta["seed"] != seed or meta["sizes"] != dataclasses.asdict(sizes)
                or tuple(meta.get("archetypes", ARCHETYPE_NAMES)) != tuple(archetypes)
                or meta.get("mix", DEFAULT_MIX) != mix):
            log.info("pool cache %s was made for other sizes, archetypes or another version: rebuilding it", path)
            return None
        facts = [[Fact(*f) for f in fs] for fs in meta["facts"]]
        pair_texts = [[(text, [PairFact(*f) for f in pair_facts]) for text, pair_facts in texts]
                      for texts in meta["pair_texts"]]
        pair_facts_b = [[Fact(*f) for f in fs] for fs in meta["pair_facts_b"]]
        if len(facts) != len(arrays["axis_angle"]) or len(pair_texts) != len(arrays["pair_a"]):
            raise ValueError("facts and arrays of different lengths")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("pool cache %s is unreadable (%s: %s): rebuilding it", path, type(exc).__name__, exc)
        return None
    # Codes belong to a pose tokenizer, not to the data: re-encode (seconds) so a cached pool can never carry codes
    # of another tokenizer.
    return Pool(seed, sizes, arrays["axis_angle"], arrays["joints_m"], facts,
                encode_codes(pose_tokenizer, arrays["axis_angle"]), arrays["pair_a"], arrays["pair_b"],
                arrays["pair_joints_a"], arrays["pair_joints_b"], encode_codes(pose_tokenizer, arrays["pair_a"]),
                encode_codes(pose_tokenizer, arrays["pair_b"]), pair_texts, pair_facts_b, arrays["images"],
                arrays["image_joints_2d"], arrays["image_joints_m"], arrays["image_of_pose"],
                arrays["image_of_pair_a"], arrays["image_of_pair_b"], tuple(archetypes), mix)


def load_or_build_pool(directory: Path, seed: int, sizes: PoolSizes, pose_tokenizer: torch.nn.Module,
                       archetypes: tuple[str, ...] = ARCHETYPE_NAMES, mix: Mapping[str, float] | None = None) -> Pool:
    """The pool cached as `directory/pool-seed{seed}.npz` (rebuilt when absent, damaged, or of other sizes).

    A cache written by earlier versions (`pool-seed{seed}.pkl`, a pickle) is never opened: unpickling a file
    under a user-chosen directory could run code. It is left in place and named in the log."""
    legacy = Path(directory) / f"pool-seed{seed}.pkl"
    if legacy.is_file():
        log.warning("ignoring the old pickled pool cache %s (pickles are not loaded); you may delete it", legacy)
    path = cache_path(directory, seed)
    pool = read_pool(path, seed, sizes, pose_tokenizer, archetypes, mix)
    if pool is None:
        pool = build_pool(seed, sizes, pose_tokenizer, archetypes, mix)
        save_pool(pool, path)
    return pool
