"""Editor: (pose, instruction) -> edited pose; by default only the regions the instruction names change
(`body.regions`, `EditorOptions.keep_unnamed_regions`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.regions import regions_named, take_regions
from unipose_sdk.errors import InvalidInputError, UnsupportedTaskError
from unipose_sdk.options import EditorOptions
from unipose_sdk.results import EditResult, describe_input
from unipose_sdk.tasks.base import TaskBase, as_batch, as_pose, split_batch
from unipose_sdk.tasks.pipeline import answer
from unipose_sdk.text.prompts import Task


class Editor(TaskBase):
    """Edit a pose by a text instruction ("raise your left arm above your head")."""

    options_class = EditorOptions

    def edit(self, pose: Any, instruction: str | Sequence[str]) -> EditResult | list[EditResult]:
        """pose: a Pose / array / file path, or a list of them; instruction: one text, or one per pose.

        Raises:
            InvalidPoseError: a pose in no supported layout, or with NaN / infinite / out-of-range values.
            PoseFormatError / UniPoseFileNotFoundError: a pose file that is damaged or missing.
            InvalidTextError: an instruction that is not non-empty UTF-8 text, or too long for the prompt.
            InvalidInputError: poses and instructions that do not pair up, an empty list, or a call after
                `close()`.
            UnsupportedTaskError: the model is a ChatPose model (it answers with poses but reads none); UniPose
                models edit.
        """
        session = self._session()
        if session.config.family != "unipose":
            raise UnsupportedTaskError.make(
                f"Editor.edit on {session.model_name}, a {session.config.family} model",
                "a model of family 'unipose' (ChatPose reads no pose, so it cannot edit one)",
                "Load a UniPose model for editing (e.g. Editor.from_pretrained() for the embedded unipose-tiny).")
        poses, single = as_batch(pose, (str, Pose))
        instructions, single_text = as_batch(instruction, (str,))
        if single_text and not single:
            instructions = instructions * len(poses)  # one instruction for every pose of the batch
        if len(instructions) != len(poses):
            raise InvalidInputError.make(f"{len(poses)} poses and {len(instructions)} instructions",
                                         "one instruction per pose, or one for all",
                                         "Pass lists of equal length.")
        instructions = [self._check_text(t, "instruction") for t in instructions]
        sources = Pose.cat([as_pose(p, f"pose {i}") for i, p in enumerate(poses)])
        with self._call() as session:

            def prompts():  # type: ignore[no-untyped-def]
                codes = session.encode_poses(sources)
                return [session.prompts.build_task(Task.POSE_EDITING, caption=text, poses=[codes[i]])
                        for i, text in enumerate(instructions)]

            answers = answer(session, prompts, self.options.generation_config(session.config.vocab))
        results = []
        for i, a in enumerate(answers):
            source = sources[i:i + 1]
            named = regions_named(instructions[i]) if self.options.keep_unnamed_regions else None
            pose = take_regions(source, a.pose, named) if named else a.pose
            results.append(EditResult(**a.measurements(), run=session.run_info(), text=a.text, pose=pose,
                                      pose_codes=a.codes, source_pose=source, instruction=instructions[i],
                                      edited_regions=sorted(named or ()),
                                      input={"task": "edit", "pose": describe_input(poses[i]),
                                             "instruction": instructions[i]}))
        return split_batch(results, single)
