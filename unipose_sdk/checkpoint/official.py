"""The official UniPose release (as a user downloads it) and already-merged Hugging Face directories.

Release layout (liyiheng23/UniPose README) and what each piece provides:

    llava-v1.6-mistral-7b/      --base      HF LLaVA checkpoint: the LLM (32000-row vocabulary), LLaVA-1.6's
                                            fine-tuned CLIP tower, a 1024->4096 projector that UniPose replaces
    unipose/                    --unipose   tokenizer files, config.json, PEFT LoRA adapter over the LLM's linear
                                            layers, non_lora_trainables.bin (embed_tokens, lm_head, projector)
    clip-vit-large-patch14-336/ --clip      HF CLIP: only used for tower weights the base does not hold
    tokenhmr_model.ckpt         --tokenhmr  Lightning checkpoint; `backbone.*` is the Pose-ViT
    pose_vqvae/best_MPJPE.ckpt  --pose-vqvae  Lightning checkpoint of the pose tokenizer

Combined in the official order (inference.py `load_pretrained_model`): base -> resize the embedding and LM head to
the full vocabulary -> TokenHMR backbone -> non-LoRA trainables (prefix `base_model.model.` stripped) -> merge
LoRA (W += scale * B @ A) -> pose VQ-VAE. The CLIP tower: the official code builds it from the CLIP directory and
then loads the base checkpoint over it, so the base's tower wins where it has one.

A merged directory (`--merged`) holds the UniPose model saved in LLaVA naming after merge_and_unload; parts it
lacks (Pose-ViT, pose VQ-VAE, CLIP) come from the component flags.

Every foreign key is mapped by one table per format below; a key no rule maps, a missing key, a wrong shape or a
missing file ends in one CheckpointError that lists them, never in a partial model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from unipose_sdk.checkpoint.common import build_model
from unipose_sdk.checkpoint.lora import (
    PEFT_PREFIX,
    adapter_weights_path,
    lora_pairs,
    merge_lora,
    read_adapter_config,
)
from unipose_sdk.checkpoint.pose_tokenizer import official_state_dict
from unipose_sdk.checkpoint.safe_pickle import load_torch_file
from unipose_sdk.checkpoint.sdk_format import LoadedModel, read_weights
from unipose_sdk.errors import CheckpointError, ModelNotFoundError
from unipose_sdk.models.config import UniPoseConfig, get_preset
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.tokenizer import SENTENCEPIECE_FILE, TOKENIZER_FILE, TextTokenizer

log = logging.getLogger("unipose_sdk")

NON_LORA_FILE = "non_lora_trainables.bin"
_MAX_LISTED = 20

# ---- key tables: (source key prefix, SDK key prefix or None = deliberately unused); the first match wins ----------
KeyTable = Sequence[tuple[str, str | None]]

# The UniPose / LLaVA model namespace (base checkpoint, non-LoRA trainables, merged directories).
LLAVA_KEYS: KeyTable = (
    ("model.embed_tokens.", "llm.model.embed_tokens."),
    ("model.layers.", "llm.model.layers."),
    ("model.norm.", "llm.model.norm."),
    ("lm_head.", "llm.lm_head."),
    ("model.mm_projector.", "vision.projector."),
    ("model.vision_tower.vision_tower.vision_model.embeddings.position_ids", None),  # an arange, not a weight
    ("model.vision_tower.vision_tower.", "vision.clip."),
    ("model.hmr_vit_backbone.", "vision.pose_vit."),
    ("model.pose_vqvae.", "pose_tokenizer."),
    ("model.image_newline", None),  # LLaVA-1.6 any-resolution row separator; UniPose uses single 336 px views
)
# Hugging Face CLIP directory (full CLIPModel or CLIPVisionModel).
CLIP_KEYS: KeyTable = (
    ("vision_model.embeddings.position_ids", None),
    ("vision_model.", "vision.clip.vision_model."),
    ("text_model.", None), ("text_projection.", None), ("visual_projection.", None), ("logit_scale", None),
)
# TokenHMR Lightning checkpoint: only the ViT backbone is used; heads, discriminator and body model are not.
TOKENHMR_KEYS: KeyTable = (("backbone.", "vision.pose_vit."), ("", None))
# Pose VQ-VAE Lightning checkpoint (after the pose-tokenizer loader dropped its training-only keys).
POSE_VQVAE_KEYS: KeyTable = (("", "pose_tokenizer."),)

# Which flag supplies each part, for error messages about missing keys.
_PART_HINTS = (
    ("llm.", "the LLM: --base (or --merged)"),
    ("vision.clip.", "the CLIP tower: --base or --clip"),
    ("vision.pose_vit.", "the Pose-ViT: --tokenhmr"),
    ("vision.projector.", "the projector: --unipose (non_lora_trainables.bin) or --merged"),
    ("pose_tokenizer.", "the pose tokenizer: --pose-vqvae"),
)


@dataclass(frozen=True)
class OfficialPaths:
    """Where each downloaded piece is. Either `merged`, or `base` + `unipose`; the others as needed."""

    base: Path | None = None
    unipose: Path | None = None
    merged: Path | None = None
    clip: Path | None = None
    tokenhmr: Path | None = None
    pose_vqvae: Path | None = None


class _State:
    """The SDK-keyed tensors gathered so far, with the file and key each came from (for error messages)."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self.origin: dict[str, str] = {}

    def update(self, tensors: Mapping[str, Tensor], origin: Mapping[str, str], only_missing: bool = False) -> int:
        count = 0
        for key, tensor in tensors.items():
            if only_missing and key in self.tensors:
                continue
            self.tensors[key] = tensor
            self.origin[key] = origin[key]
            count += 1
        return count

    def has_part(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.tensors)


