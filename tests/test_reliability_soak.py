"""Soak-lite: the four tasks and result saving in a loop of about ten seconds. The answers never drift from the
first round's, the resident memory settles (a leak of one model copy, or of every result, per call would exceed
the bound within the loop), and the output directory holds exactly the saved sets. The longer soak, with its
figures, is benchmarks/soak.py."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipose_sdk.body.examples import example_pose_path
from unipose_sdk.results import RESULT_SUFFIXES
from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

SHORT = {"max_new_tokens": 6}
BUDGET_S = 10.0
MIN_ROUNDS = 8
# Growth allowed between the end of the warm-up and the end of the loop. The allocator keeps some memory it has
# handed out (a few MB on this model); a copy of the tiny model's weights per round would add ~12 MB each.
MAX_GROWTH_MB = 48.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads RSS from /proc")


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_tasks_in_a_loop_keep_their_answers_and_memory(tmp_path) -> None:
    image = Image.fromarray((np.random.default_rng(0).random((96, 64, 3)) * 255).astype(np.uint8))
    pose = str(example_pose_path("squatting"))
    with Generator.from_pretrained(**SHORT) as generator, Editor.from_pretrained(**SHORT) as editor, \
            Estimator.from_pretrained(**SHORT) as estimator, Describer.from_pretrained(**SHORT) as describer:

        def one_round(index: int) -> dict[str, object]:
            results = {"generate": generator.generate("a person squatting with both arms raised"),
                       "edit": editor.edit(pose, "raise your left arm"),
                       "estimate": estimator.estimate(image),
                       "describe": describer.describe(pose=pose)}
            for task, result in results.items():
                result.save(tmp_path, stem=f"{task}_{index:03d}")
            return {task: (getattr(r, "pose_codes", None), r.text) for task, r in results.items()}

        first = one_round(0)
        one_round(1)  # warm-up: caches, lazily built buffers, matplotlib
        gc.collect()
        start_mb = _rss_mb()
        rounds, started = 2, time.monotonic()
        while rounds < MIN_ROUNDS or time.monotonic() - started < BUDGET_S:
            assert one_round(rounds) == first, f"round {rounds} answered differently"
            rounds += 1
        gc.collect()
        growth_mb = _rss_mb() - start_mb
    assert growth_mb < MAX_GROWTH_MB, f"RSS grew {growth_mb:.1f} MB over {rounds - 2} rounds"
    names = sorted(p.name for p in tmp_path.iterdir())
    pose_sets = [f"{t}_{i:03d}{s}" for t in ("generate", "edit", "estimate") for i in range(rounds)
                 for s in RESULT_SUFFIXES]
    assert names == sorted(pose_sets + [f"describe_{i:03d}.json" for i in range(rounds)])
