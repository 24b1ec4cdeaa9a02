"""Evaluation metric functions on inputs with known answers, and the report writers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from unipose_sdk.data.captions import compose_caption
from unipose_sdk.data.facts import Fact
from unipose_sdk.data.pairs import describe_pair, pair_facts, sample_pairs
from unipose_sdk.data.poses import joints_and_rotations, sample_poses
from unipose_sdk.evaluation import metrics as M
from unipose_sdk.evaluation.runner import to_markdown, write_report
from unipose_sdk.tasks.generator import Generator


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def poses() -> tuple[np.ndarray, np.ndarray]:
    axis_angle, _ = sample_poses(6, 11)
    return axis_angle, M.joints_of(axis_angle)


def test_mpjpe_is_zero_for_the_truth_and_ignores_the_pelvis_position(poses) -> None:  # type: ignore[no-untyped-def]
    _, joints = poses
    assert np.allclose(M.mpjpe_mm(joints, joints), 0.0)
    assert np.allclose(M.mpjpe_mm(joints + np.array([0.3, -1.0, 2.0]), joints), 0.0, atol=1e-4)


def test_mpjpe_of_one_moved_joint(poses) -> None:  # type: ignore[no-untyped-def]
    _, joints = poses
    moved = joints.copy()
    moved[:, 5, 0] += 0.022  # 22 mm on one of 22 joints -> 1 mm mean
    assert np.allclose(M.mpjpe_mm(moved, joints), 1.0, atol=1e-3)


def test_pa_mpjpe_removes_scale_rotation_and_translation_but_mpjpe_does_not(poses) -> None:  # type: ignore[no-untyped-def]
    _, joints = poses
    transformed = 1.3 * joints @ _rotation_z(0.7).T + np.array([0.5, 0.1, -0.2])
    assert np.allclose(M.pa_mpjpe_mm(transformed, joints), 0.0, atol=1e-3)
    assert (M.mpjpe_mm(transformed, joints) > 50).all()


def test_procrustes_fit_is_least_squares(poses) -> None:  # type: ignore[no-untyped-def]
    _, joints = poses
    other = joints[::-1].copy()
    aligned = M.procrustes_align(other, joints)
    pelvis_aligned = other - other[:, :1] + joints[:, :1]
    sq = lambda a: ((a - joints) ** 2).sum(axis=(1, 2))  # noqa: E731
    assert (sq(aligned) <= sq(pelvis_aligned) + 1e-9).all()
    assert (sq(aligned) <= sq(1.1 * aligned - 0.1 * joints.mean(axis=1, keepdims=True)) + 1e-9).all()


def test_fact_holds_fraction() -> None:
    truth = [Fact("knee_bend", "left", math.nan, "bent"), Fact("sit", "body", math.nan, "sitting")]
    stated = [Fact("knee_bend", "left", math.nan, "bent"), Fact("knee_bend", "right", math.nan, "straight")]
    assert M.fact_holds_fraction(stated, truth) == 0.5
    assert M.fact_holds_fraction(truth, truth) == 1.0
    assert math.isnan(M.fact_holds_fraction([], truth))


def test_a_true_caption_scores_full_precision_and_recall(poses) -> None:  # type: ignore[no-untyped-def]
    axis_angle, _ = poses
    facts = M.facts_of(axis_angle)
    rng = np.random.default_rng(0)
    for pose_facts in facts:
        text, stated = compose_caption(pose_facts, rng)
        scores = M.description_scores(text, pose_facts, stated)
        assert scores["precision"] == 1.0 and scores["recall"] == 1.0
    # another pose's caption is not all true of this pose, and recalls less
    text, stated = compose_caption(facts[1], rng, max_facts=8)
    assert M.description_scores(text, facts[0], compose_caption(facts[0], rng)[1])["recall"] < 1.0


def test_pair_and_edit_scores_on_the_true_pair() -> None:
    rng = np.random.default_rng(4)
    pose_a, pose_b, _ = sample_pairs(4, 5)
    joints_a, rot_a = joints_and_rotations(pose_a)
    joints_b, rot_b = joints_and_rotations(pose_b)
    facts_b = M.facts_of(pose_b)
    facts_a = M.facts_of(pose_a)
    for i in range(4):
        text, stated = describe_pair(joints_a[i], joints_b[i], rng, rot_a[i], rot_b[i])
        if not text:
            continue
        truth = pair_facts(joints_a[i], joints_b[i], rot_a[i], rot_b[i])
        scores = M.pair_scores(text, truth, stated)
        assert scores["recall"] == 1.0 and scores["precision"] >= 0.5
        level_changes = [f for f in stated if f.kind not in M.MOVE_KINDS]
        if level_changes:
            assert M.edit_holds_fraction(stated, facts_b[i]) == 1.0  # B has what the instruction asks
            assert M.edit_holds_fraction(stated, facts_a[i]) < 1.0  # A does not (it is a change)
    assert M.pair_scores("", [], [])["precision"] == 0.0


def test_mean_pose_of_copies_is_the_pose_and_is_a_valid_average(poses) -> None:  # type: ignore[no-untyped-def]
    axis_angle, _ = poses
    copies = np.repeat(axis_angle[:1], 5, axis=0)
    assert np.allclose(M.joints_of(M.mean_pose_axis_angle(copies)[None]), M.joints_of(axis_angle[:1]), atol=1e-4)
    mean = M.mean_pose_axis_angle(axis_angle)
    assert mean.shape == (66,) and np.isfinite(mean).all()


def test_most_frequent_text_picks_the_most_common_statements() -> None:
    texts = ["a", "b", "c"]
    keys = [[("sit", "body", "sitting")], [("knee", "left", "bent")], [("knee", "left", "bent")]]
    assert M.most_frequent_text(texts, keys) == "b"
    assert M.most_frequent_text(texts, keys, min_facts=2) == "a"  # nobody qualifies: the first


def test_report_writers(tmp_path: Path) -> None:
    metric = {"model": 0.9, "baseline": 0.4, "baseline_name": "mean pose", "higher_is_better": True,
              "beats_baseline": True}
    report = {"model": "m", "model_is_random": False, "quick": True, "seed": 0, "eval_seed": 10007,
              "sizes": {"poses": 2, "pairs": 1, "pose_images": 1, "pair_images": 1},
              "baselines": {"most_frequent_caption": "x.", "most_frequent_instruction": "y."},
              "metrics": {"text_to_pose": {"facts_hold": metric}}, "beats_all_baselines": True,
              "seconds": {"total": 1.0}}
    json_path, md_path = write_report(report, tmp_path / "ev")
    assert json.loads(json_path.read_text())["metrics"]["text_to_pose"]["facts_hold"]["model"] == 0.9
    assert "| text_to_pose | facts_hold (higher is better) | 0.900 | 0.400 | mean pose | yes |" in md_path.read_text()
    assert to_markdown(report) == md_path.read_text()


def test_rotation_change_counts_only_the_given_joints() -> None:
    import torch

    from unipose_sdk.body.pose import Pose
    from unipose_sdk.body.skeleton import JOINT_INDEX
    from unipose_sdk.evaluation.runner import _rotation_change_deg

    axis_angle, _ = sample_poses(1, 3)
    a = Pose.from_axis_angle(torch.from_numpy(axis_angle))
    rotmat = a.rotmat.clone()
    knee = JOINT_INDEX["left_knee"]
    rotmat[0, knee] = rotmat[0, knee] @ torch.tensor(_rotation_z(math.radians(30.0)), dtype=rotmat.dtype)
    b = Pose(rotmat)
    assert _rotation_change_deg(a, b, [knee]) == pytest.approx(30.0, abs=1e-3)
    assert _rotation_change_deg(a, b, [knee, JOINT_INDEX["right_knee"]]) == pytest.approx(15.0, abs=1e-3)
    assert _rotation_change_deg(a, b, [JOINT_INDEX["head"]]) == pytest.approx(0.0, abs=1e-3)
    assert math.isnan(_rotation_change_deg(a, b, []))


def test_the_quick_evaluation_of_the_embedded_model_reports_every_task(tmp_path: Path) -> None:
    """`unipose evaluate --quick` end to end: every task's metrics, the conversation ones reported, not gated."""
    from unipose_sdk.evaluation.runner import evaluate

    report = evaluate(None, quick=True)
    assert set(report["metrics"]) == {"tokenizer", "text_to_pose", "pose_description", "pose_difference",
                                      "pose_editing", "image_description", "image_difference", "estimation",
                                      "free_form", "conversation"}
    conversation = report["metrics"]["conversation"]
    assert not any(m["gate"] for m in conversation.values())
    assert 0.0 <= conversation["follow_up_edits_hold"]["model"] <= 1.0
    assert 0.0 <= conversation["follow_ups_answered_with_pose"]["model"] <= 1.0
    assert conversation["follow_up_unnamed_joints_moved_deg"]["model"] >= 0.0
    assert not report["model_is_random"] and report["model"] == "unipose-tiny"
    # The report says how the Generator decoded: the shipped config's defaults.
    config = Generator.from_pretrained().session.config
    assert report["decoding"] == {"pose_decoding": config.pose_decoding,
                                  "text_to_pose_code_temperature": config.text_to_pose_code_temperature,
                                  "text_to_pose_guidance": config.text_to_pose_guidance,
                                  "text_to_pose_candidates": [list(p) for p in config.text_to_pose_candidates],
                                  "image_description_min_sentence_logprob":
                                      config.image_description_min_sentence_logprob}
    _, md_path = write_report(report, tmp_path / "ev")
    assert "| conversation | follow_up_edits_hold (higher is better) |" in md_path.read_text()
    if config.image_description_min_sentence_logprob is not None:
        assert "Image descriptions keep the sentences whose tokens have a mean log-probability of at least " \
            f"{config.image_description_min_sentence_logprob:g}" in md_path.read_text()
    if config.text_to_pose_candidates:
        assert "the text-pose matcher keeping one (the model's defaults)" in md_path.read_text()
    else:
        assert f"pose guidance {config.text_to_pose_guidance:g} (the model's defaults)" in md_path.read_text()


