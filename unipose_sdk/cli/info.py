"""`unipose info`: versions, available backends and devices; with --memory, the memory plan of a model.

    unipose info
    unipose info --memory --model unipose-7b --precision mixed          # weights, KV cache, devices it fits
    unipose info --memory --model out/7b-int4 --json                    # an export: its own precision
"""

from __future__ import annotations

import argparse
import json
import platform


def _version(distribution: str) -> str | None:
    import importlib.metadata  # here, not at the top: every command's parser is built for `unipose --help`

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_info() -> dict:
    import torch

    import unipose_sdk.kernels  # noqa: F401 - files "fused" among the attention implementations listed
    from unipose_sdk import __version__
    from unipose_sdk.models.attention import available_attention_impls

    cuda_devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda_devices.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                                 "memory_gib": round(props.total_memory / 2**30, 1)})
    versions = {"unipose-sdk": __version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "triton", "smplx",
                 "transformers", "tokenizers"):
        versions[dist] = _version(dist)
    backends = {"torch": True, "onnxruntime": versions["onnxruntime"] is not None
                or versions["onnxruntime-gpu"] is not None, "tensorrt": versions["tensorrt"] is not None}
    return {
        "versions": versions,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_threads": torch.get_num_threads(),
        "devices": {"cpu": True, "cuda": cuda_devices},
        "backends": backends,
        "attention_impls": available_attention_impls(),
        "default_model": _default_model_status(),
    }


def _default_model_status() -> dict:
    """What `model=None` loads, read off the shipped files (nothing is loaded here)."""
    from unipose_sdk.checkpoint.embedded import EMBEDDED_DIR, embedded_model_is_trained

    trained = embedded_model_is_trained()
    return {
        "name": "unipose-tiny",
        "path": str(EMBEDDED_DIR),
        "trained": trained,
        "pose_tokenizer_trained": (EMBEDDED_DIR / "pose_tokenizer" / "model.safetensors").is_file(),
        "note": "trained embedded model" if trained else
        "RANDOM placeholder: the LLM and vision weights are seeded random until the trained model ships",
    }


def _memory(args: argparse.Namespace) -> int:
    from unipose_sdk import memory

    plan = memory.plan_memory(args.model, args.precision, args.dtype, args.batch)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else memory.format_plan(plan))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.memory:
        args.model = args.model or "unipose-7b"
        return _memory(args)
    for flag, value in (("--model", args.model), ("--precision", args.precision)):
        if value is not None:
            from unipose_sdk.errors import InvalidInputError

            raise InvalidInputError.make(f"{flag} {value} without --memory", "--memory with it",
                                         f"Run unipose info --memory {flag} {value}.")
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"unipose-sdk {info['versions']['unipose-sdk']} on {info['platform']}, python {info['versions']['python']}")
    print("versions:")
    for name, version in info["versions"].items():
        print(f"  {name:16s} {version or '-- not installed'}")
    print("backends:")
    for name, ok in info["backends"].items():
        print(f"  {name:16s} {'available' if ok else 'not installed'}")
    print("devices:")
    print(f"  cpu              {info['cpu_threads']} threads")
    if info["devices"]["cuda"]:
        for dev in info["devices"]["cuda"]:
            print(f"  cuda:{dev['index']:<11d} {dev['name']} (sm {dev['capability']}, {dev['memory_gib']} GiB)")
    else:
        print("  cuda             none")
    print(f"attention:         {', '.join(info['attention_impls'])}")
    model = info["default_model"]
    print(f"default model:     {model['name']} ({model['note']}; pose tokenizer "
          f"{'trained' if model['pose_tokenizer_trained'] else 'RANDOM'})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print versions, available backends and devices (--memory: the "
                                   "memory a model needs and the devices it fits)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--memory", action="store_true",
                        help="print the memory plan of --model: weights per component, KV cache, runtime overhead, "
                             "the devices it fits")
    parser.add_argument("--model", default=None, metavar="NAME|DIR",
                        help="with --memory: unipose-7b, unipose-tiny, or a model / export directory (default "
                             "unipose-7b)")
    parser.add_argument("--precision", default=None, metavar="P",
                        help="with --memory: float | int8 | int4 | mixed (default: an export's own, else float)")
    parser.add_argument("--dtype", default="float16", metavar="D",
                        help="with --memory: dtype of the float weights, activations and KV cache (default float16)")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="with --memory: sequences at once")
    parser.set_defaults(handler=_run)
