"""Typed results of the four task classes. Every result carries its timing (ms per stage) and what produced it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unipose_sdk.fileio import atomic_write_text

if TYPE_CHECKING:
    from unipose_sdk.body.pose import Pose


@dataclass
class RunInfo:
    """What produced a result: the backend and device actually used, and the model."""

    backend: str
    device: str
    model: str
    # True while the embedded default is a randomly initialised placeholder (its output means nothing).
    model_is_random: bool = False
    fallback: str | None = None  # set when the requested backend / device could not be used, saying what was


@dataclass
class _Result:
    timing_ms: dict[str, float]
    run: RunInfo
    text: str = ""  # the model's raw answer text (pose blocks elided)

    @property
    def latency_ms(self) -> float:
        return float(self.timing_ms.get("total", sum(self.timing_ms.values())))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "timing_ms": self.timing_ms, "run": self.run.__dict__}
        for name in ("pose", "source_pose"):
            pose = getattr(self, name, None)
            if pose is not None:
                out[f"{name}_axis_angle"] = pose.axis_angle()[0].tolist()
                out[f"{name}_joints_m"] = pose.joints()[0].tolist()
        if getattr(self, "pose_codes", None) is not None:
            out["pose_codes"] = list(self.pose_codes)  # type: ignore[attr-defined]
        return out

    def save(self, directory: str | Path, stem: str = "result") -> list[Path]:
        """Write `<stem>.json`, and for pose results `<stem>.npz` (smplx keys), `<stem>.npy` (official (22,3,3)
        rotation matrices) and `<stem>.png` (rendering). Each file is written atomically."""
        from unipose_sdk.body.render import render_poses_png

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        pose = getattr(self, "pose", None)
        if pose is not None:
            for suffix in (".npz", ".npy"):
                pose.save(directory / f"{stem}{suffix}")
                written.append(directory / f"{stem}{suffix}")
            source = getattr(self, "source_pose", None)
            poses = [source, pose] if source is not None else [pose]
            titles = ["source", "edited"] if source is not None else None
            render_poses_png(poses, directory / f"{stem}.png", titles=titles)
            written.append(directory / f"{stem}.png")
        json_path = directory / f"{stem}.json"
        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2))
        written.append(json_path)
        return written


@dataclass
class EstimateResult(_Result):
    pose: "Pose | None" = None
    pose_codes: list[int] = field(default_factory=list)

    @property
    def joints_m(self) -> np.ndarray:
        """[22, 3] joint positions in metres (built-in skeleton, pelvis at the origin)."""
        return self.pose.joints()[0].numpy() if self.pose is not None else np.zeros((0, 3), np.float32)


@dataclass
class GenerateResult(EstimateResult):
    prompt: str = ""


@dataclass
class EditResult(EstimateResult):
    source_pose: "Pose | None" = None
    instruction: str = ""


@dataclass
class DescribeResult(_Result):
    pass
