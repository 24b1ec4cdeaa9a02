"""The latency benchmark as a library: the PyTorch references (references.py), the loop that drives the public task
classes on every backend (harness.py) and what a run writes (report.py). `unipose bench` parses and calls `bench`.

    from unipose_sdk.bench import bench, write_outputs
    result = bench(model="unipose-tiny", batches=[1], runs=5, warmup=1)
    write_outputs(result, Path("results"))

The choices (choices.py) are plain tuples; the other names load on first use, so the command line can read the
choices without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from unipose_sdk.bench.choices import BACKENDS, MODEL_NAMES, POSE_TASKS, TASKS

_LAZY = {
    "bench": "harness", "load_onnx_session": "harness", "make_backends": "harness",
    "EagerSDK": "references", "HFMistral": "references", "ReferenceRuntime": "references", "load_parts": "references",
    "reference_sessions": "references", "markdown": "report", "write_outputs": "report",
}

__all__ = ["BACKENDS", "MODEL_NAMES", "POSE_TASKS", "TASKS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
