"""The SDK's own weights format: one directory, written atomically.

    config.json        {"format": "unipose-sdk/model", "format_version": 1, "config": UniPoseConfig.to_dict(),
                        "dtype": ..., "is_random": ..., "source": ...}
    model.safetensors  UniPoseModel.state_dict() keys (llm.*, vision.*, pose_tokenizer.*), memory-mapped at load
    tokenizer.json     the text tokenizer (+ tokenizer_config.json), checked against the vocabulary layout

A directory is first written under a hidden temporary name next to the target and renamed into place, so a
crash or a full disk never leaves a half-written model where a loader would find it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from unipose_sdk.checkpoint.common import build_model
from unipose_sdk.errors import CheckpointError, ConfigError, ModelNotFoundError
from unipose_sdk.fileio import follow_umask, make_temp_dir, replace_directory
from unipose_sdk.formats import DTYPES
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.tokenizer import TOKENIZER_FILE, TextTokenizer

log = logging.getLogger("unipose_sdk")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "unipose-sdk/model"
FORMAT_VERSION = 1
_DTYPES = {name: row.torch() for name, row in DTYPES.items()}  # the names of the one dtype table


@dataclass
class LoadedModel:
    """What `load_model` returns: the model, its config and tokenizer, and where the weights came from."""

    model: UniPoseModel
    config: UniPoseConfig
    tokenizer: TextTokenizer | None
    is_random: bool
    source: str
    sentence_tokenizer: Any = None  # text.encoder_tokenizer.SentenceTokenizer, for models with a text_encoder


def save_model(model: Any, directory: str | os.PathLike, tokenizer: TextTokenizer | None = None, *,
               dtype: torch.dtype | None = None, is_random: bool = False, source: str = "",
               overwrite: bool = False, int8_prefixes: tuple[str, ...] = (),
               write_beside: Callable[[Path], None] | None = None) -> Path:
    """Write `model` (a UniPoseModel) in the SDK format. `dtype` casts floating tensors except the pose
    tokenizer's (kept float32). Refuses to replace an existing directory unless `overwrite=True`."""
    state = {k: v for k, v in model.state_dict().items()}
    return save_state_dict(state, model.config, directory, tokenizer, dtype=dtype, is_random=is_random,
                           source=source, overwrite=overwrite, int8_prefixes=int8_prefixes,
                           write_beside=write_beside)


