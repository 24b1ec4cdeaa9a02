"""Describer: pose / image / difference of two poses / difference of two images -> text."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import InvalidInputError
from unipose_sdk.options import DescriberOptions
from unipose_sdk.results import DescribeResult, describe_input
from unipose_sdk.tasks.base import TaskBase, as_batch, as_pose, check_image_paths, split_batch
from unipose_sdk.tasks.images import images_to_embeds
from unipose_sdk.tasks.pipeline import answer
from unipose_sdk.text.prompts import Task
from unipose_sdk.text.sentences import drop_repeated_sentences


def stated_topics(clause: str) -> set[tuple[str, str]]:
    """What a clause states something about, in the data engine's phrasing: its facts' (kind, subject) pairs
    (empty for other wording). A pose has one level per pair ("arm_direction", "left"), so a later clause about
    pairs already stated either restates the earlier one or contradicts it ("Their left arm is pointing forward.
    ... Their left arm is pointing down."): the description keeps the first."""
    from unipose_sdk.data.captions import parse_facts

    return {(fact.kind, fact.subject) for fact in parse_facts(clause)}


_SINGLE = (str, Pose, np.ndarray, torch.Tensor)


def _pairs(value: Any, what: str) -> tuple[list[tuple[Any, Any]], bool]:
    """(a, b) -> one pair; [(a, b), ...] -> a batch of pairs."""
    if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
        return [value], True
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return [tuple(p) for p in value], False
    raise InvalidInputError.make(f"{what}={type(value).__name__}", f"a pair ({what[:-1]}_a, {what[:-1]}_b) or a list "
                                 "of such pairs", f"Pass {what}=(a, b).")


class Describer(TaskBase):
    """Describe a pose, the person in an image, or the difference between two poses or two images."""

    options_class = DescriberOptions

    def describe(self, *, pose: Any = None, image: Any = None, poses: Any = None,
                 images: Any = None) -> DescribeResult | list[DescribeResult]:
        """Exactly one of: pose= (one pose or a list), image= (one image or a list), poses=(a, b) or a list of
        pairs (what changes from a to b), images=(a, b) or a list of pairs.

        Raises:
            InvalidInputError: none or several of the four arguments, a pair that is not two items, an empty
                list, or a call after `close()`.
            InvalidPoseError / PoseFormatError: a pose that is not valid (as for `Editor.edit`).
            InvalidImageError / UniPoseFileNotFoundError: an image that cannot be read, or a missing file.
        """
        given = {k: v for k, v in (("pose", pose), ("image", image), ("poses", poses), ("images", images))
                 if v is not None}
        if len(given) != 1:
            raise InvalidInputError.make(f"arguments {sorted(given) or 'none'}",
                                         "exactly one of pose=, image=, poses=(a, b), images=(a, b)",
                                         "Pass one kind of input per call.")
        session = self._session()
        encode_images = None
        model_floor = None  # the model's default sentence confidence floor for this kind of description
        if pose is not None:
            items, single = as_batch(pose, _SINGLE)
            batch = Pose.cat([as_pose(p, f"pose {i}") for i, p in enumerate(items)])
            inputs = [{"task": "describe_pose", "pose": describe_input(p)} for p in items]

            def prompts():  # type: ignore[no-untyped-def]
                codes = session.encode_poses(batch)
                return [session.prompts.build_task(Task.POSE_DESCRIPTION, poses=[c]) for c in codes]
        elif poses is not None:
            pairs, single = _pairs(poses, "poses")
            a = Pose.cat([as_pose(p[0], f"pose A of pair {i}") for i, p in enumerate(pairs)])
            b = Pose.cat([as_pose(p[1], f"pose B of pair {i}") for i, p in enumerate(pairs)])
            inputs = [{"task": "describe_pose_difference", "pose_a": describe_input(pa), "pose_b": describe_input(pb)}
                      for pa, pb in pairs]

            def prompts():  # type: ignore[no-untyped-def]
                codes_a, codes_b = session.encode_poses(a), session.encode_poses(b)
                return [session.prompts.build_task(Task.POSE_DIFFERENCE, poses=[ca, cb])
                        for ca, cb in zip(codes_a, codes_b)]
        elif image is not None:
            items, single = as_batch(image, _SINGLE)
            check_image_paths(items)
            inputs = [{"task": "describe_image", "image": describe_input(i)} for i in items]
            prompts = lambda: [session.prompts.build_task(Task.IMAGE_DESCRIPTION) for _ in items]  # noqa: E731
            encode_images = lambda: images_to_embeds(session, items)  # noqa: E731
            model_floor = session.config.image_description_min_sentence_logprob
        else:
            pairs, single = _pairs(images, "images")
            flat = [img for pair in pairs for img in pair]  # row by row, in prompt order
            check_image_paths(flat)
            inputs = [{"task": "describe_image_difference", "image_a": describe_input(ia),
                       "image_b": describe_input(ib)} for ia, ib in pairs]
            prompts = lambda: [session.prompts.build_task(Task.IMAGE_DIFFERENCE) for _ in pairs]  # noqa: E731
            encode_images = lambda: images_to_embeds(session, flat)  # noqa: E731
        with self._call():
            answers = answer(session, prompts, self.options.generation_config(session.config.vocab),
                             encode_images, min_sentence_logprob=self.options.sentence_floor(model_floor))
        # A description states each sentence once and never contradicts itself (text/sentences.py says why the
        # loop's ban is not enough).
        results = [DescribeResult(**a.measurements(), run=session.run_info(),
                                  text=drop_repeated_sentences(a.text, stated_topics), input=inputs[i])
                   for i, a in enumerate(answers)]
        return split_batch(results, single)
