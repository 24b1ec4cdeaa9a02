"""Build the embedded unipose-tiny text tokenizer from the data engine's own language.

The tiny model only ever reads and writes the captions, edit instructions and task prompts this project
generates, so its BPE vocabulary is trained on exactly that text (plus the seven task templates), with
Mistral's specials and byte fallback so that any user text still encodes.

    python -m unipose_sdk.training.text_tokenizer --out unipose_sdk/assets/unipose-tiny --seed 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from unipose_sdk.models.config import get_preset
from unipose_sdk.text.prompts import TASK_TEMPLATES, chat_prompt
from unipose_sdk.text.tokenizer import TextTokenizer, build_tiny_tokenizer


def corpus(num_poses: int, num_pairs: int, seed: int) -> list[str]:
    from unipose_sdk.data.captions import caption
    from unipose_sdk.data.facts import facts_for_poses
    from unipose_sdk.data.pairs import describe_pair, sample_pairs
    from unipose_sdk.data.poses import joints_and_rotations, sample_poses

    rng = np.random.default_rng(seed)
    texts = [chat_prompt(user) for user, _ in TASK_TEMPLATES.values()]
    texts += [answer for _, answer in TASK_TEMPLATES.values()]
    axis_angle, _ = sample_poses(num_poses, rng)
    texts += [caption(facts, rng) for facts in facts_for_poses(axis_angle)]
    pose_a, pose_b, _ = sample_pairs(num_pairs, rng)
    joints_a, rot_a = joints_and_rotations(pose_a)
    joints_b, rot_b = joints_and_rotations(pose_b)
    for i in range(num_pairs):
        text, _ = describe_pair(joints_a[i], joints_b[i], rng, rot_a[i], rot_b[i])
        if text:
            texts.append(text)
    return texts


def build(out_dir: Path, seed: int, num_poses: int = 3000, num_pairs: int = 1500) -> TextTokenizer:
    vocab = get_preset("unipose-tiny").vocab
    tokenizer = build_tiny_tokenizer(corpus(num_poses, num_pairs, seed), vocab.text_vocab_size, vocab)
    tokenizer.save(out_dir)
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tokenizer = build(args.out, args.seed)
    print(f"wrote {args.out} ({tokenizer.vocab_size} ids) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
