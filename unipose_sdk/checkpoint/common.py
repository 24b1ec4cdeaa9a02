"""Strict state-dict loading shared by every checkpoint format: never a silent partial load; `build_model` turns
a checked state dict into a UniPoseModel."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from unipose_sdk.errors import CheckpointError
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.models.unipose import UniPoseModel

_MAX_LISTED = 20


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _all_finite(tensor: Tensor) -> bool:
    if tensor.is_meta or tensor.numel() == 0:  # a meta-device build has shapes only: no values to check
        return True
    # aminmax propagates NaN and returns +-inf when present; it reads the tensor once without a boolean copy
    # (isfinite().all() is ~100x slower on bfloat16 CPU tensors, minutes for a 7B checkpoint).
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _dtype_name(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def check_tensor_values(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError naming the tensors whose kind does not match the model's (an integer or bool tensor
    where the model holds floats, or the reverse) and the floating tensors holding NaN or infinity."""
    expected = module.state_dict()
    wrong_kind = sorted(
        f"{k} ({_dtype_name(state_dict[k])}, model {_dtype_name(expected[k])})"
        for k in set(expected) & set(state_dict)
        if state_dict[k].is_floating_point() != expected[k].is_floating_point()
        or state_dict[k].is_complex() != expected[k].is_complex())
    if wrong_kind:
        raise CheckpointError.make(
            f"checkpoint {source} with {len(wrong_kind)} tensors of the wrong kind: {_listing(wrong_kind)}",
            "floating-point weights where the model has floating-point weights",
            "The file was damaged or written by another tool; convert or download it again.")
    non_finite = sorted(k for k in set(expected) & set(state_dict)
                        if state_dict[k].is_floating_point() and not _all_finite(state_dict[k]))
    if non_finite:
        raise CheckpointError.make(
            f"checkpoint {source} with NaN or infinite values in {len(non_finite)} tensors: {_listing(non_finite)}",
            "finite weights", "These weights come from a diverged or damaged run; use another checkpoint.")


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str,
                     check_values: bool = True) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys, then (`check_values`) tensors of
    the wrong kind or with non-finite values; return quietly when all match."""
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise CheckpointError.make(f"checkpoint {source} whose entries {_listing(not_tensors)} are not tensors",
                                   "a tensor for every key", "Pass the weights file this loader expects.")
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
    if check_values:
        check_tensor_values(module, state_dict, source)


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: str, assign: bool = False
) -> nn.Module:
    """Check every key and shape first (see check_state_dict), then load; `assign=True` keeps the given
    tensors (memory-mapped safetensors, meta-device builds) instead of copying into existing parameters."""
    check_state_dict(module, state_dict, source)
    with torch.no_grad():
        module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    return module


def build_model(config: UniPoseConfig, state_dict: Mapping[str, Tensor], source: str,
                device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> UniPoseModel:
    """The one way a checkpoint becomes a UniPoseModel: meta-device build, every key, shape and value checked
    before any conversion (the error lists the file's keys), then `UniPoseModel.assign_weights`."""
    model = UniPoseModel.from_config(config, device="meta")
    check_state_dict(model, state_dict, source)
    return model.assign_weights(state_dict, device=device, dtype=dtype)
