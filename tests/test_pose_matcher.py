"""The text-pose matcher and the Generator's choice among candidate decodings: features, config, the choice itself
(it keeps the candidate the matcher scores highest, and every candidate is exactly a one-setting decoding),
ONNX Runtime parity, the training command's data and its refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from test_text_encoder import SMALL, small_config, wordpiece_tokenizer

from unipose_sdk import generation
from unipose_sdk.body.pose import Pose
from unipose_sdk.checkpoint.sdk_format import load_model, save_model
from unipose_sdk.errors import ConfigError, InvalidInputError, InvalidOptionError
from unipose_sdk.models.config import PoseMatcherConfig, UniPoseConfig, check_pose_candidates
from unipose_sdk.models.pose_matcher import FEATURE_SIZE, PoseMatcher, joint_features
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.encoder_tokenizer import SentenceTokenizer
from unipose_sdk.text.prompts import Task
from unipose_sdk.training import matcher as M

MATCHER = PoseMatcherConfig(text_size=SMALL.hidden_size, width=32, embed_size=16)
CANDIDATES = ((1.0, 0.7), (2.0, 1.0), (0.0, 1.3))
PROMPTS = ["raise your left hand", "someone is squatting down", "point at the ceiling", "sit down"]


def matcher_config() -> UniPoseConfig:
    return dataclasses.replace(small_config(), pose_matcher=MATCHER, text_to_pose_candidates=CANDIDATES)


def random_joints(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    axis_angle = torch.randn(n, 22, 3, generator=gen) * 0.4
    return Pose.from_axis_angle(axis_angle).joints()


def yaw(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def test_features_ignore_where_the_body_stands_and_which_way_it_faces() -> None:
    joints = random_joints(4)
    moved = joints @ yaw(73.0).T + torch.tensor([0.5, 0.2, -1.0])
    features = joint_features(joints)
    assert features.shape == (4, FEATURE_SIZE)
    torch.testing.assert_close(joint_features(moved), features, atol=1e-5, rtol=1e-5)
    # A different pose has different features; a mirrored one too (left and right are told apart).
    assert not torch.allclose(joint_features(random_joints(4, seed=1)), features, atol=1e-3)
    mirrored = torch.from_numpy(M.mirrored_joints(joints.numpy()))
    assert not torch.allclose(joint_features(mirrored), features, atol=1e-3)


def test_matcher_scores_are_cosines_row_by_row() -> None:
    torch.manual_seed(0)
    matcher = PoseMatcher(MATCHER).eval()
    joints = random_joints(5)
    sentences = torch.nn.functional.normalize(torch.randn(5, SMALL.hidden_size), dim=-1)
    with torch.no_grad():
        scores = matcher(joints, sentences)
        pairwise = matcher.text_embedding(sentences) @ matcher.pose_embedding(joints).T
    assert scores.shape == (5,) and float(scores.abs().max()) <= 1.0 + 1e-6
    torch.testing.assert_close(scores, pairwise.diagonal())


def test_config_needs_an_encoder_for_the_matcher_and_a_matcher_for_candidates() -> None:
    base = small_config()
    with pytest.raises(ValueError, match="text_encoder"):
        dataclasses.replace(base, text_encoder=None, pose_matcher=MATCHER)
    with pytest.raises(ValueError, match="text_size"):
        dataclasses.replace(base, pose_matcher=PoseMatcherConfig(text_size=SMALL.hidden_size + 1))
    with pytest.raises(ValueError, match="without a pose_matcher"):
        dataclasses.replace(base, text_to_pose_candidates=CANDIDATES)
    config = matcher_config()
    again = UniPoseConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.text_to_pose_candidates == CANDIDATES
    for bad in ([[1, 0.7], [2]], [[11, 1]], [[1, 0.01]], "1:0.7", [["1", 0.7]]):
        data = {**json.loads(json.dumps(config.to_dict())), "text_to_pose_candidates": bad}
        with pytest.raises(ConfigError, match="text_to_pose_candidates"):
            UniPoseConfig.from_dict(data)


@pytest.mark.parametrize("bad", [(), [(1, 2, 3)], [(-1, 1)], [(1, 0)], [(True, 1)], "2:1", [(1, float("nan"))]])
def test_candidate_lists_are_checked(bad) -> None:  # noqa: ANN001
    with pytest.raises(InvalidInputError):
        check_pose_candidates(bad)
    if bad != ():
        with pytest.raises(InvalidInputError):
            generation.GenerationConfig(max_new_tokens=90, pose_candidates=bad)
    assert check_pose_candidates([[1, 0.7], (2, 1)]) == ((1.0, 0.7), (2.0, 1.0))


def test_a_picker_with_candidates_needs_a_chooser() -> None:
    config = generation.GenerationConfig(max_new_tokens=90, pose_candidates=((0.0, 1.0),))
    vocab = small_config().vocab
    with pytest.raises(InvalidInputError, match="choose_pose"):
        generation.TokenPicker(config, vocab)
    with pytest.raises(InvalidInputError, match="unconditional"):
        generation.TokenPicker(dataclasses.replace(config, pose_candidates=((1.0, 1.0),)), vocab,
                               choose_pose=lambda c, r: c[:, 0])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):  # noqa: ANN201
    from unipose_sdk.training.pipeline import load_text_tokenizer

    torch.manual_seed(5)
    model = UniPoseModel.from_config(matcher_config())
    directory = tmp_path_factory.mktemp("pose-matcher") / "model"
    save_model(model, directory, load_text_tokenizer(), dtype=torch.float16, int8_prefixes=("text_encoder.bert.",))
    SentenceTokenizer(wordpiece_tokenizer(), SMALL).save(directory)
    return directory


def test_the_generator_keeps_the_candidate_the_matcher_scores_highest(saved_model) -> None:  # noqa: ANN001
    from unipose_sdk import Generator

    generator = Generator.from_pretrained(saved_model, backend="torch")
    session = generator._session()
    assert session.pose_candidates == CANDIDATES and session.fallback is None
    chosen = [r.pose_codes for r in generator.generate(PROMPTS)]
    # Each candidate is what the one-setting Generator gives; the kept one scores highest against the prompt.
    singles = [[r.pose_codes for r in Generator.from_pretrained(
        saved_model, backend="torch", pose_guidance=w, pose_code_temperature=t).generate(PROMPTS)]
        for w, t in CANDIDATES]
    _, sentences = session.encode_sentences(PROMPTS)
    for i in range(len(PROMPTS)):
        codes = torch.tensor([singles[c][i] for c in range(len(CANDIDATES))])
        scores = session.runtime.match_poses(session.decode_poses(codes).joints(),
                                             sentences[i:i + 1].expand(len(CANDIDATES), -1))
        assert chosen[i] == singles[int(scores.argmax())][i]
    # Batched and one by one agree; choose_candidates=False is the model's one decoding.
    assert [generator.generate(p).pose_codes for p in PROMPTS] == chosen
    once = Generator.from_pretrained(saved_model, backend="torch", choose_candidates=False).generate(PROMPTS)
    w, t = session.config.text_to_pose_guidance, session.config.text_to_pose_code_temperature
    assert [r.pose_codes for r in once] == [r.pose_codes for r in Generator.from_pretrained(
        saved_model, backend="torch", pose_guidance=w, pose_code_temperature=t).generate(PROMPTS)]


def test_the_returned_pose_is_the_matchers_decode_of_the_chosen_codes(saved_model, monkeypatch) -> None:  # noqa: ANN001
    from unipose_sdk import Generator

    generator = Generator.from_pretrained(saved_model, backend="torch")
    session = generator._session()
    decoded_batches: list[int] = []
    runtime_decode = session.runtime.decode_poses

    def counting_decode(codes: torch.Tensor) -> torch.Tensor:
        decoded_batches.append(len(codes))
        return runtime_decode(codes)

    monkeypatch.setattr(session.runtime, "decode_poses", counting_decode)
    results = generator.generate(PROMPTS)
    # One decode: the candidates the matcher scored; the chosen rows are not decoded again.
    assert len(decoded_batches) == 1 and decoded_batches[0] >= len(PROMPTS)
    # The pose is not decoded a second time, and is what the pose tokenizer gives for its codes (the candidates
    # were decoded as one batch, the same numbers up to float rounding).
    for result in results:
        assert result.pose_codes is not None
        codes = torch.tensor([result.pose_codes])
        assert Pose.from_6d(session.runtime.decode_poses(codes)).allclose(result.pose, atol=1e-5)
    # Codes the last choice did not decode (alone or beside known ones) are decoded by the pose tokenizer.
    other = torch.zeros(1, 80, dtype=torch.long)
    mixed = torch.cat([torch.tensor([results[0].pose_codes]), other])
    expected = Pose.from_6d(session.runtime.decode_poses(mixed))
    assert session.decode_poses(mixed).allclose(expected, atol=1e-6)


def test_choose_candidates_must_be_a_bool() -> None:
    from unipose_sdk.options import GeneratorOptions

    with pytest.raises(InvalidOptionError, match="choose_candidates"):
        GeneratorOptions(choose_candidates="yes")
    vocab = small_config().vocab
    assert GeneratorOptions().generation_config(vocab, 1.0, 2.0, CANDIDATES).pose_candidates == CANDIDATES
    assert GeneratorOptions(pose_guidance=1.0).generation_config(vocab, 1.0, 2.0, CANDIDATES).pose_candidates == ()


def test_onnx_runtime_chooses_the_same_candidates(saved_model, tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("onnxruntime")
    from unipose_sdk.export.onnx import export_onnx

    from unipose_sdk import Generator

    report = export_onnx(str(saved_model), tmp_path / "onnx", precision="fp32", validate=True)
    graphs = {g.name: g for g in report.graphs}
    assert graphs["pose_matcher"].validated and graphs["text_encoder"].validated
    by_torch = Generator.from_pretrained(saved_model, backend="torch").generate(PROMPTS)
    ort = Generator.from_pretrained(tmp_path / "onnx", backend="onnxruntime")
    assert ort._session().pose_candidates == CANDIDATES
    assert [r.pose_codes for r in ort.generate(PROMPTS)] == [r.pose_codes for r in by_torch]
    # An export whose files lack the matcher graph decodes once and says so.
    session = ort._session()
    session.runtime._graphs.pop("pose_matcher")
    assert not session.runtime.has_pose_matcher and session.pose_candidates == ()


def test_mirroring_swaps_the_sides_of_poses_and_texts() -> None:
    from unipose_sdk.data.facts import facts_for_poses
    from unipose_sdk.data.poses import joints_and_rotations

    assert M.swap_sides("Raise your left hand, right knee bent; leftover") == \
        "Raise your right hand, left knee bent; leftover"
    joints = random_joints(3).numpy()
    np.testing.assert_allclose(M.mirrored_joints(M.mirrored_joints(joints)), joints)
    # A pose with the left wrist raised mirrors to one with the right wrist raised.
    axis_angle = np.zeros((1, 66), np.float32)
    axis_angle[0, 3 * 16 + 2] = 2.6  # left shoulder: arm up over the head
    raised, _ = joints_and_rotations(axis_angle)
    mirrored = M.mirrored_joints(raised)
    left, right = 20, 21
    assert raised[0, left, 1] > raised[0, right, 1] + 0.2
    assert mirrored[0, right, 1] > mirrored[0, left, 1] + 0.2
    assert facts_for_poses(axis_angle)  # the pose has facts to caption


def test_pose_text_pairs_are_deterministic_and_refuse_evaluation_seeds() -> None:
    first = M.pose_text_pairs(20, seed=3)
    again = M.pose_text_pairs(20, seed=3)
    assert first[1] == again[1] and np.array_equal(first[0], again[0])
    assert len(first[1]) == len(first[2]) and set(first[2].tolist()) <= set(range(20))
    with pytest.raises(InvalidInputError):
        M.pose_text_pairs(20, seed=0)


def test_training_and_attaching_a_matcher(saved_model, tmp_path) -> None:  # noqa: ANN001
    loaded = load_model(saved_model)
    data = M.build_data(loaded.model, loaded.sentence_tokenizer, num_poses=40, seed=2)
    assert data["joints_m"].shape == (80, 22, 3) and len(data["text_emb"]) == len(data["owner"])
    matcher, record = M.train_matcher(data, MATCHER, steps=3, batch_size=16)
    assert record["steps"] == 3 and record["poses"] == 80
    out = M.attach(saved_model, tmp_path / "with-matcher", matcher, [(2.0, 1.0), (1.0, 0.7)], record)
    again = load_model(out)
    assert again.config.text_to_pose_candidates == ((2.0, 1.0), (1.0, 0.7))
    joints = random_joints(2)
    sentences = torch.nn.functional.normalize(torch.randn(2, SMALL.hidden_size), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(again.model.pose_matcher.float()(joints, sentences), matcher(joints, sentences),
                                   atol=5e-3, rtol=5e-3)  # float16 weights


def test_an_interrupted_attach_leaves_no_directory(saved_model, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    matcher = PoseMatcher(MATCHER)

    def interrupted(self, directory):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # as a signal would, after the weights are written

    monkeypatch.setattr(SentenceTokenizer, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        M.attach(saved_model, tmp_path / "out", matcher, CANDIDATES, {"steps": 0})
    assert list(tmp_path.iterdir()) == []  # neither the directory nor its temporary


@pytest.mark.parametrize("extra, message", [
    (["--poses", "10"], "at least 100 poses"),
    (["--candidates", "1:0.7,2"], "GUIDANCE:TEMPERATURE"),
    (["--candidates", "11:1"], "GUIDANCE:TEMPERATURE"),
])
def test_the_training_command_refuses_bad_arguments_before_any_work(saved_model, tmp_path, capsys, extra,
                                                                     message) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        M.main(["--model", str(saved_model), "--out", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_training_command_refuses_an_existing_output(saved_model, tmp_path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit):
        M.main(["--model", str(saved_model), "--out", str(tmp_path / "out")])
    assert "exists" in capsys.readouterr().err


def test_unconditional_logits_are_shared_by_the_guided_candidates(saved_model) -> None:  # noqa: ANN001
    from unipose_sdk import Generator

    generator = Generator.from_pretrained(saved_model, backend="torch")
    generator.generate("sit down")
    assert Task.TEXT_TO_POSE in generator._session()._unconditional_logits


def test_the_decoding_grid_scores_the_generators_choice_among_candidates(saved_model) -> None:  # noqa: ANN001
    from test_decoding_choice import assert_row_scores_the_generator

    from unipose_sdk import Generator
    from unipose_sdk.evaluation import decoding

    extra = ((1.0, 1.0), (2.0, 0.7))
    grid = decoding.decoding_grid(saved_model, guidances=(2.0,), temperatures=(1.0,), seeds=(5,), poses=24,
                                  candidate_lists=[extra])
    lists = [tuple(tuple(p) for p in row["pose_candidates"]) for row in grid["rows"] if "pose_candidates" in row]
    assert lists == [CANDIDATES, extra]
    row = next(r for r in grid["rows"] if "pose_candidates" in r)
    captions = decoding.validation_captions(5, poses=24)
    with Generator.from_pretrained(saved_model, backend="torch") as generator:
        assert_row_scores_the_generator(row, generator, captions)
    assert "the matcher's choice among 1:0.7,2:1,0:1.3" in decoding.grid_table(grid)
