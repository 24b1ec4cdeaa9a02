"""Many threads on one model give the results one thread gives, and a request's answer does not depend on the
batch it is padded into. Kept under ~20 s on a 2-core CPU."""

from __future__ import annotations

import threading

import numpy as np
import torch
from conftest import SHORT

from unipose_sdk.body.examples import load_example_pose
from unipose_sdk.tasks import Describer, Editor, Estimator, Generator

THREADS = 8
CALLS = 60
TEXTS = ["a person squatting", "a person kneeling on the left knee with the right arm raised high above the head",
         "a person with both arms raised", "a person bending forward to touch the toes", "a person sitting",
         "a person standing on one leg", "a person lunging forward", "a person stretching"]


def _run_threads(work, count: int = THREADS) -> list:  # type: ignore[no-untyped-def]
    results: list = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors
    return results


def test_eight_threads_times_n_calls_equal_one_thread(generator) -> None:
    expected = {text: generator.generate(text).pose_codes for text in TEXTS}
    got = _run_threads(lambda i: [(TEXTS[(i + k) % len(TEXTS)], generator.generate(TEXTS[(i + k) % len(TEXTS)])
                                   .pose_codes) for k in range(CALLS)])
    assert sum(len(r) for r in got) == THREADS * CALLS
    for per_thread in got:
        for text, codes in per_thread:
            assert codes == expected[text], text


def test_threads_with_their_own_task_objects_and_thread_counts(generator) -> None:
    expected = {text: generator.generate(text).pose_codes for text in TEXTS[:4]}
    before = torch.get_num_threads()

    def work(i: int) -> list[list[int]]:
        with Generator.from_pretrained(num_threads=1 + i % 2, **SHORT) as own:
            return [own.generate(TEXTS[(i + k) % 4]).pose_codes for k in range(4)]

    got = _run_threads(work)
    for i, per_thread in enumerate(got):
        assert per_thread == [expected[TEXTS[(i + k) % 4]] for k in range(4)]
    assert torch.get_num_threads() == before  # per-call thread counts are undone


def test_mixed_tasks_from_threads_share_one_model_safely() -> None:
    pose = load_example_pose("squatting")
    image = (np.random.default_rng(1).random((64, 48, 3)) * 255).astype(np.uint8)
    editor, describer, estimator = (Editor.from_pretrained(**SHORT), Describer.from_pretrained(**SHORT),
                                    Estimator.from_pretrained(**SHORT))
    jobs = [lambda: editor.edit(pose, "raise your left arm").pose_codes,
            lambda: describer.describe(pose=pose).text,
            lambda: estimator.estimate(image).pose_codes,
            lambda: describer.describe(image=image).text]
    expected = [job() for job in jobs]
    got = _run_threads(lambda i: [jobs[(i + k) % 4]() for k in range(4)])
    for i, per_thread in enumerate(got):
        assert per_thread == [expected[(i + k) % 4] for k in range(4)]


def test_alone_equals_padded_batch(generator) -> None:
    alone = [generator.generate(text).pose_codes for text in TEXTS]
    batched = [r.pose_codes for r in generator.generate(TEXTS)]  # prompts of different lengths: padded
    assert batched == alone
    pairs = [r.pose_codes for r in generator.generate([TEXTS[1], TEXTS[0]])]
    assert pairs == [alone[1], alone[0]]


def test_alone_equals_padded_batch_for_edit_describe_and_estimate() -> None:
    poses = [load_example_pose(name) for name in ("squatting", "sitting", "walking_stride")]
    instructions = ["raise your left arm", "bend both knees a lot more than before", "turn"]
    editor, describer, estimator = (Editor.from_pretrained(**SHORT), Describer.from_pretrained(**SHORT),
                                    Estimator.from_pretrained(**SHORT))
    alone = [editor.edit(p, t).pose_codes for p, t in zip(poses, instructions)]
    assert [r.pose_codes for r in editor.edit(poses, instructions)] == alone
    texts = [describer.describe(pose=p).text for p in poses]
    assert [r.text for r in describer.describe(pose=poses)] == texts
    rng = np.random.default_rng(3)
    images = [(rng.random(shape) * 255).astype(np.uint8) for shape in ((64, 48, 3), (40, 90, 3), (32, 32, 3))]
    assert [r.pose_codes for r in estimator.estimate(images)] == [estimator.estimate(i).pose_codes for i in images]
