"""`unipose evaluate`: all seven tasks on held-out synthetic data and the hand-written free-form prompts, next to
trivial baselines (JSON + markdown)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _evaluate(args: argparse.Namespace) -> int:
    from unipose_sdk.evaluation import evaluate, write_report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    report = evaluate(args.model, quick=args.quick, seed=args.seed, batch_size=args.batch_size,
                      progress=None if args.quiet else lambda message: print(message, file=sys.stderr))
    json_path, md_path = write_report(report, args.output)
    print(f"wrote {json_path} and {md_path}; beats all baselines: {report['beats_all_baselines']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a model on held-out synthetic data and free-form prompts")
    parser.add_argument("--model", default=None, metavar="NAME|DIR",
                        help="unipose-tiny (the embedded model, default) or an SDK model directory")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="report path without suffix (writes .json and .md), or a directory")
    parser.add_argument("--quick", action="store_true", help="a small subset (seconds instead of minutes)")
    parser.add_argument("--seed", type=int, default=0, help="training seed; the held-out data uses another")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=_evaluate)
