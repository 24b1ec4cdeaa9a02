"""`unipose info`: versions, available backends and devices."""

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


def _run(args: argparse.Namespace) -> int:
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
    parser = subparsers.add_parser("info", help="print versions, available backends and devices")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_run)
