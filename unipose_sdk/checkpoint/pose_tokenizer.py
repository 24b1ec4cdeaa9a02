"""Loading and saving the pose tokenizer.

Two formats:
- the official release: a PyTorch Lightning checkpoint file (`best_MPJPE.ckpt`) whose `state_dict` holds
  `encoder.*`, `decoder.*`, `quantizer.codebook` plus training-only entries (the loss module's buffers, metric
  states ...), which are ignored as the official non-strict loader ignores them; read without running pickled
  code (checkpoint.safe_pickle);
- the SDK's own: a directory with `config.json` (the PoseTokenizerConfig) and `model.safetensors`.

`load_pose_tokenizer(None)` gives the tokenizer embedded in the package (unipose-tiny).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.checkpoint.common import check_state_dict, load_state_dict_strict
from unipose_sdk.checkpoint.safe_pickle import load_torch_file
from unipose_sdk.errors import CheckpointError, ModelNotFoundError
from unipose_sdk.fileio import atomic_write_bytes
from unipose_sdk.models.config import PoseTokenizerConfig, build_config, get_preset
from unipose_sdk.models.pose_tokenizer import PoseTokenizer

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "unipose-sdk/pose-tokenizer"
FORMAT_VERSION = 1
# The tokenizer's parts (PoseTokenizer's top-level modules): every other key of a checkpoint is ignored.
TOKENIZER_PREFIXES = ("encoder.", "decoder.", "quantizer.")


def embedded_tokenizer_dir() -> Path:
    """Directory of the tokenizer shipped inside the package (may be absent in a stripped install)."""
    return Path(str(resources.files("unipose_sdk") / "assets" / "unipose-tiny" / "pose_tokenizer"))


# ----------------------------------------------------------------------------------------------------------------
# Official Lightning checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    return load_torch_file(path, "the pose VQ-VAE Lightning checkpoint (.ckpt) or an SDK pose-tokenizer directory")


def official_state_dict(ckpt: Any, source: str) -> dict[str, Tensor]:
    """Lightning checkpoint dict -> tokenizer state dict.

    Like the official loader (non-strict), keys of other modules the training run attached (the loss, metrics,
    a discriminator ...) are not the tokenizer's business: only keys under the tokenizer's own parts
    (`TOKENIZER_PREFIXES`) are kept, and the rest is listed in one log note. Keys containing "loss" are dropped
    wherever they sit, as the official loader does. The strict load that follows still refuses missing,
    unexpected (inside those parts) and mis-shaped keys."""
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        state = ckpt["state_dict"]
    elif isinstance(ckpt, Mapping) and all(isinstance(v, Tensor) for v in ckpt.values()) and ckpt:
        state = ckpt  # a bare state dict saved with torch.save(model.state_dict())
    else:
        keys = sorted(map(str, ckpt))[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError.make(
            f"{source} with top-level content {keys}", "a Lightning checkpoint with a 'state_dict' entry",
            "Pass the pose VQ-VAE checkpoint (best_MPJPE.ckpt), or an SDK pose-tokenizer directory.",
        )
    not_keys = sorted(repr(k) for k in state if not isinstance(k, str))
    if not_keys:
        raise CheckpointError.make(f"{source} whose state_dict has non-string keys {not_keys[:5]}",
                                   "parameter names as keys", "Pass the pose VQ-VAE checkpoint (best_MPJPE.ckpt).")
    kept = {k: v for k, v in state.items() if k.startswith(TOKENIZER_PREFIXES) and "loss" not in k}
    dropped = sorted(set(state) - set(kept))
    if dropped:
        logger.info("checkpoint %s: dropped %d training-only keys outside the tokenizer (%s)", source, len(dropped),
                    ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else ""))
    not_tensors = sorted(k for k, v in kept.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise CheckpointError.make(f"{source} whose entries {not_tensors[:10]} are not tensors",
                                   "a tensor for every tokenizer key", "Pass the pose VQ-VAE checkpoint as released.")
    return kept


def infer_config(state_dict: Mapping[str, Tensor], base: PoseTokenizerConfig | None = None,
                 source: str = "the checkpoint") -> PoseTokenizerConfig:
    """Read width, code_dim and codebook_size off the tensor shapes; the layer lengths come from `base` (7B).
    A missing tensor leaves `base` (the strict load lists it); a present one of the wrong rank or with an empty
    dimension is a CheckpointError naming it."""
    base = base or get_preset("unipose-7b").pose_tokenizer
    shapes = {"encoder.encoder.0.weight": "[width, 6, kernel]", "quantizer.codebook": "[codebook_size, code_dim]"}
    for key, expected in shapes.items():
        tensor = state_dict.get(key)
        if tensor is not None and (tensor.ndim != expected.count(",") + 1 or 0 in tensor.shape):
            raise CheckpointError.make(
                f"{source} with tensor {key} of shape {tuple(tensor.shape)}", f"shape {expected}",
                "The checkpoint is damaged or is not the pose VQ-VAE; use the released file.")
    if any(key not in state_dict for key in shapes):
        return base
    width = int(state_dict["encoder.encoder.0.weight"].shape[0])
    codebook_size, code_dim = (int(n) for n in state_dict["quantizer.codebook"].shape)
    return dataclasses.replace(base, width=width, code_dim=code_dim, codebook_size=codebook_size)


def load_official_checkpoint(path: str | os.PathLike, config: PoseTokenizerConfig | None = None) -> PoseTokenizer:
    """The released Lightning checkpoint -> PoseTokenizer (float32, CPU, eval mode). Strict: CheckpointError
    lists missing / unexpected / mis-shaped keys."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError.make(
            f"{path}, which does not exist" if not path.exists() else f"{path}, which is not a file",
            "the pose VQ-VAE Lightning checkpoint file", "Check the path (the release calls it best_MPJPE.ckpt).",
        )
    state = official_state_dict(_torch_load(path), str(path))
    model = PoseTokenizer(config or infer_config(state, source=str(path)))
    check_state_dict(model, state, str(path))  # before the float cast: an integer weight is refused, not cast
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, str(path))
    model.quantizer.initialized.fill_(True)
    model.source = f"official checkpoint {path}"
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# SDK format: directory with config.json + model.safetensors
# ----------------------------------------------------------------------------------------------------------------