def remap(state: Mapping[str, Tensor], table: KeyTable, source: str,
          strip_prefix: str = "") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Foreign keys -> SDK keys by `table`; CheckpointError listing every key no rule maps."""
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmapped = []
    for key, tensor in state.items():
        name = key[len(strip_prefix):] if strip_prefix and key.startswith(strip_prefix) else key
        for prefix, target in table:
            if name.startswith(prefix):
                if target is not None:
                    mapped[target + name[len(prefix):]] = tensor
                    origin[target + name[len(prefix):]] = f"{source}: {key}"
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError.make(
            f"{source} with {len(unmapped)} keys that map to no part of the model: {_listing(sorted(unmapped))}",
            "only keys of the known layout (" + ", ".join(p + "*" for p, t in table if t is not None) + ")",
            "Check that the file is the piece this flag expects (see `unipose convert --help`).")
    return mapped, origin


# ---- reading files ------------------------------------------------------------------------------------------
def torch_load_tensors(path: Path, what: str) -> dict[str, Tensor]:
    """A .bin / .ckpt holding a dict of tensors (or {'state_dict': ...}), read without running pickled code
    (checkpoint.safe_pickle; zip-format files are memory-mapped when they hold only tensors)."""
    if not path.is_file():
        raise CheckpointError.make(f"no file {path}", what, "Check the path; re-download the piece if needed.")
    data = load_torch_file(path, what, mmap=True)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise CheckpointError.make(f"{path} holding a {type(data).__name__}", f"{what} (a dict of tensors)",
                                   "Pass the file named in the release instructions.")
    return {str(k): v for k, v in data.items() if isinstance(v, Tensor)}


def read_json(path: Path, what: str) -> dict:
    """A JSON object file of the release (index, config); CheckpointError naming the file when it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise CheckpointError.make(f"{path}, which is not readable JSON ({type(exc).__name__}: {str(exc)[:200]})",
                                   f"{what} (a JSON object)", "The download is damaged; download that file again.") \
            from None
    if not isinstance(data, dict):
        raise CheckpointError.make(f"{path} holding a JSON {type(data).__name__}", f"{what} (a JSON object)",
                                   "The download is damaged; download that file again.")
    return data


