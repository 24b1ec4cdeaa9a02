"""`unipose estimate | generate | edit | describe`: the four task classes on the command line.

Each writes, with `-o DIR`, per input: the pose (`.npz` with smplx keys and the official `.npy` of (22, 3, 3)
rotation matrices), a PNG rendering, and a JSON with the input, text, joints and timing, named `TASK_NNN.*`;
`--formats` picks the pose files (npz npy png by default; bvh and glb for Blender, Unity and web viewers).
`--json` prints one JSON document on stdout instead of the human summary; `--quiet` prints nothing but errors.
Several inputs run in batches of `--batch-size` with a progress bar.

Everything the user named is checked before the model loads (exit 2): texts, image and pose files (regular files
only), and the output directory (writable, not a file). A run never replaces earlier results: its files take the
next free numbers in the directory (`generate_000` taken: this run writes `generate_001`, ... as one contiguous
set, chosen under the directory's lock, so concurrent runs get separate numbers) and the command prints their
names; `--overwrite` writes from `TASK_000` instead, replacing the files of those names. The files of a run
appear together once every result is computed, or not at all: SIGTERM, SIGHUP and Ctrl-C leave no partial
result and no temporary file (exit 128 + the signal number, 130 for Ctrl-C; see `unipose_sdk.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.formats import DTYPE_NAMES
from unipose_sdk.models.config import min_sentence_logprob_flag, pose_code_temperature_flag, pose_guidance_flag
from unipose_sdk.results import DEFAULT_POSE_FORMATS, POSE_RESULT_FORMATS

OVERWRITE_HINT = "Pass --overwrite to replace them, or choose another -o directory."


# ---------------------------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan / inf are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounded_float(text: str, zero_allowed: bool) -> float:
    """A finite number above 0, or at least 0 where zero is allowed."""
    wanted = "a finite number >= 0" if zero_allowed else "a positive finite number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not (0 <= value if zero_allowed else 0 < value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _bounded_float(text, zero_allowed=False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _bounded_float(text, zero_allowed=True)


def fraction(text: str) -> float:
    """argparse type: a share between 0 and 1 (both included)."""
    value = _bounded_float(text, zero_allowed=True)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """--backend, --device and --dtype: where a command runs its model (the same flags in every command)."""
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES)


def add_output_flags(parser: argparse.ArgumentParser, output_help: str, required: bool = False,
                     metavar: str = "PATH",
                     overwrite_help: str = "replace existing output files of the same names") -> None:
    """The output part of the flag vocabulary: -o/--output, --overwrite, --json, --quiet."""
    parser.add_argument("-o", "--output", type=Path, required=required, metavar=metavar, help=output_help)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_output_flags(parser, "directory for the pose files, PNG and JSON (created if missing); a run takes the next "
                             "free numbers TASK_NNN, never replacing earlier results",
                     overwrite_help="number this run's files from TASK_000, replacing files of those names")
    parser.add_argument("--model", default=None, metavar="NAME|DIR",
                        help="'unipose-tiny' (the embedded default) or a model / export directory")
    add_runtime_flags(parser)
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for the model's calls (default: torch's, one per core); on a machine whose "
                             "cores are busy with other work, 1 avoids threads waiting on each other")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N",
                        help="most text tokens per answer (a pose answer's 82-token pose block is not counted)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="inputs per model batch")
    parser.add_argument("--formats", nargs="+", choices=POSE_RESULT_FORMATS, default=list(DEFAULT_POSE_FORMATS),
                        metavar="FORMAT", help=f"pose files each result writes besides its JSON, from "
                        f"{', '.join(POSE_RESULT_FORMATS)} (default: {' '.join(DEFAULT_POSE_FORMATS)}; bvh: a "
                        f"one-frame BVH clip, glb: skeleton and mannequin, needs the gltf extra)")


# ---------------------------------------------------------------------------------------------- running


def _stems(task: str, count: int) -> list[str]:
    return [f"{task}_{i:03d}" for i in range(count)]


def _check_output(args: argparse.Namespace) -> None:
    """Before the model loads: the -o directory exists or can be created, and is writable. Which names the run
    takes is decided when it writes (the next free numbers, or from 000 with --overwrite), so no name is refused."""
    if args.output is None:
        return
    from unipose_sdk.fileio import check_output_directory
    from unipose_sdk.results import check_formats

    check_formats(getattr(args, "formats", DEFAULT_POSE_FORMATS))

    check_output_directory(args.output)


def _check_pose_files(paths: Sequence[str]) -> None:
    from unipose_sdk.body.io import read_pose_file

    for path in paths:
        read_pose_file(path)  # every check a pose input gets, before the model loads


def _build(task_class: type, args: argparse.Namespace, **extra: Any) -> Any:
    return task_class.from_pretrained(model=args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                                      max_new_tokens=args.max_new_tokens, num_threads=args.threads, **extra)


def _chunks(items: Sequence[Any], batch_size: int, quiet: bool) -> Iterator[list[Any]]:
    """The inputs in batches of `batch_size` (each runs as one real batch), with a progress bar on stderr."""
    if batch_size < 1:
        raise InvalidInputError.make(f"--batch-size {batch_size}", "a positive integer", "Use e.g. --batch-size 8.")
    chunks = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    if len(items) > 1 and not quiet:
        from tqdm import tqdm

        with tqdm(total=len(items), unit="input", file=sys.stderr) as bar:
            for chunk in chunks:
                yield chunk
                bar.update(len(chunk))
    else:
        yield from chunks


def _report(task: str, labels: Sequence[str], results: Sequence[Any], args: argparse.Namespace) -> int:
    written: list[list[str]] = []
    if args.output is not None:
        from unipose_sdk.results import save_results

        saved = save_results(results, args.output, _stems(task, len(results)), overwrite=args.overwrite,
                             overwrite_hint=OVERWRITE_HINT, numbered=not args.overwrite,
                             formats=getattr(args, "formats", DEFAULT_POSE_FORMATS))
        written = [[str(p) for p in paths] for paths in saved]
    if args.json:
        payload = []
        for i, result in enumerate(results):
            item = result.to_dict()
            if written:
                item["files"] = written[i]
            payload.append(item)
        print(json.dumps({"task": task, "results": payload}, indent=2))
        return 0
    if args.quiet:
        return 0
    for i, (label, result) in enumerate(zip(labels, results)):
        pose_note = f" pose: {len(result.pose_codes)} tokens" if getattr(result, "pose", None) is not None else ""
        text_note = f" text: {result.text!r}" if result.text else ""
        print(f"[{i}] {label}:{pose_note}{text_note} ({result.latency_ms:.1f} ms, {result.run.backend} on "
              f"{result.run.device})")
        if written:
            print(f"    wrote {', '.join(written[i])}")
    if results and results[0].run.model_is_random:
        print("note: the embedded unipose-tiny is a RANDOM placeholder until its trained weights ship; "
              "its output is not meaningful.", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- commands


def _estimate(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Estimator
    from unipose_sdk.tasks.base import check_image_paths

    check_image_paths(args.images)
    _check_output(args)
    bbox = tuple(args.bbox) if args.bbox is not None else None
    with _build(Estimator, args) as estimator:
        results = []
        for chunk in _chunks(args.images, args.batch_size, args.json or args.quiet):
            results += estimator.estimate(chunk, bbox=[bbox] * len(chunk) if bbox else None)
    return _report("estimate", args.images, results, args)


def _generate(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Generator
    from unipose_sdk.tasks.base import check_text

    for text in args.texts:
        check_text(text, "text")
    _check_output(args)
    with _build(Generator, args, pose_code_temperature=args.pose_code_temperature,
                pose_guidance=args.pose_guidance, choose_candidates=not args.one_decoding) as generator:
        results = []
        for chunk in _chunks(args.texts, args.batch_size, args.json or args.quiet):
            results += generator.generate(chunk)
    return _report("generate", args.texts, results, args)


def _edit(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Editor
    from unipose_sdk.tasks.base import check_text

    check_text(args.instruction, "instruction")
    _check_pose_files([args.pose])
    _check_output(args)
    with _build(Editor, args, keep_unnamed_regions=not args.whole_answer) as editor:
        results = [editor.edit(args.pose, args.instruction)]
    return _report("edit", [f"{args.pose} + {args.instruction!r}"], results, args)


def _describe(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Describer
    from unipose_sdk.tasks.base import check_image_paths

    if args.pose or args.poses:
        _check_pose_files([args.pose] if args.pose else args.poses)
    else:
        check_image_paths([args.image] if args.image else args.images)
    _check_output(args)
    with _build(Describer, args, min_sentence_logprob=args.min_sentence_logprob,
                keep_all_sentences=args.all_sentences) as describer:
        if args.pose:
            result, label = describer.describe(pose=args.pose), args.pose
        elif args.image:
            result, label = describer.describe(image=args.image), args.image
        elif args.poses:
            result, label = describer.describe(poses=tuple(args.poses)), " vs ".join(args.poses)
        else:
            result, label = describer.describe(images=tuple(args.images)), " vs ".join(args.images)
    return _report("describe", [label], [result], args)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("estimate", help="estimate the 3D pose of the person in each image")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--bbox", nargs=4, type=finite_float, metavar=("X1", "Y1", "X2", "Y2"),
                   help="person box in pixels (applied to every image)")
    _add_common(p)
    p.set_defaults(handler=_estimate)

    p = subparsers.add_parser("generate", help="generate a pose from each text")
    p.add_argument("texts", nargs="+", help='descriptions, e.g. "a person squatting with both arms raised"')
    p.add_argument("--pose-code-temperature", type=pose_code_temperature_flag, default=None, metavar="T",
                   help="expected-code decoding: softmax of code logits / T, in [0.05, 10]; lower commits to the "
                        "likeliest codes, 1 is the plain expectation (default: the model's, see its card)")
    p.add_argument("--pose-guidance", type=pose_guidance_flag, default=None, metavar="W",
                   help="classifier-free guidance of the pose codes, in [0, 10]: logits + W x (logits - those of the "
                        "prompt without a description); 0 is none (default: the model's, see its card)")
    p.add_argument("--one-decoding", action="store_true",
                   help="decode once at the model's guidance and code temperature instead of choosing among its "
                        "candidate decodings with its text-pose matcher (so does giving either flag above)")
    _add_common(p)
    p.set_defaults(handler=_generate)

    p = subparsers.add_parser("edit", help="edit a pose by an instruction")
    p.add_argument("pose", help="pose file (.npz smplx / AMASS keys, official .npy, or .json)")
    p.add_argument("instruction", help='e.g. "raise your left arm above your head"')
    p.add_argument("--whole-answer", action="store_true",
                   help="return the model's whole answer (default: only the regions the instruction names change, "
                        "the rest of the input pose is kept)")
    _add_common(p)
    p.set_defaults(handler=_edit)

    p = subparsers.add_parser("describe", help="describe a pose, an image, or the difference of two")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--pose", help="pose file")
    group.add_argument("--image", help="image file")
    group.add_argument("--poses", nargs=2, metavar=("A", "B"), help="two pose files")
    group.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files")
    floor = p.add_mutually_exclusive_group()
    floor.add_argument("--min-sentence-logprob", type=min_sentence_logprob_flag, default=None, metavar="F",
                       help="keep only the sentences whose tokens have at least this mean log-probability, in "
                            "[-20, 0] (write --min-sentence-logprob=-1; default: the model's for images, see its "
                            "card, every sentence otherwise)")
    floor.add_argument("--all-sentences", action="store_true",
                       help="keep every sentence of the model's answer, whatever the model's default floor")
    _add_common(p)
    p.set_defaults(handler=_describe)
