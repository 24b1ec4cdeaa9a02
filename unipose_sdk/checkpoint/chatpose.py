"""The released ChatPose model (PoseGPT, yfeng95/PoseGPT) -> the SDK's state dict and tokenizer.

Release layout (what `merge_lora_weights_and_save_hf_model.py` writes, published as `YaoFeng/CHATPOSE-V0`) and
what each piece provides:

    CHATPOSE-V0/                  --merged  Hugging Face LlavaLlama directory (sharded safetensors or .bin with
                                            an index), LoRA already merged: the LLaMA LLM with [SEG], <im_start>,
                                            <im_end> rows, LLaVA's projector `model.mm_projector.{0,2}`, the pose
                                            head `model.text_hidden_fcs.0.{0,2}`; tokenizer files beside them
    clip-vit-large-patch14-336/   --clip    Hugging Face CLIP: the vision tower, which the merge leaves out (it
                                            saves every key without "vision_tower")

Keys the merge also saves but the SDK deliberately does not use: the rotary `inv_freq` buffers (recomputed from
the config) and `model.smplx.*`, the buffers of the SMPL-X body model the training code builds inside the model
(a separately licensed body model; the SDK poses its own skeleton and never reads them).

Every foreign key is mapped by one table; an unmapped key, a missing key or a wrong shape ends in one
CheckpointError that lists them (missing keys grouped by the flag that supplies them), never in a partial model.
Weights are read from safetensors, or from .bin files through the project's restricted loader (nothing is
unpickled).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from unipose_sdk.checkpoint.official import (
    CLIP_KEYS,
    KeyTable,
    _check_llm_config,
    read_hf_weights,
    remap,
    validate_state,
)
from unipose_sdk.errors import ConfigError, ModelNotFoundError
from unipose_sdk.models.config import UniPoseConfig
from unipose_sdk.models.unipose import UniPoseModel
from unipose_sdk.text.tokenizer import SENTENCEPIECE_FILE, TOKENIZER_FILE, TextTokenizer

log = logging.getLogger("unipose_sdk")

# (source key prefix, SDK key prefix or None = deliberately unused); the first match wins.
CHATPOSE_KEYS: KeyTable = (
    ("model.embed_tokens.", "llm.model.embed_tokens."),
    ("model.layers.", "llm.model.layers."),
    ("model.norm.", "llm.model.norm."),
    ("lm_head.", "llm.lm_head."),
    ("model.mm_projector.", "vision.projector."),
    ("model.text_hidden_fcs.0.", "llm.pose_head."),
    ("model.smplx.", None),  # the SMPL-X body model's buffers (module docstring)
    ("model.vision_tower.vision_tower.vision_model.embeddings.position_ids", None),  # an arange, not a weight
    ("model.vision_tower.vision_tower.", "vision.clip."),  # only if a merge kept the tower; --clip fills the rest
)
_ROTARY_BUFFER = ".rotary_emb.inv_freq"

_PART_HINTS = (
    ("llm.pose_head.", "the pose head: --merged (model.text_hidden_fcs.0.*)"),
    ("llm.", "the LLM: --merged"),
    ("vision.clip.", "the CLIP tower: --clip"),
    ("vision.projector.", "the projector: --merged (model.mm_projector.*)"),
)


def _check_paths(merged: Path | None, clip: Path | None) -> None:
    problems = []
    for flag, path in (("--merged", merged), ("--clip", clip)):
        if path is None:
            problems.append(f"{flag} (not given)")
        elif not path.is_dir():
            problems.append(f"{flag} {path} ({'not a directory' if path.exists() else 'does not exist'})")
    if merged is not None and merged.is_dir() and not any(
            (merged / name).is_file() for name in (TOKENIZER_FILE, SENTENCEPIECE_FILE)):
        problems.append(f"{merged}/{TOKENIZER_FILE} or {SENTENCEPIECE_FILE} (missing)")
    if problems:
        raise ModelNotFoundError.make(f"{len(problems)} unusable ChatPose paths: {'; '.join(problems)}",
                                      "--merged CHATPOSE-V0 directory and --clip clip-vit-large-patch14-336 directory",
                                      "Name each downloaded piece with its flag (see `unipose convert --help`).")


def load_chatpose_state(merged: Path | None, clip: Path | None, config: UniPoseConfig,
                        ) -> tuple[dict[str, Tensor], TextTokenizer]:
    """The SDK-keyed state dict of a ChatPose model (checked: complete, nothing unmapped, right shapes) and its
    tokenizer, from the merged directory and the CLIP directory."""
    if config.family != "chatpose":
        raise ConfigError.make(f"preset {config.name!r} of family {config.family!r} for a ChatPose conversion",
                               "a ChatPose preset (chatpose-13b, chatpose-tiny)", "Pass --preset chatpose-13b.")
    _check_paths(merged, clip)
    assert merged is not None and clip is not None
    source = f"--merged {merged} + --clip {clip}"
    _check_llm_config(merged, config, projector=True)
    weights = {k: v for k, v in read_hf_weights(merged, "merged ChatPose model").items()
               if not k.endswith(_ROTARY_BUFFER)}
    tensors, origin = remap(weights, CHATPOSE_KEYS, f"merged {merged}")
    clip_tensors, clip_origin = remap(read_hf_weights(clip, "CLIP"), CLIP_KEYS, f"clip {clip}")
    kept = 0
    for key, tensor in clip_tensors.items():
        if key not in tensors:  # a tower saved with the merge (LLaVA's fine-tuned one) wins, as LLaVA loads it
            tensors[key], origin[key] = tensor, clip_origin[key]
            kept += 1
    if kept < len(clip_tensors):
        log.info("CLIP: %d tower tensors come from the merged directory, %d from %s", len(clip_tensors) - kept,
                 kept, clip)
    expected = {k: tuple(v.shape) for k, v in UniPoseModel.from_config(config, device="meta").state_dict().items()}
    validate_state(expected, tensors, source, origin, part_hints=_PART_HINTS,
                   expected_text="exactly the ChatPose model's keys and shapes",
                   fix="Pass the merged ChatPose directory and the CLIP directory, and the preset of these weights "
                       "(--preset chatpose-13b for CHATPOSE-V0).")
    tokenizer = TextTokenizer.from_directory(merged, config.vocab)
    return tensors, tokenizer
