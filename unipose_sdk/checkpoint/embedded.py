"""The embedded default model, `unipose-tiny`, shipped inside the package under `assets/unipose-tiny/`.

Until the trained tiny LLM and vision towers are shipped (`model.safetensors` in that directory), the embedded
default is a PLACEHOLDER: the unipose-tiny architecture with seeded random LLM and vision weights, the trained
pose tokenizer (`pose_tokenizer/`) and the shipped text tokenizer (`tokenizer.json`). Every result and
`unipose info` flag it as random, so nobody mistakes its output for a prediction.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unipose_sdk.checkpoint.pose_tokenizer import load_pose_tokenizer
from unipose_sdk.checkpoint.sdk_format import WEIGHTS_FILE, LoadedModel, load_model
from unipose_sdk.errors import ModelNotFoundError
from unipose_sdk.models.config import get_preset
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.tokenizer import TextTokenizer

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "unipose-tiny"
PLACEHOLDER_SEED = 0


def embedded_model_is_trained() -> bool:
    return (EMBEDDED_DIR / WEIGHTS_FILE).is_file()


def load_embedded(device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """The embedded unipose-tiny: the shipped trained weights when present, else the flagged placeholder."""
    if embedded_model_is_trained():
        return load_model(EMBEDDED_DIR, device=device, dtype=dtype)
    config = get_preset("unipose-tiny")
    tokenizer_file = EMBEDDED_DIR / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelNotFoundError(
            f"received an installation without {tokenizer_file}; expected the embedded unipose-tiny files inside "
            "the package. Reinstall unipose-sdk (pip install --force-reinstall unipose-sdk)."
        )
    tokenizer = TextTokenizer.from_directory(EMBEDDED_DIR, config.vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PLACEHOLDER_SEED)  # the same placeholder weights in every process
        model = UniPoseModel.from_config(config, device="cpu")
    pose_tokenizer = load_pose_tokenizer(None)  # the trained embedded pose tokenizer (float32)
    model.pose_tokenizer.load_state_dict(pose_tokenizer.state_dict())
    if dtype is not None:
        model.llm.to(dtype)
        model.vision.to(dtype)
    model.to(device)
    source = (f"RANDOM placeholder: unipose-tiny LLM and vision weights are seeded random (seed "
              f"{PLACEHOLDER_SEED}) until the trained embedded model ships; the pose tokenizer is "
              f"{pose_tokenizer.source}. Text and poses it generates are not meaningful.")
    return LoadedModel(model, config, tokenizer, True, source)
