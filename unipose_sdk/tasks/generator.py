"""Generator: text -> 3D pose."""

from __future__ import annotations

from collections.abc import Sequence

from unipose_sdk.options import GeneratorOptions
from unipose_sdk.results import GenerateResult
from unipose_sdk.tasks.base import TaskBase, as_batch, split_batch
from unipose_sdk.tasks.pipeline import answer
from unipose_sdk.text.prompts import Task


class Generator(TaskBase):
    """Generate a pose from a description.

    >>> with Generator.from_pretrained() as generator:
    ...     result = generator.generate("a person squatting with both arms raised")
    ...     result.pose, result.joints_m, result.timing_ms
    """

    options_class = GeneratorOptions

    def generate(self, text: str | Sequence[str]) -> GenerateResult | list[GenerateResult]:
        """One text -> one GenerateResult; a list of texts -> a list of results in the same order (one batch).

        Raises:
            InvalidTextError: a text that is not a non-empty string encodable as UTF-8, or longer than the
                model's prompt allows (the message gives the limit).
            InvalidInputError: an empty list, or a call after `close()`.
        """
        texts, single = as_batch(text, (str,))
        texts = [self._check_text(t, "text") for t in texts]
        with self._call() as session:
            config = self.options.generation_config(session.config.vocab,
                                                    session.config.text_to_pose_code_temperature,
                                                    session.config.text_to_pose_guidance, session.pose_candidates)
            answers = answer(
                session, lambda: [session.prompts.build_task(Task.TEXT_TO_POSE, caption=t) for t in texts], config,
                guided_task=Task.TEXT_TO_POSE)
        results = [GenerateResult(**a.measurements(), run=session.run_info(), text=a.text, pose=a.pose,
                                  pose_codes=a.codes, prompt=t, input={"task": "generate", "prompt": t})
                   for a, t in zip(answers, texts)]
        return split_batch(results, single)
