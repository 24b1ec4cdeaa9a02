"""Options are validated at construction; every bad value names itself, what was expected and the fix."""

from __future__ import annotations

import pytest
import torch

from unipose_sdk.errors import BackendUnavailableError, InvalidInputError
from unipose_sdk.options import Backend, Device, EstimatorOptions, GeneratorOptions


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
