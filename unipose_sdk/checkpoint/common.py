"""Strict state-dict loading shared by every checkpoint format: never a silent partial load."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from unipose_sdk.errors import CheckpointError

_MAX_LISTED = 20


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys; return quietly when all match."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} keys with the wrong shape: {_listing(mis_shaped)}")
        raise CheckpointError(
            f"checkpoint {source} does not match {type(module).__name__}: " + "; ".join(parts)
            + ". Check that the checkpoint is the right kind and that the model config (preset) matches it."
        )


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: str, assign: bool = False
) -> nn.Module:
    """Check every key and shape first (see check_state_dict), then load; `assign=True` keeps the given
    tensors (memory-mapped safetensors, meta-device builds) instead of copying into existing parameters."""
    check_state_dict(module, state_dict, source)
    with torch.no_grad():
        module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return module
