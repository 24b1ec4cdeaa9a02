"""Typed results of the four task classes. Every result carries its timing (`timing_ms`: milliseconds per stage,
nothing else), the counts of its batch (`batch_size`, `decode_steps`, `pose_steps`), what produced it (`run`) and
what it was asked (`input`), and saves as one all-or-nothing set of files. The pose tasks' results share
`PoseResult` (the pose, its codes and joints); the description's is text only."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unipose_sdk.errors import InvalidInputError
from unipose_sdk.fileio import OutputSet, check_stem

if TYPE_CHECKING:
    from unipose_sdk.body.pose import Pose

# Every name a saved result owns, whether or not it writes it: a text result saved over a pose result of the same
# stem removes the old pose files instead of leaving them beside the new JSON.
RESULT_SUFFIXES = (".npz", ".npy", ".png", ".json")
# The files a pose result can write besides its JSON (`formats=`), and the default set.
POSE_RESULT_FORMATS = ("npz", "npy", "png", "bvh", "glb")
DEFAULT_POSE_FORMATS = ("npz", "npy", "png")


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The pose result formats, checked (before any work) and in the canonical order."""
    if isinstance(formats, str) or not all(isinstance(f, str) for f in formats):
        raise InvalidInputError.make(f"formats={formats!r}", f"a sequence of names from {list(POSE_RESULT_FORMATS)}",
                                     "Pass e.g. formats=('npz', 'bvh').")
    unknown = sorted(set(formats) - set(POSE_RESULT_FORMATS))
    if unknown:
        raise InvalidInputError.make(f"the pose formats {unknown}", f"names from {list(POSE_RESULT_FORMATS)}",
                                     "Pick formats from that list.")
    if "glb" in formats:
        from unipose_sdk.body.gltf import require_pygltflib

        require_pygltflib()  # a missing optional writer is reported before the model runs
    return tuple(f for f in POSE_RESULT_FORMATS if f in formats)


@dataclass
class RunInfo:
    """What produced a result: the backend and device actually used, and the model."""

    backend: str
    device: str
    model: str
    # True while the embedded default is a randomly initialised placeholder (its output means nothing).
    model_is_random: bool = False
    fallback: str | None = None  # set when the requested backend / device could not be used, saying what was
    family: str = "unipose"  # the model family ("unipose" | "chatpose"), from the model's config


