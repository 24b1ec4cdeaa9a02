"""`unipose estimate | generate | edit | describe`: the four task classes on the command line.

Each writes, with `-o DIR`, per input: the pose (`.npz` with smplx keys and the official `.npy` of (22, 3, 3)
rotation matrices), a PNG rendering, and a JSON with text, joints and timing. `--json` prints one JSON document
on stdout instead of the human summary. Several inputs run in batches of `--batch-size` with a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from unipose_sdk.errors import InvalidInputError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, help="directory for the pose files, PNG and JSON")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded unipose-tiny)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--max-new-tokens", type=int, default=128, help="cap on generated text tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="inputs per model batch")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _build(task_class: type, args: argparse.Namespace, **extra: Any) -> Any:
    return task_class.from_pretrained(model=args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                                      max_new_tokens=args.max_new_tokens, **extra)


def _in_batches(items: Sequence[Any], batch_size: int, run: Callable[[list[Any]], list[Any]],
                quiet: bool) -> list[Any]:
    if batch_size < 1:
        raise InvalidInputError.make(f"--batch-size {batch_size}", "a positive integer", "Use e.g. --batch-size 8.")
    chunks = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    results: list[Any] = []
    if len(items) > 1 and not quiet:
        from tqdm import tqdm

        with tqdm(total=len(items), unit="input", file=sys.stderr) as bar:
            for chunk in chunks:
                results += run(chunk)
                bar.update(len(chunk))
    else:
        for chunk in chunks:
            results += run(chunk)
    return results


def _report(task: str, labels: Sequence[str], results: Sequence[Any], args: argparse.Namespace) -> int:
    written: list[list[str]] = []
    if args.output is not None:
        for i, result in enumerate(results):
            written.append([str(p) for p in result.save(args.output, stem=f"{task}_{i:03d}")])
    if args.json:
        payload = []
        for i, (label, result) in enumerate(zip(labels, results)):
            item = {"input": label, **result.to_dict()}
            if written:
                item["files"] = written[i]
            payload.append(item)
        print(json.dumps({"task": task, "results": payload}, indent=2))
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


def _estimate(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Estimator

    bbox = tuple(args.bbox) if args.bbox is not None else None
    with _build(Estimator, args) as estimator:
        results = _in_batches(args.images, args.batch_size,
                              lambda chunk: estimator.estimate(chunk, bbox=[bbox] * len(chunk) if bbox else None),
                              args.json)
    return _report("estimate", args.images, results, args)


def _generate(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Generator

    with _build(Generator, args) as generator:
        results = _in_batches(args.texts, args.batch_size, generator.generate, args.json)
    return _report("generate", args.texts, results, args)


def _edit(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Editor

    with _build(Editor, args) as editor:
        results = [editor.edit(args.pose, args.instruction)]
    return _report("edit", [f"{args.pose} + {args.instruction!r}"], results, args)


def _describe(args: argparse.Namespace) -> int:
    from unipose_sdk.tasks import Describer

    with _build(Describer, args) as describer:
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
    p.add_argument("--bbox", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"),
                   help="person box in pixels (applied to every image)")
    _add_common(p)
    p.set_defaults(handler=_estimate)

    p = subparsers.add_parser("generate", help="generate a pose from each text")
    p.add_argument("texts", nargs="+", help='descriptions, e.g. "a person squatting with both arms raised"')
    _add_common(p)
    p.set_defaults(handler=_generate)

    p = subparsers.add_parser("edit", help="edit a pose by an instruction")
    p.add_argument("pose", help="pose file (.npz smplx / AMASS keys, official .npy, or .json)")
    p.add_argument("instruction", help='e.g. "raise your left arm above your head"')
    _add_common(p)
    p.set_defaults(handler=_edit)

    p = subparsers.add_parser("describe", help="describe a pose, an image, or the difference of two")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--pose", help="pose file")
    group.add_argument("--image", help="image file")
    group.add_argument("--poses", nargs=2, metavar=("A", "B"), help="two pose files")
    group.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files")
    _add_common(p)
    p.set_defaults(handler=_describe)
