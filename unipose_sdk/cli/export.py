"""`unipose export`: a model -> a directory of validated ONNX graphs (and TensorRT engines beside them).

    unipose export -o out/tiny-onnx                                   # the embedded unipose-tiny, fp32
    unipose export --model models/unipose-7b --dtype float16 -o out/7b-fp16
    unipose export --model models/unipose-7b --format engine --dtype float16 -o out/7b-trt   # needs TensorRT
    unipose export --precision int4 -o out/tiny-int4                  # int4 weights (MatMulNBits, block 128)

--precision stores the weights quantized: int4 (the language model's MatMuls as 4-bit blocks, the fastest
decoding and the smallest files), int8 (dynamic int8 MatMuls: the fastest prompt and pose block), mixed (int4
language model, int8 vision towers); the pose tokenizer stays float. Each quantized graph is compared with its
float graph (error and token agreement in the table). With --format engine the weights go into the QDQ form
TensorRT reads (int8 weights behind DequantizeLinear).

The directory is written under a temporary name and renamed into place once every graph passed validation.
"""

from __future__ import annotations

import argparse

from unipose_sdk.export.specs import OPSET_RANGE
from unipose_sdk.formats import DTYPE_NAMES, EXPORT_FORMATS, WEIGHT_PRECISIONS, dtype, weight_precision

_EMISSIONS = ("decomposed", "attention23", "custom")


def _run(args: argparse.Namespace) -> int:
    from unipose_sdk.export.onnx import export_onnx

    weights = weight_precision(args.precision, "--precision")  # refused before anything is loaded
    from unipose_sdk.export.artifacts import is_export_directory

    if args.model is not None and is_export_directory(args.model):
        return _quantize_export(args, weights)
    emission = args.attention
    if args.format == "engine":
        from unipose_sdk.export.tensorrt import attention_emission_for, require_tensorrt

        trt = require_tensorrt()  # fail before a long ONNX export when TensorRT is missing
        emission = emission or attention_emission_for(trt.__version__)
    report = export_onnx(args.model, args.output, precision=dtype(args.dtype).short, emission=emission or "decomposed",
                         opset=args.opset, validate=not args.no_validate, overwrite=args.overwrite,
                         progress=not args.quiet, weights=weights, block_size=args.block_size,
                         quant_form="qdq" if args.format == "engine" else "onnxruntime")
    print(report.table())
    if args.format == "engine":
        from unipose_sdk.export.tensorrt import build_engines

        engines = build_engines(args.output)
        print(f"built {len(engines)} TensorRT engines in {args.output}")
    print(f"wrote {report.directory}")
    return 0


def _quantize_export(args: argparse.Namespace, weights: str) -> int:
    """--model names a float export: its graphs are quantized into -o (no torch model is loaded)."""
    from unipose_sdk.export.onnx import quantize_export

    if args.format == "engine":
        from unipose_sdk.export.tensorrt import require_tensorrt

        require_tensorrt()
    report = quantize_export(args.model, args.output, weights, block_size=args.block_size,
                             form="qdq" if args.format == "engine" else "onnxruntime", validate=not args.no_validate,
                             overwrite=args.overwrite)
    print(report.table())
    if args.format == "engine":
        from unipose_sdk.export.tensorrt import build_engines

        print(f"built {len(build_engines(args.output))} TensorRT engines in {args.output}")
    print(f"wrote {report.directory}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a model to ONNX graphs (or TensorRT engines)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, metavar="M",
                        help="SDK model directory, or unipose-tiny (default: the embedded model); or a float export "
                             "directory, whose graphs --precision quantizes into -o")
    parser.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES,
                        help="LLM / vision dtype (pose tokenizer graphs stay float32); float16 for GPUs")
    parser.add_argument("--precision", default="float", metavar="P",
                        help=f"weight storage: {' | '.join(WEIGHT_PRECISIONS)} (default float; see above)")
    parser.add_argument("--block-size", type=int, default=128, metavar="N",
                        help="int4 block length along the input axis, a power of two >= 16 (default 128)")
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
