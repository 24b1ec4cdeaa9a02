"""Options are validated at construction; every bad value names itself, what was expected and the fix."""

from __future__ import annotations

import pytest
import torch

from unipose_sdk.errors import BackendUnavailableError, InvalidInputError
from unipose_sdk.generation import GenerationConfig
from unipose_sdk.models.config import VocabLayout
from unipose_sdk.options import (
    Backend,
    DescriberOptions,
    Device,
    EditorOptions,
    EstimatorOptions,
    GeneratorOptions,
    PoseTaskOptions,
)


def test_defaults_and_enum_coercion() -> None:
    options = GeneratorOptions(backend="TORCH", device="cpu", dtype="bf16")
    assert options.backend is Backend.TORCH and options.device is Device.CPU
    assert options.torch_dtype(torch.device("cpu")) is torch.bfloat16
    assert GeneratorOptions().torch_dtype(torch.device("cpu")) is torch.float32
    assert GeneratorOptions().is_embedded_model and GeneratorOptions(model="unipose-tiny").is_embedded_model


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"backend": "tensorflow"}, "backend='tensorflow'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"dtype": torch.int64}, "dtype=torch.int64"),
        ({"num_threads": 0}, "num_threads=0"),
        ({"max_new_tokens": -1}, "max_new_tokens=-1"),
        ({"model": 42}, "model=42"),
    ],
)
def test_bad_options_raise_with_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        GeneratorOptions(**kwargs)
    assert needle in str(info.value) and "expected" in str(info.value)


def test_bbox_margin_range() -> None:
    with pytest.raises(InvalidInputError, match="bbox_margin=0.5"):
        EstimatorOptions(bbox_margin=0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_says_how_to_fix() -> None:
    with pytest.raises(BackendUnavailableError, match="device='cpu'"):
        GeneratorOptions(device="cuda").torch_device()
    assert GeneratorOptions(device="auto").torch_device().type == "cpu"


VOCAB = VocabLayout(text_vocab_size=64, codebook_size=32, num_pose_tokens=80)


def test_each_task_builds_one_generation_config_from_its_options() -> None:
    # Pose tasks: the answer starts with its pose block, which max_new_tokens (text tokens) does not count.
    assert GeneratorOptions(max_new_tokens=6).generation_config(VOCAB) == GenerationConfig(
        max_new_tokens=6 + 82, start_with_pose=True, stop_after_pose=True, one_pass=True)
    assert EditorOptions(max_new_tokens=1, pose_only=False, one_pass=False).generation_config(VOCAB) == (
        GenerationConfig(max_new_tokens=83, start_with_pose=True, stop_after_pose=False, one_pass=False))
    assert EstimatorOptions().generation_config(VOCAB).max_new_tokens == 128 + 82
    # The description: text as asked, step by step (no speculative pose block on every prompt).
    assert DescriberOptions(max_new_tokens=40).generation_config(VOCAB) == GenerationConfig(max_new_tokens=40)
    assert all(issubclass(cls, PoseTaskOptions) for cls in (GeneratorOptions, EditorOptions, EstimatorOptions))
    assert not issubclass(DescriberOptions, PoseTaskOptions)
    with pytest.raises(TypeError):
        DescriberOptions(pose_only=False)  # type: ignore[call-arg]


def test_generator_decodes_at_its_own_pose_code_temperature_or_else_the_models() -> None:
    assert GeneratorOptions().generation_config(VOCAB).pose_code_temperature == 1.0
    assert GeneratorOptions().generation_config(VOCAB, 0.7).pose_code_temperature == 0.7
    assert GeneratorOptions(pose_code_temperature=1.0).generation_config(VOCAB, 0.7).pose_code_temperature == 1.0
    assert GeneratorOptions(pose_code_temperature=0.5).generation_config(VOCAB).pose_code_temperature == 0.5
    # Only the Generator reads it: estimation and editing keep the plain expectation.
    assert EditorOptions().generation_config(VOCAB).pose_code_temperature == 1.0
    assert EstimatorOptions().generation_config(VOCAB).pose_code_temperature == 1.0


def test_generator_guides_by_its_own_pose_guidance_or_else_the_models() -> None:
    assert GeneratorOptions().generation_config(VOCAB).pose_guidance == 0.0
    assert GeneratorOptions().generation_config(VOCAB, 0.7, 2.0).pose_guidance == 2.0
    assert GeneratorOptions(pose_guidance=0).generation_config(VOCAB, 0.7, 2.0).pose_guidance == 0.0
    assert GeneratorOptions(pose_guidance=1.5).generation_config(VOCAB).pose_guidance == 1.5
    assert EditorOptions().generation_config(VOCAB).pose_guidance == 0.0


@pytest.mark.parametrize("value", [-1, 10.5, float("nan"), True, "2"])
def test_generator_refuses_a_pose_guidance_out_of_range(value: object) -> None:
    with pytest.raises(InvalidInputError, match=f"pose_guidance={value!r}.*expected a number in \\[0, 10\\]"):
        GeneratorOptions(pose_guidance=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 0.04, 10.5, float("nan"), True, "0.7"])
def test_generator_refuses_a_pose_code_temperature_out_of_range(value: object) -> None:
    with pytest.raises(InvalidInputError, match=f"pose_code_temperature={value!r}.*expected a number in"):
        GeneratorOptions(pose_code_temperature=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, needle", [({"max_new_tokens": 0}, "max_new_tokens=0"),
                                            ({"max_new_tokens": True}, "max_new_tokens=True"),
                                            ({"max_new_tokens": 8, "one_pass": None}, "one_pass=None")])
def test_generation_config_is_checked_and_frozen(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        GenerationConfig(**kwargs)
    config = GenerationConfig(8)
    with pytest.raises(AttributeError):
        config.max_new_tokens = 9  # type: ignore[misc]
