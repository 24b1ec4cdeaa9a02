"""`unipose bench`: end-to-end latency of every task, per backend, against two PyTorch references.

    unipose bench --quick -o bench-results                     # smoke run: unipose-tiny, CPU, batch 1
    unipose bench --threads 2 --onnx-dir tiny-onnx -o results  # the CPU table, ONNX Runtime rows included
    unipose bench --device cuda --model unipose-7b --batch-size 1 8 -o results   # random bf16 7B weights
    unipose bench --threads 2 --onnx-dir tiny-onnx --precision float int8 int4 -o results  # quantized rows

Rows: reference 1 (transformers' Mistral, eager), reference 2 (this SDK's model as defined, unfused), the SDK's
default path, its compiled variant (CUDA, or --compile) and ONNX Runtime (--onnx-dir). Every row runs the public
task classes on the same weights and inputs. Writes latency_<model>_<device>.{json,md,png} under -o; the last
line on stdout is the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unipose_sdk.bench import BACKENDS, MODEL_NAMES, TASKS
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.formats import DTYPE_NAMES, weight_precision


def _model(value: str) -> str:
    if value in MODEL_NAMES or Path(value).is_dir():
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither {' nor '.join(MODEL_NAMES)} nor an existing model "
                                     "directory")


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=_model, default="unipose-tiny", metavar="NAME|DIR",
                        help="unipose-tiny (the embedded model), unipose-7b, chatpose-tiny or chatpose-13b (their "
                             "shapes, random weights: latency only) or a model directory (default %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: float32 (CPU), bfloat16 (CUDA)")
    parser.add_argument("--batch-size", type=_positive, nargs="+", default=None, metavar="N",
                        help="one or more batch sizes (default: 1 8; --quick: 1)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK",
                        help=f"{', '.join(TASKS)} (default: all)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=None, metavar="ROW",
                        help=f"run only these rows: {', '.join(BACKENDS)} (default: all that apply)")
    parser.add_argument("--runs", type=_positive, default=None, metavar="N", help="timed runs (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=None, metavar="N", help="warm-up runs (default 2; quick 1)")
    parser.add_argument("--max-new-tokens", type=_positive, default=None, metavar="N", help="default 32; quick 12")
    parser.add_argument("--quick", action="store_true", help="few runs, batch 1, short answers: a smoke run")
    parser.add_argument("--compile", action="store_true", help="on the CPU, also time the compiled fast path")
    parser.add_argument("--threads", type=_positive, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--onnx-dir", default=None, metavar="DIR",
                        help="a `unipose export` directory for the ONNX Runtime rows; with unipose-tiny a new DIR "
                             "is exported first")
    parser.add_argument("--precision", nargs="+", default=["float"], metavar="P",
                        help="ONNX Runtime rows per weight precision: float int8 int4 mixed (default float); each "
                             "quantized row runs a copy of --onnx-dir quantized beside it (DIR-int4, ...)")
    parser.add_argument("--name", default=None, help="output file stem (default latency_<model>_<device>)")
    parser.add_argument("--load-note", default="", metavar="TEXT", help="stored with the results")
    parser.add_argument("--overwrite", action="store_true", help="replace results of the same name in the output")
    parser.add_argument("-o", "--output", default="bench-results", metavar="DIR",
                        help="results directory, created if missing (default %(default)s)")


def _handle(args: argparse.Namespace) -> int:
    precisions = [weight_precision(p, "--precision") for p in args.precision]  # refused before any work
    if any(p != "float" for p in precisions) and not args.onnx_dir:
        raise InvalidInputError.make(f"--precision {' '.join(args.precision)} without --onnx-dir",
                                     "--onnx-dir DIR (the float export the quantized rows are made from)",
                                     "Add --onnx-dir DIR (with unipose-tiny, a new DIR is exported first).")
    out = Path(args.output)
    stem = args.name or f"latency_{Path(args.model).name.removeprefix('unipose-')}_{args.device}"
    existing = [p.name for p in (out / f"{stem}{s}" for s in (".json", ".md", ".png")) if p.exists()]
    if existing and not args.overwrite:
        raise InvalidInputError.make(f"-o {args.output} already holding {', '.join(existing)}", "a new output",
                                     "Pass --overwrite to replace them, or another -o / --name.")
    import torch

    from unipose_sdk.bench import bench, write_outputs

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quick = args.quick
    result = bench(
        model=args.model, device_name=args.device, batches=args.batch_size or ([1] if quick else [1, 8]),
        tasks=args.tasks, runs=args.runs or (3 if quick else 10),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        max_new_tokens=args.max_new_tokens or (12 if quick else 32), compile_cpu=args.compile,
        onnx_dir=args.onnx_dir, only=args.backends, dtype=args.dtype, argv=args.argv, precisions=precisions,
    )
    result["load_note"] = args.load_note
    write_outputs(result, out, stem)
    print(json.dumps(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="latency per task and backend against two PyTorch references",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(handler=_handle)
