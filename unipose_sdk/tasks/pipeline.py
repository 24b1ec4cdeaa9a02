"""The pipeline the task classes share: prompts -> (images) -> generation -> poses / text, timed per stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import UniPoseError
from unipose_sdk.session import UniPose
from unipose_sdk.tasks.base import Timer
from unipose_sdk.text.prompts import PromptRow


@dataclass
class Answer:
    text: str
    timing_ms: dict[str, float]
    pose: Pose | None = None
    codes: list[int] | None = None


def run_generation(session: UniPose, build_prompts: Callable[[], list[PromptRow]],
                   encode_images: Callable[[], Tensor | None] | None, max_new_tokens: int,
                   force_pose: bool) -> tuple[list, Timer]:
    """Build prompts and images, then generate; the whole call holds the session lock."""
    timer = Timer(session.runtime.device)
    with timer.stage("preprocess"):
        rows = build_prompts()
    image_embeds = None
    if encode_images is not None:
        with timer.stage("vision"):
            image_embeds = encode_images()
    outputs, stages = session.generate(rows, image_embeds, max_new_tokens, force_pose=force_pose)
    timer.add(stages)
    return outputs, timer


def answer_with_poses(session: UniPose, build_prompts: Callable[[], list[PromptRow]], max_new_tokens: int,
                      encode_images: Callable[[], Tensor | None] | None = None) -> list[Answer]:
    """For the pose tasks (estimate, generate, edit): the answer starts with a pose block."""
    vocab = session.config.vocab
    # "<pose>." + eos needs 84 ids: never let a small max_new_tokens cut the pose block.
    budget = max(max_new_tokens, vocab.num_pose_tokens + 4)
    with session.lock:
        outputs, timer = run_generation(session, build_prompts, encode_images, budget, force_pose=True)
        missing = [i for i, out in enumerate(outputs) if not out.pose_codes]
        if missing:
            raise UniPoseError(f"the model produced no pose block for batch items {missing}; expected one per "
                               f"item (the answer was forced to start with one). This is a bug: please report it.")
        with timer.stage("detokenize"):
            codes = torch.stack([out.pose_codes[0] for out in outputs])  # [B, 80]
            poses = session.decode_poses(codes)
        timing = timer.finish(len(outputs))
    return [Answer(text=session.answer_text(out), timing_ms=timing, pose=poses[i:i + 1], codes=codes[i].tolist())
            for i, out in enumerate(outputs)]


def answer_with_text(session: UniPose, build_prompts: Callable[[], list[PromptRow]], max_new_tokens: int,
                     encode_images: Callable[[], Tensor | None] | None = None) -> list[Answer]:
    """For the description tasks: free text."""
    with session.lock:
        outputs, timer = run_generation(session, build_prompts, encode_images, max_new_tokens, force_pose=False)
        timing = timer.finish(len(outputs))
    return [Answer(text=session.answer_text(out), timing_ms=timing) for out in outputs]
