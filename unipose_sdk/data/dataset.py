"""Write the synthetic training set for all seven UniPose tasks: poses, pairs, renders, captions, records.

Layout of `make_dataset(out_dir, ...)` (everything below out_dir; nothing is written at out_dir until the end):
  manifest.json                 sizes, seed, versions, views, per-task record counts, timing
  {split}/poses-{k:05d}.npz     axis_angle [c, 66], joints_m [c, 22, 3], clip_images [c, 112, 112, 3] uint8,
                                pose_images [c, 128, 96, 3] uint8, clip_joints_2d / pose_joints_2d [c, 22, 2],
                                clip_visible / pose_visible [c, 22]
  {split}/pairs-{k:05d}.npz     a_axis_angle, b_axis_angle, a_/b_ clip_images, pose_images, joints_2d, visible
  {split}/poses.jsonl           per pose: id, ref, archetype label, all facts, captions with the facts they state
  {split}/pairs.jsonl           per pair: id, refs, edited regions, instruction texts with their pair facts
  {split}/tasks/{task}.jsonl    one record per training example: task, prompt (the reference template), inputs
                                (refs to rows of the npz shards, or text), target (text, or a pose ref), facts
A ref is {"file": "poses-00000.npz", "row": 17, "array": "axis_angle"} (images: "arrays" for both views).

Deterministic given the seed: every chunk of 256 items draws from its own Generator seeded with
(seed, split, chunk), so the files are byte-identical whatever the number of worker processes; npz shards are
written with fixed zip timestamps. Atomic: the set is built in a sibling temporary directory that is renamed to
out_dir only after the manifest is written, and removed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unipose_sdk.data.captions import compose_caption
from unipose_sdk.data.facts import FACT_KINDS, extract_facts, facts_to_json
from unipose_sdk.data.pairs import describe_pair, sample_pairs
from unipose_sdk.data.poses import joints_and_rotations, sample_poses
from unipose_sdk.data.render import DEFAULT_VIEWS, random_scene, render_views
from unipose_sdk.errors import InvalidInputError

DATA_ENGINE_VERSION = "1"
CHUNK = 256
SPLITS = ("train", "val", "test")
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"train": 24, "val": 8, "test": 8},
    "small": {"train": 4000, "val": 400, "test": 400},
    "medium": {"train": 40000, "val": 2000, "test": 2000},
}
CAPTIONS_PER_POSE = 2
PROMPTS = {  # the pretraining phrasings of the released model's training code
    "pose_estimation": "Generate pose of the image: <image>.",
    "image_description": "Generate description of the pose in the image: <image>.",
    "image_difference": "Output the difference between image <image> and <image>.",
    "text_to_pose": "Generate pose of the description: <caption>.",
    "pose_description": "Generate description of the pose <pose>.",
    "pose_difference": "Output the difference between pose <poseA> and pose <poseB>.",
    "pose_editing": "Edit pose <poseA> by description: <caption>.",
}


def resolve_size(size: str | int) -> dict[str, int]:
    """'tiny' | 'small' | 'medium' | N (N training poses, N/10 for val and test) -> poses per split."""
    if isinstance(size, str) and size in SIZES:
        return dict(SIZES[size])
    try:
        n = int(size)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise InvalidInputError.make(f"size {size!r}", f"one of {sorted(SIZES)} or a positive integer",
                                     "Pass --size small, --size medium, or a number of training poses.")
    return {"train": n, "val": max(n // 10, 1), "test": max(n // 10, 1)}


# -------------------------------------------------------------------------------------------- npz writing
def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed (fast zlib level 1: flat backgrounds shrink ~3x), but byte-identical for
    identical arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


# -------------------------------------------------------------------------------------------- work units
def _chunk_rng(seed: int, split: str, kind: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), ("poses", "pairs").index(kind),
                                                         chunk]))


def _render_batch(joints: np.ndarray, rng: np.random.Generator, scenes: list | None = None) -> dict[str, np.ndarray]:
    views = [render_views(j, rng, scene=None if scenes is None else scenes[i]) for i, j in enumerate(joints)]
    out = {}
    for name in DEFAULT_VIEWS:
        out[f"{name}_images"] = np.stack([v[name]["image"] for v in views])
        out[f"{name}_joints_2d"] = np.stack([v[name]["joints_2d"] for v in views]).astype(np.float32)
        out[f"{name}_visible"] = np.stack([v[name]["visible"] for v in views])
    return out


def _pose_unit(seed: int, split: str, chunk: int, count: int) -> tuple[dict, list[dict]]:
    rng = _chunk_rng(seed, split, "poses", chunk)
    axis_angle, labels = sample_poses(count, rng, global_orient="random")
    joints, rots = joints_and_rotations(axis_angle)
    arrays = {"axis_angle": axis_angle, "joints_m": joints.astype(np.float32), **_render_batch(joints, rng)}
    rows = []
    for i in range(count):
        facts = extract_facts(joints[i], rots[i])
        captions = []
        for _ in range(CAPTIONS_PER_POSE):
            text, stated = compose_caption(facts, rng)
            captions.append({"text": text, "facts": [list(f.key) for f in stated]})
        rows.append({"archetype": labels[i], "facts": facts_to_json(facts), "captions": captions})
    return arrays, rows


def _pair_unit(seed: int, split: str, chunk: int, count: int) -> tuple[dict, list[dict]]:
    rng = _chunk_rng(seed, split, "pairs", chunk)
    a, b, regions = sample_pairs(count, rng, global_orient="random")
    ja, ra = joints_and_rotations(a)
    jb, rb = joints_and_rotations(b)
    scenes = [random_scene(rng) for _ in range(count)]  # A and B share person, camera and background
    arrays = {"a_axis_angle": a, "b_axis_angle": b}
    arrays.update({f"a_{k}": v for k, v in _render_batch(ja, rng, scenes).items()})
    arrays.update({f"b_{k}": v for k, v in _render_batch(jb, rng, scenes).items()})
    rows = []
    for i in range(count):
        texts = []
        for _ in range(CAPTIONS_PER_POSE):
            text, stated = describe_pair(ja[i], jb[i], rng, ra[i], rb[i])
            texts.append({"text": text, "facts": [list(f.key) for f in stated]})
        rows.append({"regions": regions[i], "instructions": texts})
    return arrays, rows


def _run_unit(unit: tuple[str, int, str, int, int]) -> tuple[dict, list[dict]]:
    kind, seed, split, chunk, count = unit
    return (_pose_unit if kind == "poses" else _pair_unit)(seed, split, chunk, count)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


# -------------------------------------------------------------------------------------------- records
def _ref(file: str, row: int, array: str) -> dict[str, Any]:
    return {"file": file, "row": row, "array": array}


def _image_ref(file: str, row: int, prefix: str = "") -> dict[str, Any]:
    return {"file": file, "row": row, "arrays": {v: f"{prefix}{v}_images" for v in DEFAULT_VIEWS}}


def _pose_records(split: str, index: int, file: str, row: int, meta: dict) -> Iterator[tuple[str, dict]]:
    pid = f"{split}/pose/{index:07d}"
    pose, image = _ref(file, row, "axis_angle"), _image_ref(file, row)
    yield "pose_estimation", {"inputs": {"image": image}, "target": {"pose": pose}, "source": pid}
    for k, cap in enumerate(meta["captions"]):
        common = {"facts": cap["facts"], "source": pid, "variant": k}
        yield "image_description", {"inputs": {"image": image}, "target": {"text": cap["text"]}, **common}
        yield "pose_description", {"inputs": {"pose": pose}, "target": {"text": cap["text"]}, **common}
        yield "text_to_pose", {"inputs": {"text": cap["text"]}, "target": {"pose": pose}, **common}


def _pair_records(split: str, index: int, file: str, row: int, meta: dict) -> Iterator[tuple[str, dict]]:
    pid = f"{split}/pair/{index:07d}"
    pose_a, pose_b = _ref(file, row, "a_axis_angle"), _ref(file, row, "b_axis_angle")
    images = [_image_ref(file, row, "a_"), _image_ref(file, row, "b_")]
    for k, ins in enumerate(meta["instructions"]):
        common = {"facts": ins["facts"], "source": pid, "variant": k}
        yield "image_difference", {"inputs": {"images": images}, "target": {"text": ins["text"]}, **common}
        yield "pose_difference", {"inputs": {"poses": [pose_a, pose_b]}, "target": {"text": ins["text"]}, **common}
        yield "pose_editing", {"inputs": {"pose": pose_a, "text": ins["text"]}, "target": {"pose": pose_b}, **common}


def _dump(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


# -------------------------------------------------------------------------------------------- driver
def make_dataset(
    out_dir: str | Path, seed: int = 0, size: str | int = "small", workers: int = 1, progress: bool = True,
    overwrite: bool = False, pairs_per_pose: float = 0.5,
) -> dict[str, Any]:
    """Generate the dataset into out_dir (see the module docstring). Returns the manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InvalidInputError.make(f"output directory {str(out_dir)!r} that is not empty", "a new or empty directory",
                                     "Choose another -o, or pass --overwrite to replace it.")
    poses_per_split = resolve_size(size)
    pairs_per_split = {s: max(round(n * pairs_per_pose), 1) for s, n in poses_per_split.items()}
    units = []
    for split in SPLITS:
        for kind, total in (("poses", poses_per_split[split]), ("pairs", pairs_per_split[split])):
            for chunk, start in enumerate(range(0, total, CHUNK)):
                units.append((kind, int(seed), split, chunk, min(CHUNK, total - start)))

    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    try:
        counts = _write_all(tmp, units, workers, progress)
        elapsed_s = time.perf_counter() - started
        manifest = _manifest(seed, size, poses_per_split, pairs_per_split, counts, elapsed_s, workers)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_all(tmp: Path, units: list, workers: int, progress: bool) -> dict[str, dict[str, int]]:
    from tqdm import tqdm

    for split in SPLITS:
        (tmp / split / "tasks").mkdir(parents=True, exist_ok=True)
    handles = {}
    counts: dict[str, dict[str, int]] = {s: {t: 0 for t in PROMPTS} for s in SPLITS}
    next_index = {(s, k): 0 for s in SPLITS for k in ("poses", "pairs")}

    def open_jsonl(split: str, name: str):
        key = (split, name)
        if key not in handles:
            path = tmp / split / (f"tasks/{name}.jsonl" if name in PROMPTS else f"{name}.jsonl")
            handles[key] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
        return handles[key]

    pool = None
    results: Iterator | Callable
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)
        results = pool.imap(_run_unit, units)
    else:
        results = map(_run_unit, units)
    bar = tqdm(total=sum(u[4] for u in units), unit="item", disable=not progress, desc="unipose data")
    try:
        for (kind, _seed, split, chunk, count), (arrays, rows) in zip(units, results):
            file = f"{kind}-{chunk:05d}.npz"
            save_npz_deterministic(tmp / split / file, arrays)
            meta_out = open_jsonl(split, kind)
            for row, meta in enumerate(rows):
                index = next_index[(split, kind)]
                next_index[(split, kind)] += 1
                item_id = f"{split}/{kind[:-1]}/{index:07d}"
                meta_out.write(_dump({"id": item_id, "file": file, "row": row, **meta}) + "\n")
                make = _pose_records if kind == "poses" else _pair_records
                for task, record in make(split, index, file, row, meta):
                    n = counts[split][task]
                    counts[split][task] += 1
                    record = {"id": f"{split}/{task}/{n:07d}", "task": task, "prompt": PROMPTS[task], **record}
                    open_jsonl(split, task).write(_dump(record) + "\n")
            bar.update(count)
    finally:
        bar.close()
        for handle in handles.values():
            handle.close()
        if pool is not None:
            pool.terminate()
    return counts


def _manifest(seed, size, poses, pairs, counts, elapsed_s, workers) -> dict[str, Any]:
    import importlib.metadata

    from unipose_sdk._version import __version__

    items = sum(poses.values()) + sum(pairs.values())
    images = 2 * sum(poses.values()) + 4 * sum(pairs.values())  # both views; A and B for pairs
    return {
        "format": "unipose-sdk synthetic dataset",
        "data_engine_version": DATA_ENGINE_VERSION,
        "seed": int(seed),
        "size": str(size),
        "splits": {s: {"poses": poses[s], "pairs": pairs[s], "records": counts[s]} for s in SPLITS},
        "tasks": PROMPTS,
        "views": {k: {"height": h, "width": w} for k, (h, w) in DEFAULT_VIEWS.items()},
        "captions_per_item": CAPTIONS_PER_POSE,
        "fact_kinds": list(FACT_KINDS),
        "versions": {"unipose-sdk": __version__, "numpy": np.__version__,
                     "torch": importlib.metadata.version("torch")},
        "timing": {"seconds": round(elapsed_s, 3), "workers": workers,
                   "items_per_second": round(items / max(elapsed_s, 1e-9), 2),
                   "images_per_second": round(images / max(elapsed_s, 1e-9), 2)},
    }
