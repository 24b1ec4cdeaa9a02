"""Train a model's text-pose matcher (models/pose_matcher.py) and give its Generator candidate decodings.

    python -m unipose_sdk.training.matcher --model CANDIDATE_DIR --out NEW_CANDIDATE_DIR
        [--poses 60000] [--seed 1] [--steps 3000] [--candidates 1:0.7,1:1,1:1.3,2:0.7,2:1,2:1.3,3:0.7,3:1,3:1.3]
        [--work DIR] [--threads N]

Data. Poses drawn as training pools draw them (`data.poses.sample_poses` with the training postures and mix; the
seed picks a stream no evaluation pool uses), each with one captioner caption and one everyday phrasing
(`data.everyday`, a second caption when no everyday rule fits). Every pose also enters mirrored left to right,
paired with its texts with "left" and "right" swapped: a pose and its mirror image are the pairs a sentence
embedding separates least. The texts are embedded once by the model's own frozen sentence encoder (as it ships:
its int8 rows), and the pairs are cached under `--work` so a second training reads them back.

Training. Symmetric InfoNCE over batches of 1024 texts and their poses (a pose drawn twice in a batch is a
positive of both of its texts), AdamW with a one-cycle schedule; 3% of the poses are held out and the log reports
their text-to-pose retrieval accuracy among 2,000.

Output. A copy of the model directory with the matcher's weights (`pose_matcher.*`) and, in its config, the
candidate decodings (`text_to_pose_candidates`, pairs of pose guidance and code temperature) its Generator chooses
among; `training.json` gains a "pose_matcher" record. Choose the candidates on validation data
(`python -m unipose_sdk.evaluation.decoding --model NEW_CANDIDATE_DIR --candidates ...`), then evaluate and
install the candidate like any other (`training.ship`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unipose_sdk.body.skeleton import JOINT_NAMES
from unipose_sdk.checkpoint.sdk_format import LoadedModel, load_model
from unipose_sdk.errors import InvalidInputError, UniPoseError
from unipose_sdk.fileio import atomic_write, signals_raise
from unipose_sdk.models.config import PoseMatcherConfig, check_pose_candidates
from unipose_sdk.models.pose_matcher import PoseMatcher, joint_features
from unipose_sdk.training.pipeline import MATCHER_RECORD
from unipose_sdk.training.pools import EVAL_SEED_OFFSET
from unipose_sdk.training.ship import save_changed_copy

log = logging.getLogger("unipose_sdk.training")

DEFAULT_CANDIDATES = tuple((w, t) for w in (1.0, 2.0, 3.0) for t in (0.7, 1.0, 1.3))
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
_SIDE_WORD = re.compile(r"\b(left|right|Left|Right)\b")
# Joint i of a mirrored pose is joint MIRROR_JOINTS[i] of the original, reflected in x.
MIRROR_JOINTS = [JOINT_NAMES.index(n.replace("left_", "\0").replace("right_", "left_").replace("\0", "right_"))
                 for n in JOINT_NAMES]


def swap_sides(text: str) -> str:
    """The text of the mirror-image pose: every "left" and "right" exchanged."""
    return _SIDE_WORD.sub(lambda m: _SWAP[m.group(1)], text)


def mirrored_joints(joints_m: np.ndarray) -> np.ndarray:
    """[N, 22, 3] joints -> the mirror images (x negated, left and right joints exchanged)."""
    mirrored = joints_m[:, MIRROR_JOINTS].copy()
    mirrored[..., 0] *= -1
    return mirrored


def pose_text_pairs(num_poses: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(joints [N, 22, 3], texts, owner [T]: the pose of each text) for `num_poses` fresh poses, two texts each."""
    from unipose_sdk.data.archetypes import TRAINING_ARCHETYPE_NAMES
    from unipose_sdk.data.captions import caption
    from unipose_sdk.data.everyday import everyday_caption
    from unipose_sdk.data.facts import facts_for_poses
    from unipose_sdk.data.poses import TRAINING_MIX, joints_and_rotations, sample_poses

    if not 0 < seed < EVAL_SEED_OFFSET:
        raise InvalidInputError.make(f"seed={seed}", f"an integer in [1, {EVAL_SEED_OFFSET})",
                                     "Evaluation pools draw from seeds offset by EVAL_SEED_OFFSET; pick a small one.")
    rng = np.random.default_rng([seed, 7])  # a stream of its own: no training pool draws from [seed, 7]
    axis_angle, _ = sample_poses(num_poses, rng, mix=TRAINING_MIX, archetypes=tuple(TRAINING_ARCHETYPE_NAMES))
    joints, _ = joints_and_rotations(axis_angle)
    facts = facts_for_poses(axis_angle)
    texts, owner = [], []
    for i in range(num_poses):
        for text in (caption(facts[i], rng), everyday_caption(facts[i], rng, joints_m=joints[i])
                     or caption(facts[i], rng)):
            if text:
                texts.append(text)
                owner.append(i)
    return joints.astype(np.float32), texts, np.asarray(owner, dtype=np.int64)


