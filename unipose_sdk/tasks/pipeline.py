"""The pipeline the task classes share: prompts -> (images) -> generation -> poses / text, timed per stage.

Pose answers take the fast path by default: the prompt and the pose block run as one forward over the weights
(`one_pass`), and generation stops after the pose block (`pose_only`): END, "." and eos carry no information.
`options.pose_only=False` also decodes the trailing text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import UniPoseError
from unipose_sdk.options import BaseOptions
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
                   force_pose: bool, **generate_options: object) -> tuple[list, Timer]:
    """Build prompts and images, then generate; the caller holds the session lock."""
    timer = Timer(session.runtime.device)
    with timer.stage("preprocess"):
        rows = build_prompts()
    image_embeds = None
    if encode_images is not None:
        with timer.stage("vision"):
            image_embeds = encode_images()
    outputs, stages = session.generate(rows, image_embeds, max_new_tokens, force_pose=force_pose, **generate_options)
    timer.add(stages)
    return outputs, timer


def answer_with_poses(session: UniPose, build_prompts: Callable[[], list[PromptRow]], max_new_tokens: int,
                      encode_images: Callable[[], Tensor | None] | None = None, *,
                      options: BaseOptions | None = None, pose_only: bool | None = None,
                      one_pass: bool | None = None) -> list[Answer]:
    """For the pose tasks (estimate, generate, edit): the answer starts with a pose block.

    pose_only / one_pass: explicit values win, then `options`, then the defaults (both True)."""
    vocab = session.config.vocab
    if pose_only is None:
        pose_only = options.pose_only if options is not None else True
    if one_pass is None:
        one_pass = options.one_pass if options is not None else True
    # "<pose>." + eos needs 84 ids: never let a small max_new_tokens cut the pose block.
    budget = max(max_new_tokens, vocab.num_pose_tokens + 4)
    with session.lock:
        outputs, timer = run_generation(session, build_prompts, encode_images, budget, force_pose=True,
                                        one_pass=one_pass, stop_after_pose=pose_only)
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
    """For the description tasks: free text (no one-pass speculation: a text answer rarely starts with a pose,
    and speculating would add 81 rows to every prefill)."""
    with session.lock:
        outputs, timer = run_generation(session, build_prompts, encode_images, max_new_tokens, force_pose=False)
        timing = timer.finish(len(outputs))
    return [Answer(text=session.answer_text(out), timing_ms=timing) for out in outputs]