def describe_input(value: Any) -> str:
    """How a result's JSON names one input: a path as given, else the kind and shape of the in-memory value."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__module__.split('.')[0]}.{type(value).__name__} of shape {list(shape)}>"
    size = getattr(value, "size", None)  # a PIL image
    if isinstance(size, tuple):
        return f"<{type(value).__name__} {size[0]}x{size[1]} {getattr(value, 'mode', '')}>".replace(" >", ">")
    return f"<{type(value).__name__}>"


@dataclass
class _Result:
    """What every result has.

    timing_ms: milliseconds per stage ("preprocess", "vision" for image inputs, "llm" and inside it "prefill" or
        "prefill_pose", "pose_step", "decode", then "detokenize" for poses) and "total". The items of one batch
        share their batch's stages: divide by batch_size for per-item throughput.
    batch_size: how many inputs ran together in this result's batch.
    decode_steps / pose_steps: the batch's one-token decode calls and separate pose-step calls (a pose block
        run together with the prompt, "prefill_pose", is neither).
    """

    timing_ms: dict[str, float]
    run: RunInfo
    text: str = ""  # the model's raw answer text (pose blocks elided)
    # What the task was given: {"task": ..., and "prompt" / "instruction" / "image" / "pose" ...}; paths as given.
    input: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    decode_steps: int = 0
    pose_steps: int = 0

    @property
    def latency_ms(self) -> float:
        return float(self.timing_ms.get("total", sum(self.timing_ms.values())))

    def to_dict(self) -> dict[str, Any]:
        return {"input": dict(self.input), "text": self.text, "timing_ms": self.timing_ms,
                "batch_size": self.batch_size, "decode_steps": self.decode_steps, "pose_steps": self.pose_steps,
                "run": self.run.__dict__}

    def save(self, directory: str | Path, stem: str = "result", overwrite: bool = False,
             formats: Sequence[str] = DEFAULT_POSE_FORMATS) -> list[Path]:
        """Write `<stem>.json`, and for pose results `<stem>.npz` (smplx keys), `<stem>.npy` (official (22,3,3)
        rotation matrices) and `<stem>.png` (rendering) into `directory` (created if missing); `formats` picks the
        pose files from npz, npy, png, bvh (a one-frame BVH clip) and glb (skeleton and mannequin). The files appear
        together or not at all; existing files of `stem` are replaced only with `overwrite=True`. `stem` is a
        plain file name: it cannot point outside `directory`.

        Returns:
            The written paths.

        Raises:
            InvalidInputError: `stem` is not a plain file name, or `directory` is a file or not writable.
            OutputExistsError: files of `stem` exist in `directory` and `overwrite` is False.
            OSError: writing failed on the way (a full disk, ...); nothing of this result is left behind.
        """
        return save_results([self], directory, [stem], overwrite=overwrite, formats=formats)[0]


def save_results(results: Sequence[_Result], directory: str | Path, stems: Sequence[str], overwrite: bool = False,
                 overwrite_hint: str = "Pass overwrite=True to replace them, or choose another directory.",
                 numbered: bool = False, formats: Sequence[str] = DEFAULT_POSE_FORMATS) -> list[list[Path]]:
    """Save several results as one set: every file of every result appears, or none does (see `_Result.save`).
    Returns the written paths per result. `numbered=True` (stems PREFIX_000, PREFIX_001, ...; ignored with
    `overwrite`): the set takes the next free numbers in the directory instead of refusing taken ones (see
    fileio.OutputSet). `formats`: the pose files each pose result writes (see `_Result.save`)."""
    from unipose_sdk.body.render import render_poses_png

    formats = check_formats(formats)

    if len(results) != len(stems):
        raise InvalidInputError.make(f"{len(results)} results and {len(stems)} stems", "one stem per result",
                                     "Pass as many stems as results.")
    stems = [check_stem(stem) for stem in stems]
    suffixes = RESULT_SUFFIXES + tuple(f".{f}" for f in formats if f".{f}" not in RESULT_SUFFIXES)
    claims = [f"{stem}{suffix}" for stem in stems for suffix in suffixes]
    # Everything that can fail on the results themselves happens before the directory is touched.
    documents = [json.dumps(result.to_dict(), indent=2) for result in results]
    names: list[list[str]] = []
    with OutputSet(directory, claims, overwrite=overwrite, overwrite_hint=overwrite_hint, numbered=numbered) as out:
        for result, stem, document in zip(results, stems, documents):
            written = []
            pose = getattr(result, "pose", None)
            if pose is not None:
                for suffix in (f".{f}" for f in formats if f != "png"):
                    pose.save(out.path(f"{stem}{suffix}"))
                    written.append(f"{stem}{suffix}")
                if "png" in formats:
                    source = getattr(result, "source_pose", None)
                    poses = [source, pose] if source is not None else [pose]
                    titles = ["source", "edited"] if source is not None else None
                    render_poses_png(poses, out.path(f"{stem}.png"), titles=titles)
                    written.append(f"{stem}.png")
            out.path(f"{stem}.json").write_text(document, encoding="utf-8")
            written.append(f"{stem}.json")
            names.append(written)
    return [[out.directory / out.final_name(name) for name in written] for written in names]


def _pose_fields(name: str, pose: Pose | None) -> dict[str, Any]:
    if pose is None:
        return {}
    return {f"{name}_axis_angle": pose.axis_angle()[0].tolist(), f"{name}_joints_m": pose.joints()[0].tolist()}


@dataclass
class PoseResult(_Result):
    """What the pose tasks' results share: the pose (one row), its 80 codebook indices and its joints."""

    pose: Pose | None = None
    pose_codes: list[int] = field(default_factory=list)

    @property
    def joints_m(self) -> np.ndarray:
        """[22, 3] joint positions in metres (built-in skeleton, pelvis at the origin)."""
        return self.pose.joints()[0].numpy() if self.pose is not None else np.zeros((0, 3), np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **_pose_fields("pose", self.pose), "pose_codes": list(self.pose_codes)}


@dataclass
class EstimateResult(PoseResult):
    """Estimator: the pose of the person in the image."""


@dataclass
class GenerateResult(PoseResult):
    """Generator: the pose for `prompt`."""

    prompt: str = ""


@dataclass
class EditResult(PoseResult):
    """Editor: `source_pose` edited by `instruction` into `pose`. `edited_regions`: the regions `pose` takes from
    the model's answer (the rest is the source's, `EditorOptions.keep_unnamed_regions`); empty when it is the
    model's whole pose. `pose_codes` are the model's answer either way."""

    source_pose: Pose | None = None
    instruction: str = ""
    edited_regions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **_pose_fields("source_pose", self.source_pose),
                "edited_regions": list(self.edited_regions)}