def save_state_dict(state: Mapping[str, Tensor], config: UniPoseConfig, directory: str | os.PathLike,
                    tokenizer: TextTokenizer | None = None, *, dtype: torch.dtype | None = None,
                    is_random: bool = False, source: str = "", overwrite: bool = False,
                    int8_prefixes: tuple[str, ...] = (), write_beside: Callable[[Path], None] | None = None) -> Path:
    """Like save_model, from a state dict already in the SDK's key layout (what `unipose convert` writes).

    `int8_prefixes`: matrices under these key prefixes are stored as int8 rows with one scale per row (see
    `quantize_int8_rows`) and turned back into floats at load; unipose-tiny stores its frozen sentence encoder so,
    to fit the package size budget.
    `write_beside(directory)`: writes more files into the directory before it is renamed into place (a sentence
    tokenizer, training records), so an interrupted save leaves no directory without them."""
    target = Path(directory)
    if target.exists() and not overwrite:
        raise CheckpointError.make(
            f"output directory {str(target)!r}, which already exists", "a new directory",
            "Choose another output path, or remove the old one (or pass overwrite=True / --overwrite).")
    if tokenizer is not None and tokenizer.layout != config.vocab:
        raise CheckpointError.make(
            f"a tokenizer for layout {tokenizer.layout}", f"the model's layout {config.vocab}",
            "Save the tokenizer that belongs to these weights.")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The directory is renamed into place, so its mode is the finished one's: it follows the umask (tempfile's
    # mkdtemp would make it 0700), as do the files written inside.
    tmp = make_temp_dir(target.parent, target.name)
    try:
        tensors = {}
        for key, value in state.items():
            value = value.detach()
            if dtype is not None and value.is_floating_point() and not key.startswith("pose_tokenizer."):
                value = value.to(dtype)
            tensors[key] = value.to("cpu").contiguous()
        for key in [k for k, v in tensors.items() if k.startswith(int8_prefixes) and v.dim() == 2
                    and v.is_floating_point()] if int8_prefixes else []:
            tensors[key + INT8_SUFFIX], tensors[key + INT8_SCALE_SUFFIX] = quantize_int8_rows(tensors.pop(key))
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "unipose_format": FORMAT_NAME})
        follow_umask(tmp / WEIGHTS_FILE)  # safetensors creates it 0600
        stored = {str(v.dtype).removeprefix("torch.") for k, v in tensors.items() if v.is_floating_point()
                  and not k.startswith("pose_tokenizer.")}
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_dict(),
                "dtype": min(stored) if len(stored) == 1 else sorted(stored),
                "is_random": is_random, "source": source}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
        if write_beside is not None:
            write_beside(tmp)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of an SDK directory, checked for format and version."""
    root = Path(directory)
    if not root.is_dir():
        raise ModelNotFoundError.make(
            f"model directory {str(root)!r}, which does not exist or is not a directory",
            f"a directory with {CONFIG_FILE} and {WEIGHTS_FILE}",
            "Check the path; convert the official release first with `unipose convert`.")
    config_path = root / CONFIG_FILE
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError.make(
            f"directory {str(root)!r} without {CONFIG_FILE} (contents: {sorted(p.name for p in root.iterdir())[:12]})",
            f"an SDK model directory ({CONFIG_FILE} + {WEIGHTS_FILE} + {TOKENIZER_FILE})",
            "For the official release use `unipose convert --base ... --unipose ...` to write one.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise CheckpointError.make(f"{config_path} that is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})",
                                   "the JSON written by save_model", "Re-convert the model; the file is damaged.") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        if isinstance(meta, dict):
            kind = meta.get("format") or meta.get("model_type") or meta.get("architectures")
        else:
            kind = type(meta).__name__
        raise CheckpointError.make(
            f"{config_path} of kind {kind!r}", f"format {FORMAT_NAME!r}",
            "A Hugging Face / official directory must be converted first: `unipose convert --merged DIR -o OUT` "
            "or `unipose convert --base ... --unipose ... -o OUT`.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError.make(
            f"format_version {meta.get('format_version')!r} in {config_path}", f"version {FORMAT_VERSION}",
            "Upgrade unipose-sdk (newer files) or re-convert the model with this version.")
    for name, kinds, expected in (("is_random", (bool,), "true or false"), ("source", (str,), "a string"),
                                  ("dtype", (str, list), "a dtype name or a list of them")):
        if name in meta and not isinstance(meta[name], kinds):
            raise ConfigError.make(
                f"{config_path}: {name} = {meta[name]!r} ({type(meta[name]).__name__})", expected,
                "Fix that field (or re-convert the model with this SDK version).")
    return meta


def read_config(directory: str | os.PathLike) -> UniPoseConfig:
    """The UniPoseConfig of an SDK directory, every field checked by type and range (ConfigError naming the file,
    the field and its value)."""
    meta = read_metadata(directory)
    return UniPoseConfig.from_dict(meta.get("config"), source=f"{Path(directory) / CONFIG_FILE} (config)")


def read_weights(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file, memory-mapped (nothing is read until a tensor is used)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except FileNotFoundError:
        raise CheckpointError.make(f"no weights file {path}", f"{WEIGHTS_FILE} next to {CONFIG_FILE}",
                                   "The directory is incomplete; convert or copy it again.") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise CheckpointError.make(f"{path}, which safetensors cannot read ({type(exc).__name__}: {exc})",
                                   "a complete safetensors file", "Re-convert or re-copy the model.") from None


INT8_SUFFIX = ".int8"
INT8_SCALE_SUFFIX = ".int8_row_scale"


def quantize_int8_rows(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """[R, C] float -> (int8 [R, C], scale [R] in the matrix's dtype): symmetric per row, row = int8 * scale.
    Per-row scales keep a rare embedding row (or an output channel) from borrowing a large neighbour's range;
    the scale's dtype is the one the matrix is restored to."""
    values = matrix.float()
    scale = (values.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    quantized = torch.round(values / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return quantized, scale.to(matrix.dtype)


def dequantize_int8_rows(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict read from disk with every int8-row pair (`quantize_int8_rows`) turned back into a float
    matrix (the scale's dtype) under its own key; a pair with a part missing is a CheckpointError."""
    out = {k: v for k, v in state.items() if not k.endswith((INT8_SUFFIX, INT8_SCALE_SUFFIX))}
    for key in [k for k in state if k.endswith(INT8_SUFFIX)]:
        name = key[: -len(INT8_SUFFIX)]
        scale = state.get(name + INT8_SCALE_SUFFIX)
        quantized = state[key]
        if scale is None or quantized.dtype != torch.int8 or scale.shape != quantized.shape[:1]:
            raise CheckpointError.make(
                f"int8 weight {key} ({tuple(quantized.shape)}, {quantized.dtype}) with scale "
                f"{None if scale is None else tuple(scale.shape)}",
                f"an int8 matrix and a per-row scale {name + INT8_SCALE_SUFFIX} of one value per row",
                "Re-save the model with this SDK version; the weights file is damaged or hand-edited.")
        out[name] = (quantized.float() * scale.float()[:, None]).to(scale.dtype)
    orphans = [k for k in state if k.endswith(INT8_SCALE_SUFFIX) and k[: -len(INT8_SCALE_SUFFIX)] not in out]
    if orphans:
        raise CheckpointError.make(f"int8 row scales without their matrices: {orphans[:5]}",
                                   "each scale next to its int8 matrix", "Re-save the model with this SDK version.")
    return out


def load_model(directory: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """Load an SDK directory: meta-device build, strict assign-load of the memory-mapped weights, optional cast."""
    root = Path(directory)
    meta = read_metadata(root)
    config = read_config(root)
    state = dequantize_int8_rows(read_weights(root / WEIGHTS_FILE))
    model = build_model(config, state, str(root / WEIGHTS_FILE), device=device, dtype=dtype)
    tokenizer = TextTokenizer.from_directory(root, config.vocab) if (root / TOKENIZER_FILE).is_file() else None
    sentence_tokenizer = None
    if config.text_encoder is not None:
        from unipose_sdk.text.encoder_tokenizer import SentenceTokenizer

        sentence_tokenizer = SentenceTokenizer.from_directory(root, config.text_encoder)
    source = meta.get("source") or str(root)
    return LoadedModel(model, config, tokenizer, bool(meta.get("is_random", False)), source, sentence_tokenizer)


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise CheckpointError.make(f"dtype {name!r}", f"one of {sorted(_DTYPES)}", "Pick a supported dtype.") from None
