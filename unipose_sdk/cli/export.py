"""`unipose export`: a model -> a directory of validated ONNX graphs (and TensorRT engines beside them).

    unipose export -o out/tiny-onnx                                   # the embedded unipose-tiny, fp32
    unipose export --model models/unipose-7b --dtype float16 -o out/7b-fp16
    unipose export --model models/unipose-7b --format engine --dtype float16 -o out/7b-trt   # needs TensorRT

The directory is written under a temporary name and renamed into place once every graph passed validation.
"""

from __future__ import annotations

import argparse

from unipose_sdk.export.specs import OPSET_RANGE
from unipose_sdk.formats import DTYPE_NAMES, EXPORT_FORMATS, dtype

_EMISSIONS = ("decomposed", "attention23", "custom")


def _run(args: argparse.Namespace) -> int:
    from unipose_sdk.export.onnx import export_onnx

    emission = args.attention
    if args.format == "engine":
        from unipose_sdk.export.tensorrt import attention_emission_for, require_tensorrt

        trt = require_tensorrt()  # fail before a long ONNX export when TensorRT is missing
        emission = emission or attention_emission_for(trt.__version__)
    report = export_onnx(args.model, args.output, precision=dtype(args.dtype).short, emission=emission or "decomposed",
                         opset=args.opset, validate=not args.no_validate, overwrite=args.overwrite,
                         progress=not args.quiet)
    print(report.table())
    if args.format == "engine":
        from unipose_sdk.export.tensorrt import build_engines

        engines = build_engines(args.output)
        print(f"built {len(engines)} TensorRT engines in {args.output}")
    print(f"wrote {report.directory}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model to ONNX graphs (or TensorRT engines)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, metavar="M",
                        help="SDK model directory, or unipose-tiny (default: the embedded model)")
    parser.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES,
                        help="LLM / vision dtype (pose tokenizer graphs stay float32); float16 for GPUs")
    parser.add_argument("--attention", default=None, choices=_EMISSIONS,
                        help="attention form in the graphs (default: decomposed; for engines, what the installed "
                             "TensorRT imports)")
    low, high = OPSET_RANGE
    parser.add_argument("--opset", type=int, default=low, metavar="N",
                        help=f"ONNX opset of the graphs, {low}..{high} (the attention23 emission needs 23); "
                             "values outside are refused before the export starts")
    parser.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs torch check")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    parser.set_defaults(handler=_run)