def embed_texts(embed: Callable[[list[str]], torch.Tensor], texts: Sequence[str], chunk: int = 256) -> np.ndarray:
    """[T, H] float16 sentence embeddings, computed in chunks of texts of similar length (less padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(texts), chunk):
        rows = order[start:start + chunk]
        with torch.inference_mode():
            vectors = embed([texts[i] for i in rows]).float().numpy()
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), np.float16)
        out[rows] = vectors
    assert out is not None
    return out


def build_data(model: Any, sentence_tokenizer: Any, num_poses: int, seed: int) -> dict[str, np.ndarray]:
    """The training pairs, both the poses as drawn and their mirror images: joints [2N, 22, 3], text embeddings
    [2T, H] (float16) and owner [2T] (index into joints)."""
    start = time.perf_counter()
    joints, texts, owner = pose_text_pairs(num_poses, seed)
    log.info("matcher data: %d poses, %d texts in %.0f s", len(joints), len(texts), time.perf_counter() - start)

    def embed(batch: list[str]) -> torch.Tensor:
        ids, mask = sentence_tokenizer(batch)
        return model.text_encoder.sentence_embedding(ids, mask)

    start = time.perf_counter()
    text_emb = embed_texts(embed, texts)
    mirror_emb = embed_texts(embed, [swap_sides(t) for t in texts])
    log.info("matcher data: %d texts embedded in %.0f s", 2 * len(texts), time.perf_counter() - start)
    return {"joints_m": np.concatenate([joints, mirrored_joints(joints)]),
            "text_emb": np.concatenate([text_emb, mirror_emb]),
            "owner": np.concatenate([owner, owner + len(joints)])}


def train_matcher(data: dict[str, np.ndarray], config: PoseMatcherConfig, steps: int = 3000, batch_size: int = 1024,
                  lr: float = 1e-3, seed: int = 0) -> tuple[PoseMatcher, dict[str, Any]]:
    """A PoseMatcher trained on `data` (`build_data`), and a record of the run (steps, seconds, held-out top-1)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    joints = torch.from_numpy(data["joints_m"]).float()
    texts = torch.from_numpy(data["text_emb"].astype(np.float32))
    owner = torch.from_numpy(data["owner"]).long()
    features = joint_features(joints)
    matcher = PoseMatcher(config)
    matcher.feature_mean.copy_(features.mean(0))
    matcher.feature_std.copy_(features.std(0) + 1e-3)
    held_out = torch.rand(len(joints), generator=gen) < 0.03
    train_rows = torch.nonzero(~held_out[owner]).squeeze(1)
    check_rows = torch.nonzero(held_out[owner]).squeeze(1)[:2000]
    optimizer = torch.optim.AdamW(matcher.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    normalized = (features - matcher.feature_mean) / matcher.feature_std

    def embeddings(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        poses = F.normalize(matcher.pose(normalized[owner[rows]]), dim=-1)
        return poses, matcher.text_embedding(texts[rows])

    def held_out_top1() -> float:
        with torch.no_grad():
            poses, words = embeddings(check_rows)
            return float(((words @ poses.T).argmax(1) == torch.arange(len(check_rows))).float().mean())

    start, loss = time.perf_counter(), torch.tensor(0.0)
    matcher.train()
    for step in range(steps):
        rows = train_rows[torch.randint(len(train_rows), (batch_size,), generator=gen)]
        poses, words = embeddings(rows)
        logits = matcher.logit_scale.exp().clamp(max=100.0) * words @ poses.T
        pose_of = owner[rows]
        same = (pose_of[:, None] == pose_of[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        text_to_pose = (target * logits.log_softmax(1)).sum(1).mean()
        pose_to_text = (target * logits.T.log_softmax(1)).sum(1).mean()
        loss = -0.5 * (text_to_pose + pose_to_text)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0:
            log.info("matcher step %d: loss %.3f, held-out top-1 %.3f", step, loss.item(), held_out_top1())
    matcher.eval()
    record = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "seconds": round(time.perf_counter() - start, 1), "final_loss": round(float(loss), 4),
              "held_out_top1_of_2000": round(held_out_top1(), 4), "pairs": int(len(owner)),
              "poses": int(len(joints))}
    return matcher, record


def attach(model_dir: Path, out: Path, matcher: PoseMatcher, candidates: Sequence[tuple[float, float]],
           record: dict[str, Any]) -> Path:
    """A copy of the model at `model_dir` with `matcher` and its candidate decodings, written to `out`."""
    def add_matcher(loaded: LoadedModel) -> None:
        loaded.model.config = dataclasses.replace(loaded.model.config, pose_matcher=matcher.config,
                                                  text_to_pose_candidates=tuple(candidates))
        loaded.model.pose_matcher = matcher

    return save_changed_copy(model_dir, out, add_matcher, {MATCHER_RECORD: record})


def candidates_flag(text: str) -> tuple[tuple[float, float], ...]:
    try:
        pairs = [tuple(float(x) for x in part.split(":")) for part in text.split(",")]
        return check_pose_candidates(pairs)
    except (ValueError, InvalidInputError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected GUIDANCE:TEMPERATURE pairs separated by commas, "
                                         f"e.g. 1:0.7,2:1 ({exc})") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model directory to add a matcher to")
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the model with its matcher")
    parser.add_argument("--poses", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--candidates", type=candidates_flag, default=DEFAULT_CANDIDATES, metavar="W:T,W:T,...")
    parser.add_argument("--work", type=Path, default=None, help="cache the embedded pairs here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.out.exists():
            raise InvalidInputError.make(f"--out {str(args.out)!r}, which exists", "a new directory",
                                         "Choose another --out, or remove the old one.")
        if args.poses < 100 or args.steps < 1:
            raise InvalidInputError.make(f"--poses {args.poses} --steps {args.steps}", "at least 100 poses, 1 step",
                                         "The shipped matcher used --poses 60000 --steps 3000.")
        loaded = load_model(args.model)
        if loaded.model.text_encoder is None or loaded.sentence_tokenizer is None:
            raise InvalidInputError.make(f"model {str(args.model)!r} without a sentence encoder",
                                         "a model with one (unipose-tiny v2): the matcher reads its embeddings",
                                         "Add a sentence encoder first (unipose train --text-encoder-from ...).")
        cache = None if args.work is None else args.work / f"matcher-pairs-seed{args.seed}-{args.poses}.npz"
        if cache is not None and cache.is_file():
            with np.load(cache, allow_pickle=False) as stored:
                data = {name: stored[name] for name in ("joints_m", "text_emb", "owner")}
        else:
            data = build_data(loaded.model, loaded.sentence_tokenizer, args.poses, args.seed)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with signals_raise():  # a SIGTERM mid-write leaves no partial cache behind
                    atomic_write(cache, lambda handle: np.savez(handle, **data))
        config = PoseMatcherConfig(text_size=loaded.model.config.text_encoder.hidden_size)
        matcher, record = train_matcher(data, config, steps=args.steps, seed=args.seed)
        record.update({"data_seed": args.seed, "num_poses_drawn": args.poses})
        with signals_raise():  # save_model renames a finished directory into place and removes a partial one
            attach(args.model, args.out, matcher, args.candidates, record)
    except UniPoseError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
