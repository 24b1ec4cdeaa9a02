"""The pipeline the task classes share: prompts -> (images) -> generation -> poses / text, timed per stage.

The task builds its `GenerationConfig` from its options once per call and hands it here; it reaches
`generation.generate` unchanged. Pose answers take the fast path by default: the prompt and the pose block run as
one forward over the weights (`one_pass`), and generation stops after the pose block (`stop_after_pose`, the
option `pose_only`): END, "." and eos carry no information.

ChatPose models (`config.family == "chatpose"`) answer through `_chatpose_answer`: the same stages, with poses
regressed by the pose head wherever an answer holds the pose token (`generation.pose_params_at_pose_tokens`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import unipose_sdk.generation as generation
from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import UniPoseError
from unipose_sdk.generation import GenerationConfig
from unipose_sdk.models.unipose import chatpose_rotmat
from unipose_sdk.session import UniPose
from unipose_sdk.text.prompts import PromptRow, Task
from unipose_sdk.text.sentences import confident_sentences
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
           encode_images: Callable[[], Tensor | None] | None = None, guided_task: Task | None = None,
           min_sentence_logprob: float | None = None) -> list[Answer]:
    """Build the prompts (and encode the images), generate, and for the pose tasks (`config.start_with_pose`:
    estimate, generate, edit) decode every answer's first pose block. One call holds the session lock.
    guided_task: the task whose prompt without a condition `config.pose_guidance` guides away from
    (`UniPose.generate`; ChatPose models have no pose codes to guide).
    min_sentence_logprob: the answers' texts keep only the sentences the model was this sure of
    (`text.sentences.confident_sentences`); None: all of them."""
    if session.config.family == "chatpose":
        return _chatpose_answer(session, build_prompts, config, encode_images, min_sentence_logprob)
    with session.lock:
        timer = StageTimer(session.runtime.device)
        with timer.stage("preprocess"):
            rows = build_prompts()
        image_embeds = None
        if encode_images is not None:
            with timer.stage("vision"):
                image_embeds = encode_images()
        outputs = session.generate(rows, image_embeds, config, on_stage=timer.stage, guided_task=guided_task)
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
    return [Answer(text=session.answer_text(out, min_sentence_logprob), timing_ms=timing_ms, batch_size=len(outputs),
                   decode_steps=decode_steps, pose_steps=pose_steps,
                   pose=None if poses is None else poses[i:i + 1], codes=None if codes is None else codes[i].tolist())
            for i, out in enumerate(outputs)]


def _chatpose_answer(session: UniPose, build_prompts: Callable[[], list[PromptRow]], config: GenerationConfig,
                     encode_images: Callable[[], Tensor | None] | None,
                     min_sentence_logprob: float | None = None) -> list[Answer]:
    """`answer` for a ChatPose model.

    Pose tasks (`config.start_with_pose`): the answer starts with the pose token `[SEG]`, forced as UniPose's pose
    tasks force BEGIN (ChatPose's answer list includes the bare "[SEG]."), so the pose is the head's output at the
    last prompt position; with `stop_after_pose` (pose_only) nothing is decoded, else the text after the pose
    token follows (decoded from the prompt plus [SEG]). Text tasks decode as configured. Either way every pose
    token of an answer gets its pose regressed; a result's `pose` is its answer's first.
    """
    vocab = session.config.vocab
    pose_token = vocab.pose_token_id
    with session.lock:
        timer = StageTimer(session.runtime.device)
        with timer.stage("preprocess"):
            rows = build_prompts()
        image_embeds = None
        if encode_images is not None:
            with timer.stage("vision"):
                image_embeds = encode_images()
        # The ChatPose vocabulary has no UniPose pose block: the loop runs plain text decoding.
        # Nor pose codes: pose guidance has nothing to guide.
        text_config = dataclasses.replace(config, start_with_pose=False, stop_after_pose=False, one_pass=False,
                                          pose_guidance=0.0)
        # A pose task's budget holds the text plus a pose block (PoseTaskOptions); ChatPose's block is [SEG] alone,
        # so the text after it gets the text budget the options were given.
        text_budget = config.max_new_tokens - generation.pose_block_length(vocab)
        llm, max_context = session.runtime.llm, session.config.llm.max_position_embeddings

        def decode(prompts: list[Tensor], generation_config: GenerationConfig) -> list[list[int]]:
            outputs = generation.generate(llm, prompts, vocab, generation_config, max_context=max_context,
                                          on_stage=timer.stage, sentence_end_ids=session.sentence_end_ids)
            if min_sentence_logprob is None:
                return [list(out.token_ids) for out in outputs]
            return [confident_sentences(*out.ids_and_logprobs(without=vocab.eos_id), session.sentence_end_ids,
                                        min_sentence_logprob) for out in outputs]

        with timer.stage("llm"), torch.inference_mode():
            embeds = session.embed_rows(rows, image_embeds)
            if not config.start_with_pose:
                answers = decode(embeds, text_config)
            elif config.stop_after_pose or text_budget < 1:
                answers = [[pose_token] for _ in rows]
            else:
                token = llm.embed(torch.tensor([[pose_token]], device=embeds[0].device))[0]
                extended = [torch.cat([row, token.to(row.dtype)]) for row in embeds]
                rest = decode(extended, dataclasses.replace(text_config, max_new_tokens=text_budget))
                answers = [[pose_token, *ids] for ids in rest]
        poses: list[Pose | None] = [None] * len(rows)
        if any(pose_token in ids for ids in answers):
            with timer.stage("pose_head"), torch.inference_mode():
                for b, ids in enumerate(answers):
                    params = generation.pose_params_at_pose_tokens(llm, embeds[b], ids, pose_token)
                    if params.shape[0]:
                        poses[b] = Pose.from_rotmat(chatpose_rotmat(params[:1].cpu()))
        timing_ms = timer.timing_ms()
    decode_steps = timer.counts.get("decode", 0)
    return [Answer(text=session.prompts.answer_text(ids), timing_ms=timing_ms, batch_size=len(rows),
                   decode_steps=decode_steps, pose_steps=0, pose=poses[b], codes=[] if poses[b] is not None else None)
            for b, ids in enumerate(answers)]