def config_to_dict(config: PoseTokenizerConfig) -> dict[str, Any]:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(config)}


def config_from_dict(data: Any, source: str) -> PoseTokenizerConfig:
    """The config.json of an SDK pose-tokenizer directory -> PoseTokenizerConfig, every field checked by type and
    range (ConfigError naming the file, field and value)."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT_NAME:
        found = data.get("format") if isinstance(data, Mapping) else f"a JSON {type(data).__name__}"
        raise CheckpointError.make(
            f"{source} with format {found!r}", f"format {FORMAT_NAME!r} with a 'config' object",
            "Write the directory with save_pose_tokenizer(), or pass the official .ckpt file instead.",
        )
    return build_config(PoseTokenizerConfig, data.get("config"), source, prefix="config.")


def save_pose_tokenizer(
    model: PoseTokenizer, directory: str | os.PathLike, dtype: torch.dtype | None = None,
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write `config.json` + `model.safetensors` (optionally cast, e.g. torch.float16) into `directory`, each file
    atomically. `extra_files` maps names to JSON-serialisable values written beside them (e.g. metrics.json)."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT_NAME}))
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(config_to_dict(model.config), indent=2) + "\n").encode())
    for name, value in (extra_files or {}).items():
        atomic_write_bytes(directory / name, (json.dumps(value, indent=2) + "\n").encode())
    return directory


def load_sdk_directory(directory: str | os.PathLike) -> PoseTokenizer:
    """An SDK-format directory -> PoseTokenizer (float32, CPU, eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / n).is_file()]
    if missing:
        raise CheckpointError.make(
            f"directory {directory} without {', '.join(missing)}", f"{CONFIG_FILE} and {WEIGHTS_FILE} inside it",
            "Point at a directory written by save_pose_tokenizer(), or at the official .ckpt file.",
        )
    try:
        data = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise CheckpointError.make(f"{directory / CONFIG_FILE} that is not JSON ({exc})", "a JSON config",
                                   "Re-write the directory with save_pose_tokenizer().") from None
    config = config_from_dict(data, str(directory / CONFIG_FILE))
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # truncated / corrupt header or data
        raise CheckpointError.make(f"{directory / WEIGHTS_FILE} that safetensors cannot read ({exc})",
                                   "a safetensors file", "Re-write the directory with save_pose_tokenizer().") from None
    model = PoseTokenizer(config)
    check_state_dict(model, state, str(directory / WEIGHTS_FILE))  # before the float cast (see above)
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, str(directory / WEIGHTS_FILE))
    model.quantizer.initialized.fill_(True)
    model.source = f"SDK directory {directory}"
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------------------------


def random_tiny_tokenizer(seed: int = 0) -> PoseTokenizer:
    """A seeded, untrained unipose-tiny tokenizer (codebook drawn from N(0, 1)): only for tests and fallbacks."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = PoseTokenizer(get_preset("unipose-tiny").pose_tokenizer)
        model.quantizer.codebook.normal_()
    finally:
        torch.random.set_rng_state(generator_state)
    model.quantizer.initialized.fill_(True)
    model.source = f"RANDOM: seeded untrained unipose-tiny tokenizer (seed {seed})"
    return model.eval()


def load_pose_tokenizer(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    config: PoseTokenizerConfig | None = None,
) -> PoseTokenizer:
    """Load a pose tokenizer in eval mode.

    path: None -> the embedded unipose-tiny tokenizer (a seeded random one, with a warning, if the package was
    installed without it); a directory -> SDK format; a file -> the official Lightning checkpoint.
    config: only for the official checkpoint, to override the config read off its shapes.
    `model.source` says where the weights came from (it starts with "RANDOM" for untrained weights).
    """
    if path is None:
        directory = embedded_tokenizer_dir()
        if (directory / WEIGHTS_FILE).is_file():
            model = load_sdk_directory(directory)
            model.source = f"embedded unipose-tiny tokenizer ({directory})"
        else:
            model = random_tiny_tokenizer(seed=0)
            message = (f"the embedded pose tokenizer is missing ({directory / WEIGHTS_FILE}); using a seeded RANDOM "
                       "tiny tokenizer: its reconstructions are meaningless. Reinstall unipose-sdk or pass a path.")
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    else:
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelNotFoundError.make(
                f"the path {path}, which does not exist",
                "an official pose VQ-VAE .ckpt file or an SDK pose-tokenizer directory",
                "Check the path; omit it to use the embedded tiny tokenizer.",
            )
        model = load_sdk_directory(path) if path.is_dir() else load_official_checkpoint(path, config)
    return model.to(device=device, dtype=dtype).eval()