def read_hf_weights(directory: Path, what: str) -> dict[str, Tensor]:
    """All tensors of a Hugging Face checkpoint directory (sharded or single; safetensors preferred over .bin)."""
    for index_name, loader in (("model.safetensors.index.json", read_weights),
                               ("pytorch_model.bin.index.json", lambda p: torch_load_tensors(p, what))):
        index_path = directory / index_name
        if index_path.is_file():
            weight_map = read_json(index_path, f"the shard index of {what}").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or not all(
                    isinstance(k, str) and isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
                    for k, v in weight_map.items()):
                raise CheckpointError.make(
                    f"{index_path} whose 'weight_map' is {str(weight_map)[:80]!r}",
                    "a non-empty object of tensor name -> shard file name in this directory",
                    "The download is damaged; download the index file again.")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise CheckpointError.make(
                    f"{what} {directory} whose index names {len(missing)} missing shard files: {_listing(missing)}",
                    f"all {len(shards)} shards listed in {index_name}", "Finish or repeat the download.")
            tensors: dict[str, Tensor] = {}
            for shard in shards:
                tensors.update(loader(directory / shard))
            absent = sorted(set(weight_map) - set(tensors))
            if absent:
                raise CheckpointError.make(f"{what} {directory} whose shards lack {len(absent)} indexed tensors: "
                                           f"{_listing(absent)}", "every tensor of the index in its shard",
                                           "The shards are damaged or mixed from two downloads; download again.")
            return tensors
    if (directory / "model.safetensors").is_file():
        return read_weights(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        return torch_load_tensors(directory / "pytorch_model.bin", what)
    raise CheckpointError.make(
        f"{what} directory {directory} without weights (contents: {sorted(p.name for p in directory.iterdir())[:12]})",
        "model.safetensors(.index.json) or pytorch_model.bin(.index.json)", "Finish or repeat the download.")


def _check_paths(paths: OfficialPaths) -> None:
    if paths.merged is None and (paths.base is None or paths.unipose is None):
        raise CheckpointError.make(
            "neither --merged nor both --base and --unipose",
            "the official release (--base llava-v1.6-mistral-7b --unipose unipose ...) or a merged directory",
            "Name each downloaded piece with its flag (see `unipose convert --help`).")
    if paths.merged is not None and (paths.base is not None or paths.unipose is not None):
        raise CheckpointError.make("--merged together with --base / --unipose", "one of the two layouts",
                                   "A merged directory already contains the base and the adapter; drop the others.")
    problems = []
    for name, want_dir in (("base", True), ("unipose", True), ("merged", True), ("clip", True),
                           ("tokenhmr", False), ("pose_vqvae", False)):
        path = getattr(paths, name)
        if path is None:
            continue
        if not path.exists():
            problems.append(f"--{name.replace('_', '-')} {path} (does not exist)")
        elif want_dir != path.is_dir():
            problems.append(f"--{name.replace('_', '-')} {path} (expected a {'directory' if want_dir else 'file'})")
    if paths.unipose is not None and paths.unipose.is_dir():
        for name in (NON_LORA_FILE, "adapter_config.json"):
            if not (paths.unipose / name).is_file():
                problems.append(f"{paths.unipose / name} (missing)")
        if not any((paths.unipose / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
            problems.append(f"{paths.unipose}/adapter_model.safetensors or .bin (missing)")
    tokenizer_dir = paths.unipose or paths.merged
    if tokenizer_dir is not None and tokenizer_dir.is_dir() and not any(
            (tokenizer_dir / n).is_file() for n in (TOKENIZER_FILE, SENTENCEPIECE_FILE)):
        problems.append(f"{tokenizer_dir}/{TOKENIZER_FILE} or {SENTENCEPIECE_FILE} (missing)")
    if problems:
        raise ModelNotFoundError.make(f"{len(problems)} unusable paths: {'; '.join(problems)}",
                                      "every named piece of the release in place",
                                      "Fix the paths (or finish the downloads) and run again.")


def _check_llm_config(directory: Path, config: UniPoseConfig, projector: bool) -> None:
    """Compare the HF config.json sizes with the preset, so a wrong preset fails with a clear message."""
    path = directory / "config.json"
    if not path.is_file():
        return
    data = read_json(path, "a Hugging Face model config")
    data = data.get("text_config", data) if isinstance(data.get("text_config", data), dict) else data
    wanted = {"hidden_size": config.llm.hidden_size, "num_hidden_layers": config.llm.num_hidden_layers,
              "intermediate_size": config.llm.intermediate_size, "num_attention_heads": config.llm.num_attention_heads,
              "num_key_value_heads": config.llm.num_key_value_heads}
    if projector:
        wanted["mm_hidden_size"] = config.projector.input_size
    wrong = [f"{k}={data[k]} (preset {v})" for k, v in wanted.items() if k in data and data[k] != v]
    if wrong:
        raise CheckpointError.make(f"{path} with {', '.join(wrong)}", f"the sizes of preset {config.name!r}",
                                   "Pick the preset that matches these weights (--preset).")


# ---- the loader ---------------------------------------------------------------------------------------------
def load_official_state(paths: OfficialPaths, config: UniPoseConfig) -> tuple[dict[str, Tensor], TextTokenizer]:
    """Gather the SDK-keyed state dict (checked: complete, nothing unmapped, right shapes) and the tokenizer."""
    _check_paths(paths)
    state = _State()
    vocab = config.llm.vocab_size
    if paths.merged is not None:
        _check_llm_config(paths.merged, config, projector=True)
        state.update(*remap(read_hf_weights(paths.merged, "merged model"), LLAVA_KEYS, f"merged {paths.merged}"))
        tokenizer = TextTokenizer.from_directory(paths.merged, config.vocab)
        resized: set[str] = set()
    else:
        assert paths.base is not None and paths.unipose is not None
        _check_llm_config(paths.base, config, projector=False)
        _check_llm_config(paths.unipose, config, projector=True)
        tokenizer = TextTokenizer.from_directory(paths.unipose, config.vocab)
        state.update(*remap(read_hf_weights(paths.base, "LLaVA base"), LLAVA_KEYS, f"base {paths.base}"))
        # resize_token_embeddings(len(tokenizer)): keep the base rows, new rows wait for the non-LoRA file.
        resized = set()
        for key in ("llm.model.embed_tokens.weight", "llm.lm_head.weight"):
            if key in state.tensors and state.tensors[key].shape[0] != vocab:
                state.tensors[key] = _resize_rows(state.tensors[key], vocab)
                resized.add(key)
    if paths.tokenhmr is not None:
        _fill_part(state, "vision.pose_vit.", *remap(torch_load_tensors(paths.tokenhmr, "the TokenHMR checkpoint"),
                                                   TOKENHMR_KEYS, f"tokenhmr {paths.tokenhmr}"), "--tokenhmr",
                   merged=paths.merged is not None)
    if paths.unipose is not None:
        non_lora_path = paths.unipose / NON_LORA_FILE
        non_lora, origin = remap(torch_load_tensors(non_lora_path, "UniPose's non-LoRA trainables"), LLAVA_KEYS,
                                 str(non_lora_path), strip_prefix=PEFT_PREFIX)
        state.update(non_lora, origin)
        resized -= set(non_lora)
        _merge_adapter(state, paths.unipose)
    if resized:
        raise CheckpointError.make(
            f"{paths.unipose}/{NON_LORA_FILE} without {sorted(resized)}",
            f"the full {vocab}-row embedding and LM head (the rows of UniPose's added tokens come only from there)",
            "Use the UniPose directory of the release; the base alone has no pose-token embeddings.")
    if paths.pose_vqvae is not None:
        vq = official_state_dict(load_torch_file(paths.pose_vqvae, "the pose VQ-VAE Lightning checkpoint"),
                                 str(paths.pose_vqvae))
        _fill_part(state, "pose_tokenizer.", *remap(vq, POSE_VQVAE_KEYS, f"pose-vqvae {paths.pose_vqvae}"),
                   "--pose-vqvae", merged=paths.merged is not None)
    if paths.clip is not None:
        clip, origin = remap(read_hf_weights(paths.clip, "CLIP"), CLIP_KEYS, f"clip {paths.clip}")
        used = state.update(clip, origin, only_missing=True)
        if used < len(clip):
            log.info("CLIP: %d tower tensors come from the base checkpoint (LLaVA-1.6's fine-tuned tower, as the "
                     "official loader does); %d from %s", len(clip) - used, used, paths.clip)
    expected = {k: tuple(v.shape) for k, v in UniPoseModel.from_config(config, device="meta").state_dict().items()}
    validate_state(expected, state.tensors, _describe(paths), state.origin)
    return state.tensors, tokenizer


def _fill_part(state: _State, prefix: str, tensors: dict[str, Tensor], origin: dict[str, str], flag: str,
               merged: bool) -> None:
    """Component files fill a part; a merged directory that already has the part keeps its own (logged)."""
    if merged and state.has_part(prefix):
        log.warning("%s ignored: the merged directory already contains %s weights", flag, prefix.rstrip("."))
        return
    state.update(tensors, origin)


def _merge_adapter(state: _State, unipose_dir: Path) -> None:
    config = read_adapter_config(unipose_dir)
    weights_path = adapter_weights_path(unipose_dir)
    adapter = read_weights(weights_path) if weights_path.suffix == ".safetensors" else \
        torch_load_tensors(weights_path, "the LoRA adapter")
    pairs = lora_pairs(adapter, str(weights_path))

    def key_for_module(module: str) -> str | None:
        for prefix, target in LLAVA_KEYS:
            if module.startswith(prefix):
                return None if target is None else target + module[len(prefix):] + ".weight"
        return None

    merged = merge_lora(state.tensors, pairs, config, key_for_module, str(weights_path))
    log.info("merged %d LoRA pairs from %s (r=%d, alpha=%g)", len(merged), weights_path, config.r, config.lora_alpha)


def _resize_rows(tensor: Tensor, rows: int) -> Tensor:
    resized = tensor.new_zeros((rows, *tensor.shape[1:]))
    keep = min(rows, tensor.shape[0])
    resized[:keep] = tensor[:keep]
    return resized


def validate_state(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Tensor], source: str,
                   origin: Mapping[str, str] | None = None, *,
                   part_hints: tuple[tuple[str, str], ...] = _PART_HINTS,
                   expected_text: str = "exactly the model's keys and shapes",
                   fix: str = "Name every piece of the release with its flag and pick the preset of these weights.",
                   ) -> None:
    """CheckpointError listing missing (with the flag that supplies them), unexpected and mis-shaped keys.

    part_hints: (key prefix, what supplies it) in order; a missing key is counted under the first prefix it
    starts with, so a narrower prefix listed before a wider one ("llm.pose_head." before "llm.") takes its keys."""
    origin = origin or {}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k} {tuple(state[k].shape)} vs model {expected[k]} (from {origin.get(k, source)})"
                        for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or mis_shaped):
        return
    parts = []
    if missing:
        # Grouped by part, so the message says which flag is missing rather than only key names.
        groups, left = [], list(missing)
        for prefix, hint in part_hints:
            keys = [k for k in left if k.startswith(prefix)]
            left = [k for k in left if not k.startswith(prefix)]
            if keys:
                groups.append(f"{len(keys)} of {hint} (e.g. {', '.join(keys[:4])})")
        parts.append(f"{len(missing)} missing keys: " + "; ".join(groups))
    if unexpected:
        listed = _listing([f"{k} (from {origin.get(k, source)})" for k in unexpected])
        parts.append(f"{len(unexpected)} unexpected keys: {listed}")
    if mis_shaped:
        parts.append(f"{len(mis_shaped)} keys with the wrong shape: {_listing(mis_shaped)}")
    raise CheckpointError.make(f"{source} with " + "; ".join(parts), expected_text, fix)


def load_official(paths: OfficialPaths, config: UniPoseConfig | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> LoadedModel:
    """The official release or a merged directory -> LoadedModel. `dtype` None keeps the LLM's stored dtype
    (applied to the LLM and vision parts; the pose tokenizer stays float32)."""
    config = config or get_preset("unipose-7b")
    tensors, tokenizer = load_official_state(paths, config)
    source = _describe(paths)
    if dtype is None:
        dtype = tensors["llm.model.layers.0.self_attn.q_proj.weight"].dtype
    model = build_model(config, tensors, source, device=device, dtype=dtype)
    return LoadedModel(model, config, tokenizer, False, f"official release ({source})")


def _describe(paths: OfficialPaths) -> str:
    return " + ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(paths).items() if v is not None)


def paths_from_strings(**kwargs: str | os.PathLike | None) -> OfficialPaths:
    return OfficialPaths(**{k: None if v is None else Path(v) for k, v in kwargs.items()})


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")
