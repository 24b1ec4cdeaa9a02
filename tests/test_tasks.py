"""The four task classes on the embedded default model: every class, batching, input types and errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHORT
from PIL import Image

from unipose_sdk import generation
from unipose_sdk.body.examples import load_example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.checkpoint.embedded import embedded_model_is_trained
from unipose_sdk.errors import (
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    InvalidPoseError,
    InvalidTextError,
    ModelNotFoundError,
    UniPoseError,
    UniPoseFileNotFoundError,
)
from unipose_sdk.generation import GenerationConfig, pose_block_length
from unipose_sdk.options import DescriberOptions, GeneratorOptions
from unipose_sdk.results import DescribeResult, EditResult, EstimateResult, GenerateResult, PoseResult
from unipose_sdk.tasks import Describer, Editor, Estimator, Generator


@pytest.fixture(scope="module")
def image_rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((120, 90, 3)) * 255).astype(np.uint8)


def test_generate_returns_a_pose_with_joints_and_timing(generator: Generator) -> None:
    result = generator.generate("a person squatting with both arms raised")
    assert isinstance(result, GenerateResult)
    assert isinstance(result.pose, Pose) and len(result.pose) == 1
    assert result.joints_m.shape == (22, 3) and np.isfinite(result.joints_m).all()
    assert len(result.pose_codes) == 80 and all(0 <= c < 512 for c in result.pose_codes)
    assert {"preprocess", "llm", "detokenize", "total"} <= set(result.timing_ms)
    assert result.run.backend == "torch" and result.run.device == "cpu"
    # Every result says whether the embedded weights are the trained ones or the random placeholder.
    assert result.run.model == "unipose-tiny" and result.run.model_is_random == (not embedded_model_is_trained())
    # The pose tokens decode to the returned pose (the pose tokenizer's own decode, not the session's reuse of
    # the matcher's candidates).
    decoded = Pose.from_6d(generator.session.runtime.decode_poses(torch.tensor([result.pose_codes])))
    assert decoded.allclose(result.pose, atol=1e-5)


def test_batch_is_one_batch_with_the_same_results_as_single_calls(generator: Generator) -> None:
    texts = ["a person kneeling on the ground", "arms crossed", "a person lying down on their back"]
    batch = generator.generate(texts)
    assert isinstance(batch, list) and len(batch) == 3
    assert batch[0].batch_size == 3
    for text, result in zip(texts, batch):
        assert result.prompt == text
        assert result.pose_codes == generator.generate(text).pose_codes


def test_guided_generation_computes_the_unconditional_logits_once_per_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import unipose_sdk.generation as generation

    calls = []
    real = generation.pose_query_logits

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "pose_query_logits", counting)
    texts = ["kneel on both knees", "arms crossed"]
    with Generator.from_pretrained(max_new_tokens=6, pose_guidance=3.0) as guided:
        guided.session._unconditional_logits.clear()  # the session may be shared with earlier tests
        first = guided.generate(texts)
        assert [r.pose_codes for r in guided.generate(texts)] == [r.pose_codes for r in first]
        # Batched or alone, a prompt is guided by the same logits: guidance keeps batching exact.
        assert guided.generate(texts[1]).pose_codes == first[1].pose_codes
    assert len(calls) == 1
    with Generator.from_pretrained(max_new_tokens=6, pose_guidance=0.0) as plain:
        assert [r.pose_codes for r in plain.generate(texts)] != [r.pose_codes for r in first]
    assert len(calls) == 1  # unguided calls never compute them


def test_the_four_classes_share_one_loaded_model(generator: Generator, describer: Describer, editor: Editor,
                                                 estimator: Estimator) -> None:
    assert generator.session is describer.session is editor.session is estimator.session


def test_edit_accepts_every_pose_input_type(editor: Editor, tmp_path: Path) -> None:
    pose = load_example_pose("squatting")
    pose.save(tmp_path / "p.npz")
    inputs = [pose, pose.axis_angle().numpy(), pose.rotmat, pose.rotation_6d()[0], str(tmp_path / "p.npz")]
    results = [editor.edit(x, "raise your left arm") for x in inputs]
    assert all(isinstance(r, EditResult) for r in results)
    assert all(r.source_pose.allclose(pose, atol=1e-4) for r in results)
    assert len({tuple(r.pose_codes) for r in results}) == 1  # same pose, same answer, whatever the input type
    batch = editor.edit([pose, pose], ["raise your left arm", "bend your knees"])
    assert [len(r.pose_codes) for r in batch] == [80, 80]


def test_describe_pose_pair_image_and_image_pair(describer: Describer, image_rgb: np.ndarray) -> None:
    pose_a, pose_b = load_example_pose("squatting"), load_example_pose("standing_relaxed")
    for result in (describer.describe(pose=pose_a), describer.describe(poses=(pose_a, pose_b)),
                   describer.describe(image=image_rgb), describer.describe(images=(image_rgb, image_rgb))):
        assert isinstance(result, DescribeResult) and isinstance(result.text, str)
        assert result.timing_ms["total"] > 0
    assert "vision" in describer.describe(image=image_rgb).timing_ms
    batch = describer.describe(poses=[(pose_a, pose_b), (pose_b, pose_a)])
    assert len(batch) == 2


def test_estimate_accepts_every_image_type(estimator: Estimator, image_rgb: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "person.png"
    Image.fromarray(image_rgb).save(path)
    inputs = [image_rgb, Image.fromarray(image_rgb), str(path), path, torch.from_numpy(image_rgb)]
    codes = [estimator.estimate(x).pose_codes for x in inputs]
    assert all(c == codes[0] for c in codes)
    batch = estimator.estimate([image_rgb, str(path)], bbox=[(5, 5, 80, 110), None])
    assert all(isinstance(r, EstimateResult) and r.joints_m.shape == (22, 3) for r in batch)


def test_grayscale_rgba_and_16bit_images_are_converted(estimator: Estimator, image_rgb: np.ndarray,
                                                       tmp_path: Path) -> None:
    gray = image_rgb.mean(-1).astype(np.uint8)
    rgba = np.concatenate([image_rgb, np.full(image_rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    sixteen = (image_rgb.astype(np.uint16) * 257)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    for image in (gray, rgba, sixteen, str(tmp_path / "gray.png"), str(tmp_path / "rgba.png")):
        assert len(estimator.estimate(image).pose_codes) == 80
    # RGBA with opaque alpha and 16-bit with the same values are the same picture as the RGB original.
    assert estimator.estimate(rgba).pose_codes == estimator.estimate(image_rgb).pose_codes
    assert estimator.estimate(sixteen).pose_codes == estimator.estimate(image_rgb).pose_codes


def test_one_instance_is_safe_from_several_threads(generator: Generator) -> None:
    texts = [f"a person with the {side} knee bent" for side in ("left", "right", "left", "right")]
    expected = [generator.generate(t).pose_codes for t in texts]
    got: dict[int, list[int]] = {}

    def work(i: int) -> None:
        got[i] = generator.generate(texts[i]).pose_codes

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(texts))] == expected


def test_context_manager_closes(image_rgb: np.ndarray) -> None:
    with Generator.from_pretrained(**SHORT) as generator:
        assert generator.generate("a person standing").pose is not None
    with pytest.raises(InvalidInputError, match="closed Generator"):
        generator.generate("a person standing")


# ------------------------------------------------------------------ errors, each named and with a fix


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text(generator: Generator, text: str) -> None:
    with pytest.raises(InvalidTextError, match="non-empty"):
        generator.generate(text)


def test_text_longer_than_the_context_says_the_limit(generator: Generator) -> None:
    limit = generator.session.config.max_text_tokens
    with pytest.raises(InvalidTextError, match=f"at most {limit} tokens"):
        generator.generate("raise your arms " * 400)


def test_unreadable_and_missing_image_files(estimator: Estimator, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(InvalidImageError, match="corrupt.png"):
        estimator.estimate(str(corrupt))
    with pytest.raises(UniPoseFileNotFoundError):
        estimator.estimate(str(tmp_path / "missing.jpg"))


@pytest.mark.parametrize("box, needle", [((10, 10, 10, 50), "box"), ((500, 500, 600, 600), "box"),
                                         ((1, 2, 3), "four numbers")])
def test_bad_person_boxes(estimator: Estimator, image_rgb: np.ndarray, box: tuple, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        estimator.estimate(image_rgb, bbox=box)


def test_bad_poses(editor: Editor) -> None:
    with pytest.raises(InvalidPoseError, match=r"\[5, 7\]"):
        editor.edit(np.zeros((5, 7), np.float32), "raise your arm")
    bad = np.zeros((1, 66), np.float32)
    bad[0, 4] = np.nan
    with pytest.raises(InvalidPoseError, match="NaN"):
        editor.edit(bad, "raise your arm")
    with pytest.raises(InvalidTextError):
        editor.edit(load_example_pose("squatting"), " ")


def test_describe_needs_exactly_one_input(describer: Describer) -> None:
    pose = load_example_pose("squatting")
    with pytest.raises(InvalidInputError, match="exactly one of"):
        describer.describe()
    with pytest.raises(InvalidInputError, match="exactly one of"):
        describer.describe(pose=pose, image=np.zeros((8, 8, 3), np.uint8))


def test_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unipose convert"):
        Generator.from_pretrained(tmp_path / "nowhere")


def test_model_directory_of_the_wrong_kind(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UniPoseError) as info:
        Generator.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


# ------------------------------------------------------------------ one generation config, timing and counts


def _recording(monkeypatch: pytest.MonkeyPatch) -> list[GenerationConfig]:
    """What `generation.generate` receives from the session (the calls still run)."""
    seen: list[GenerationConfig] = []
    real = generation.generate

    def spy(model, prompts, vocab, config, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(config)
        return real(model, prompts, vocab, config, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    return seen


@pytest.mark.parametrize("pose_only, one_pass", [(True, True), (False, False)])
def test_the_options_reach_the_loop_as_one_config(monkeypatch: pytest.MonkeyPatch, pose_only: bool,
                                                  one_pass: bool) -> None:
    seen = _recording(monkeypatch)
    built: list[GenerationConfig] = []
    real_build = GeneratorOptions.generation_config
    monkeypatch.setattr(GeneratorOptions, "generation_config",
                        lambda self, *args: built.append(real_build(self, *args)) or built[-1])
    generator = Generator.from_pretrained(max_new_tokens=6, pose_only=pose_only, one_pass=one_pass)
    result = generator.generate("a person squatting with both arms raised")
    config = generator.session.config
    assert len(seen) == len(built) == 1 and seen[0] is built[0]  # the task's config object, unchanged
    # The Generator decodes pose codes at the model's temperature and guidance and chooses among the model's
    # candidate decodings (its options give none of them).
    assert seen[0] == GenerationConfig(max_new_tokens=6 + pose_block_length(config.vocab), start_with_pose=True,
                                       stop_after_pose=pose_only, one_pass=one_pass,
                                       pose_code_temperature=config.text_to_pose_code_temperature,
                                       pose_guidance=config.text_to_pose_guidance,
                                       pose_candidates=config.text_to_pose_candidates)
    # The stages say which path ran: one forward for prompt + pose block, or prefill then a pose step.
    assert ("prefill_pose" in result.timing_ms) == one_pass and ("pose_step" in result.timing_ms) != one_pass
    assert result.pose_steps == (0 if one_pass else 1)
    describer = Describer.from_pretrained(max_new_tokens=6)
    describer.describe(pose=load_example_pose("squatting"))
    assert seen[1] == GenerationConfig(max_new_tokens=6)  # text only: no pose start, step by step


def test_max_new_tokens_counts_text_and_the_pose_block_always_fits(generator: Generator) -> None:
    # max_new_tokens=1 and the trailing text decoded: the whole pose, then at most one text token.
    with Generator.from_pretrained(max_new_tokens=1, pose_only=False) as tight:
        result = tight.generate("a person squatting with both arms raised")
    assert len(result.pose_codes) == 80 and result.text.startswith("<pose>")
    assert result.decode_steps <= 1
    assert result.pose_codes == generator.generate("a person squatting with both arms raised").pose_codes


def test_timing_holds_milliseconds_and_the_counts_have_fields(generator: Generator, describer: Describer) -> None:
    texts = ["a person kneeling on the ground", "arms crossed"]
    results = generator.generate(texts)
    stages = {"preprocess", "llm", "prefill_pose", "detokenize", "total"}
    for result in results:
        assert set(result.timing_ms) == stages  # stage names only: no counts among the milliseconds
        assert all(isinstance(v, float) and 0 <= v <= result.timing_ms["total"] for v in result.timing_ms.values())
        assert result.timing_ms["llm"] >= result.timing_ms["prefill_pose"]  # the loop's stages run inside "llm"
        assert (result.batch_size, result.decode_steps, result.pose_steps) == (2, 0, 0)  # one pass, pose only
        saved = result.to_dict()
        assert saved["batch_size"] == 2 and saved["decode_steps"] == 0 and "batch_size" not in saved["timing_ms"]
    text = describer.describe(pose=load_example_pose("squatting"))
    assert set(text.timing_ms) <= {"preprocess", "llm", "prefill", "pose_step", "decode", "total"}
    assert "decode_steps" not in text.timing_ms and text.batch_size == 1
    assert 1 <= text.decode_steps <= 6 and ("decode" in text.timing_ms) == (text.decode_steps > 0)


def test_describer_refuses_the_pose_task_options() -> None:
    for name, value in (("pose_only", False), ("one_pass", False)):
        with pytest.raises(InvalidOptionError) as info:
            Describer.from_pretrained(**{name: value})
        message = str(info.value)
        assert repr(name) in message and "Describer" in message
        assert "max_new_tokens" in message and "pose_only" not in message.split("names among")[1]
    assert not hasattr(DescriberOptions(), "pose_only") and not hasattr(DescriberOptions(), "one_pass")
    with pytest.raises(InvalidOptionError, match="DescriberOptions"):
        Describer(GeneratorOptions())  # another task's options are refused, not half read
    with pytest.raises(InvalidOptionError, match="GeneratorOptions"):
        Generator(DescriberOptions())


def test_pose_results_share_one_base() -> None:
    assert all(issubclass(cls, PoseResult) for cls in (EstimateResult, GenerateResult, EditResult))
    assert not issubclass(GenerateResult, EstimateResult) and not issubclass(DescribeResult, PoseResult)
