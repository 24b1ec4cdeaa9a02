"""The shipped unipose-tiny pose tokenizer keeps its quality: a fast check on fixed held-out poses and on the
shipped example poses, against the numbers recorded next to the weights (metrics.json)."""

from __future__ import annotations

import json

import pytest
import torch

from unipose_sdk.body.examples import example_pose_names, load_example_pose
from unipose_sdk.checkpoint.pose_tokenizer import embedded_tokenizer_dir, load_pose_tokenizer
from unipose_sdk.models.pose_tokenizer import mpjpe_mm
from unipose_sdk.training.pose_tokenizer import evaluate, held_out_rotmat

# fp16 weights and a 256-pose subset of the 2048 held-out poses behind metrics.json: allow this much drift.
MARGIN_MM = 6.0
EXAMPLE_CEILING_MM = 35.0  # every shipped example pose, encoded and decoded by the default tokenizer


@pytest.fixture(scope="module")
def shipped():  # type: ignore[no-untyped-def]
    if not (embedded_tokenizer_dir() / "model.safetensors").is_file():
        pytest.skip("embedded tokenizer not shipped in this checkout")
    metrics = json.loads((embedded_tokenizer_dir() / "metrics.json").read_text())
    return load_pose_tokenizer(), metrics


def test_held_out_reconstruction_stays_at_the_shipped_level(shipped) -> None:  # type: ignore[no-untyped-def]
    tokenizer, metrics = shipped
    result = evaluate(tokenizer, held_out_rotmat(256, seed=metrics["seed"]))
    assert result["mpjpe_mm_mean"] <= metrics["held_out"]["mpjpe_mm_mean"] + MARGIN_MM, result
    assert result["codes_used"] >= 150, result  # the codebook is in use, not collapsed


def test_example_poses_round_trip_closely(shipped) -> None:  # type: ignore[no-untyped-def]
    tokenizer, _ = shipped
    for name in example_pose_names():
        rotmat = load_example_pose(name).rotmat
        with torch.no_grad():
            decoded = tokenizer.decode_rotmat(tokenizer.encode(rotmat))
        error = float(mpjpe_mm(decoded, rotmat).mean())
        assert error <= EXAMPLE_CEILING_MM, f"{name}: {error:.1f} mm"
