"""`unipose data make`: generate the synthetic training set for unipose-tiny (see unipose_sdk.data.dataset)."""

from __future__ import annotations

import argparse
import json


def _make(args: argparse.Namespace) -> int:
    from unipose_sdk.data.dataset import make_dataset, resolve_size

    size: str | int = args.size if not args.size.isdigit() else int(args.size)
    resolve_size(size)  # bad sizes fail before any work
    manifest = make_dataset(args.output, seed=args.seed, size=size, workers=args.workers,
                            progress=not args.quiet, overwrite=args.overwrite)
    splits = ", ".join(f"{s}: {v['poses']} poses + {v['pairs']} pairs" for s, v in manifest["splits"].items())
    timing = manifest["timing"]
    print(f"wrote {args.output} ({splits}) in {timing['seconds']:.1f} s, {timing['images_per_second']:.1f} images/s")
    if args.json:
        print(json.dumps(manifest, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="generate synthetic training data")
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True
    make = sub.add_parser("make", help="write train/val/test sets for all seven tasks")
    make.add_argument("-o", "--output", required=True, help="output directory (new or empty)")
    make.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical files")
    make.add_argument("--size", default="small", help="tiny | small | medium | N (training poses)")
    make.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.add_argument("--json", action="store_true", help="print the manifest")
    make.set_defaults(handler=_make)