@dataclass
class DescribeResult(_Result):
    """Describer: the description in `text`."""


@dataclass
class ReplyPose:
    """One pose of an Assistant reply: the pose (one row) and its codebook indices. Pass it back in a later
    turn's `poses=` and its codes go in as they are (no re-encoding)."""

    pose: Pose
    codes: list[int]

    @property
    def joints_m(self) -> np.ndarray:
        """[22, 3] joint positions in metres (built-in skeleton, pelvis at the origin)."""
        return self.pose.joints()[0].numpy()

    def to_dict(self) -> dict[str, Any]:
        return {"axis_angle": self.pose.axis_angle()[0].tolist(), "joints_m": self.pose.joints()[0].tolist(),
                "codes": list(self.codes)}


@dataclass
class AssistantReply(_Result):
    """Assistant: one reply of a conversation.

    text: the reply with each pose shown as <pose>; poses: every pose block of the reply, in order.
    turn: the turn's index in the conversation (0 first); finish_reason: "eos", or "length" when the reply ran
        out of max_new_tokens / max_poses.
    prompt_tokens: the conversation's prompt for this turn (history, the new turn), in tokens; reused_tokens: how
        many of them the kept KV cache already held; computed_tokens: the rest, run this turn.
    generated_ids: the reply's token ids as generated (pose blocks as BEGIN, codes, END).
    prompt_ids: the turn's whole prompt in the official conversation layout (image slots hold pad_id).
    """

    poses: list[ReplyPose] = field(default_factory=list)
    turn: int = 0
    finish_reason: str = ""
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_ids: list[int] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list, repr=False)  # image slots hold pad_id; not in to_dict

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    @property
    def pose(self) -> Pose | None:
        """The reply's first pose (None without one)."""
        return self.poses[0].pose if self.poses else None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "turn": self.turn, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "reused_tokens": self.reused_tokens,
                "computed_tokens": self.computed_tokens, "poses": [p.to_dict() for p in self.poses]}

    def save(self, directory: str | Path, stem: str = "reply", overwrite: bool = False,
             formats: Sequence[str] = DEFAULT_POSE_FORMATS) -> list[Path]:
        """Write `<stem>.json` and, per pose k, `<stem>.pose<k>.npz` / `.npy` / `.png` (as `formats` picks, see
        `_Result.save`) into `directory`, all together or nothing.

        Raises:
            As `_Result.save`.
        """
        return save_replies([self], directory, [stem], overwrite=overwrite, formats=formats)[0]


def save_replies(replies: Sequence[AssistantReply], directory: str | Path, stems: Sequence[str],
                 overwrite: bool = False,
                 overwrite_hint: str = "Pass overwrite=True to replace them, or choose another directory.",
                 numbered: bool = False, formats: Sequence[str] = DEFAULT_POSE_FORMATS) -> list[list[Path]]:
    """Save Assistant replies as one set (every file or none, fileio.OutputSet): per reply `<stem>.json` and per
    pose k `<stem>.pose<k>.<format>`. `numbered`: stems PREFIX_000, ... take the next free numbers, as
    `save_results`. Returns the written paths per reply."""
    from unipose_sdk.body.render import render_poses_png

    formats = check_formats(formats)
    if len(replies) != len(stems):
        raise InvalidInputError.make(f"{len(replies)} replies and {len(stems)} stems", "one stem per reply",
                                     "Pass as many stems as replies.")
    stems = [check_stem(stem) for stem in stems]
    files = [[f"{stem}.pose{k}.{f}" for k in range(len(reply.poses)) for f in formats] + [f"{stem}.json"]
             for reply, stem in zip(replies, stems)]
    documents = [json.dumps(reply.to_dict(), indent=2) for reply in replies]
    with OutputSet(directory, [name for names in files for name in names], overwrite=overwrite,
                   overwrite_hint=overwrite_hint, numbered=numbered) as out:
        for reply, stem, document in zip(replies, stems, documents):
            for k, item in enumerate(reply.poses):
                for f in formats:
                    target = out.path(f"{stem}.pose{k}.{f}")
                    if f == "png":
                        render_poses_png([item.pose], target)
                    else:
                        item.pose.save(target)
            out.path(f"{stem}.json").write_text(document, encoding="utf-8")
    return [[out.directory / out.final_name(name) for name in names] for names in files]
