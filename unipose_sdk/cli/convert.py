"""`unipose convert`: the official UniPose release (or a merged Hugging Face directory) -> the SDK format.

    unipose convert --base cache/llava-v1.6-mistral-7b --unipose cache/unipose \\
        --clip cache/clip-vit-large-patch14-336 --tokenhmr cache/tokenhmr_model.ckpt \\
        --pose-vqvae cache/pose_vqvae/best_MPJPE.ckpt -o models/unipose-7b
    unipose convert --merged some/merged-unipose --tokenhmr ... --pose-vqvae ... -o models/unipose-7b
    unipose convert --family chatpose --merged cache/CHATPOSE-V0 --clip cache/clip-vit-large-patch14-336 \
        -o models/chatpose-13b

The output directory (config.json + model.safetensors + tokenizer.json) is written under a temporary name and
renamed into place when complete.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from unipose_sdk.errors import InvalidOptionError
from unipose_sdk.formats import DTYPE_NAMES
from unipose_sdk.models.config import FAMILIES, PRESETS, get_preset

_DTYPES = ("auto", *DTYPE_NAMES)


def _run(args: argparse.Namespace) -> int:
    from unipose_sdk.checkpoint.official import load_official_state, paths_from_strings
    from unipose_sdk.checkpoint.sdk_format import dtype_from_name, save_state_dict

    started = time.perf_counter()
    config = get_preset(args.preset or ("chatpose-13b" if args.family == "chatpose" else "unipose-7b"))
    if config.family != args.family:
        raise InvalidOptionError.make(f"--preset {config.name} (a {config.family} preset) with --family {args.family}",
                                      f"a {args.family} preset", f"Pick a {args.family} preset or drop --preset.")
    paths = paths_from_strings(base=args.base, unipose=args.unipose, merged=args.merged, clip=args.clip,
                               tokenhmr=args.tokenhmr, pose_vqvae=args.pose_vqvae)
    # The checked state dict is written as it is: no model needs to be built to convert.
    if args.family == "chatpose":
        from unipose_sdk.checkpoint.chatpose import load_chatpose_state

        unused = [f"--{k.replace('_', '-')}" for k in ("base", "unipose", "tokenhmr", "pose_vqvae")
                  if getattr(args, k) is not None]
        if unused:
            raise InvalidOptionError.make(f"{', '.join(unused)} with --family chatpose",
                                          "--merged DIR --clip DIR (the ChatPose release)",
                                          "Those flags name UniPose pieces; drop them.")
        tensors, tokenizer = load_chatpose_state(paths.merged, paths.clip, config)
    else:
        tensors, tokenizer = load_official_state(paths, config)
    # auto: the LLM's stored dtype for every LLM / vision tensor (non-LoRA files are often float32 beside a
    # bfloat16 base; one dtype per model keeps the runtime simple).
    auto = tensors["llm.model.layers.0.self_attn.q_proj.weight"].dtype
    dtype = auto if args.dtype == "auto" else dtype_from_name(args.dtype)
    source = " + ".join(f"{k}={v}" for k, v in vars(paths).items() if v is not None)
    out = save_state_dict(tensors, config, Path(args.output), tokenizer, dtype=dtype, source=f"converted from {source}",
                          overwrite=args.overwrite)
    print(f"wrote {out} ({len(tensors)} tensors, preset {config.name}) in {time.perf_counter() - started:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert the official UniPose or ChatPose release (or a merged HF directory) to the SDK format",
        description="Each downloaded piece is named by its flag. UniPose: either --merged, or --base and --unipose. "
                    "ChatPose (--family chatpose): --merged (the released merged model) and --clip.")
    parser.add_argument("--base", metavar="DIR", help="llava-v1.6-mistral-7b Hugging Face directory")
    parser.add_argument("--unipose", metavar="DIR",
                        help="UniPose directory: tokenizer, adapter_config.json, adapter_model.*, "
                             "non_lora_trainables.bin")
    parser.add_argument("--merged", metavar="DIR", help="an already-merged UniPose model in Hugging Face format, or "
                                                        "the released ChatPose model (CHATPOSE-V0)")
    parser.add_argument("--clip", metavar="DIR", help="clip-vit-large-patch14-336 directory (UniPose: tower weights "
                                                      "the base does not hold; ChatPose: the whole tower)")
    parser.add_argument("--tokenhmr", metavar="FILE", help="tokenhmr_model.ckpt (Pose-ViT backbone)")
    parser.add_argument("--pose-vqvae", metavar="FILE", help="pose VQ-VAE Lightning checkpoint (best_MPJPE.ckpt)")
    parser.add_argument("-o", "--output", metavar="OUT", required=True, help="output directory (SDK format)")
    parser.add_argument("--family", default="unipose", choices=FAMILIES,
                        help="which released model: unipose (default) or chatpose (--merged CHATPOSE-V0 --clip DIR)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="model sizes (default: unipose-7b, or chatpose-13b with --family chatpose)")
    parser.add_argument("--dtype", default="auto", choices=_DTYPES,
                        help="storage dtype of the LLM and vision weights (auto: as in the files)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.set_defaults(handler=_run)
