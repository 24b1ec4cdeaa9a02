"""unipose-sdk: fast, practical inference for UniPose-style multimodal human-pose models.

    from unipose_sdk import Generator
    with Generator.from_pretrained() as generator:          # the embedded unipose-tiny, offline
        result = generator.generate("a person squatting with both arms raised")

The public surface is below; names load on first use so `import unipose_sdk` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from unipose_sdk import errors
from unipose_sdk._version import __version__

_LAZY = {
    "Estimator": "unipose_sdk.tasks", "Generator": "unipose_sdk.tasks", "Editor": "unipose_sdk.tasks",
    "Describer": "unipose_sdk.tasks", "Assistant": "unipose_sdk.tasks", "UniPose": "unipose_sdk.session",
    "Pose": "unipose_sdk.body.pose",
    "EstimatorOptions": "unipose_sdk.options", "GeneratorOptions": "unipose_sdk.options",
    "EditorOptions": "unipose_sdk.options", "DescriberOptions": "unipose_sdk.options",
    "AssistantOptions": "unipose_sdk.options", "AssistantReply": "unipose_sdk.results",
    "ReplyPose": "unipose_sdk.results", "PastTurn": "unipose_sdk.tasks",
    "Backend": "unipose_sdk.options", "Device": "unipose_sdk.options",
    "EstimateResult": "unipose_sdk.results", "GenerateResult": "unipose_sdk.results",
    "EditResult": "unipose_sdk.results", "DescribeResult": "unipose_sdk.results",
    "load_example_pose": "unipose_sdk.body.examples", "render_poses_png": "unipose_sdk.body.render",
    "example_image_path": "unipose_sdk.body.examples", "load_example_image": "unipose_sdk.body.examples",
}

__all__ = ["__version__", "errors", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unipose_sdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
