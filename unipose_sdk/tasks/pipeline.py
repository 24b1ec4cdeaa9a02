"""The pipeline the task classes share: prompts -> (images) -> generation -> poses / text, timed per stage.

The task builds its `GenerationConfig` from its options once per call and hands it here; it reaches
`generation.generate` unchanged. Pose answers take the fast path by default: the prompt and the pose block run as
one forward over the weights (`one_pass`), and generation stops after the pose block (`stop_after_pose`, the
option `pose_only`): END, "." and eos carry no information.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import UniPoseError
from unipose_sdk.generation import GenerationConfig
from unipose_sdk.session import UniPose
from unipose_sdk.text.prompts import PromptRow
from unipose_sdk.timing import StageTimer


@dataclass
class Answer:
    """One item's answer with its batch's measurements (the fields the results carry under the same names)."""

    text: str
    timing_ms: dict[str, float]
    batch_size: int
    decode_steps: int
    pose_steps: int
    pose: Pose | None = None
    codes: list[int] | None = None

    def measurements(self) -> dict[str, Any]:
        """The result fields of the same names."""
        return {"timing_ms": self.timing_ms, "batch_size": self.batch_size, "decode_steps": self.decode_steps,
                "pose_steps": self.pose_steps}


def answer(session: UniPose, build_prompts: Callable[[], list[PromptRow]], config: GenerationConfig,
           encode_images: Callable[[], Tensor | None] | None = None) -> list[Answer]:
    """Build the prompts (and encode the images), generate, and for the pose tasks (`config.start_with_pose`:
    estimate, generate, edit) decode every answer's first pose block. One call holds the session lock."""
    with session.lock:
        timer = StageTimer(session.runtime.device)
        with timer.stage("preprocess"):
            rows = build_prompts()
        image_embeds = None
        if encode_images is not None:
            with timer.stage("vision"):
                image_embeds = encode_images()
        outputs = session.generate(rows, image_embeds, config, on_stage=timer.stage)
        poses, codes = None, None
        if config.start_with_pose:
            missing = [i for i, out in enumerate(outputs) if not out.pose_codes]
            if missing:
                raise UniPoseError(f"the model produced no pose block for batch items {missing}; expected one per "
                                   f"item (the answer was forced to start with one). This is a bug: please report "
                                   f"it.")
            with timer.stage("detokenize"):
                codes = torch.stack([out.pose_codes[0] for out in outputs])  # [B, 80]
                poses = session.decode_poses(codes)
        timing_ms = timer.timing_ms()
    # The counts are the runs of the loop's "decode" and "pose_step" stages.
    decode_steps, pose_steps = timer.counts.get("decode", 0), timer.counts.get("pose_step", 0)
    return [Answer(text=session.answer_text(out), timing_ms=timing_ms, batch_size=len(outputs),
                   decode_steps=decode_steps, pose_steps=pose_steps,
                   pose=None if poses is None else poses[i:i + 1], codes=None if codes is None else codes[i].tolist())
            for i, out in enumerate(outputs)]