def test_the_floor_grid_scores_image_descriptions_as_the_evaluation_does() -> None:
    """`evaluation.description_floor` draws the pool, the references and the baseline `unipose evaluate --seed S`
    draws: its row at the model's own floor is the report's image-description metric, number for number."""
    from unipose_sdk.evaluation.description_floor import floor_grid
    from unipose_sdk.evaluation.runner import QUICK_SIZES, evaluate

    floor = Generator.from_pretrained().session.config.image_description_min_sentence_logprob
    grid = floor_grid(None, floors=(-20.0,) if floor is None else (floor,), seeds=(5,), sizes=QUICK_SIZES)
    report = evaluate(None, quick=True, seed=5)["metrics"]["image_description"]
    row = grid["rows"][0 if floor is None else 1]
    assert (row["precision"], row["recall"]) == (report["precision"]["model"], report["recall"]["model"])
    assert (row["baseline_precision"], row["baseline_recall"]) == (report["precision"]["baseline"],
                                                                   report["recall"]["baseline"])
    assert grid["chosen"] in grid["rows"] and grid["rows"][0]["floor"] is None


@pytest.mark.parametrize("argv, message", [
    (["--floors=0.5"], "--floors"),
    (["--floors=-1,x"], "--floors"),
    (["--seeds", "0"], "--seeds"),
    (["--write", "NEW"], "--write"),  # no --model to copy
])
def test_the_floor_grid_refuses_bad_arguments_before_any_work(argv: list[str], message: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from unipose_sdk.evaluation.description_floor import main

    argv = [str(tmp_path / a) if a == "NEW" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
