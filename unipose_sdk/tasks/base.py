"""What the four task classes share: construction, the shared session, input checks, batching, timing."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence, TypeVar

import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import InvalidInputError, InvalidTextError
from unipose_sdk.options import BaseOptions
from unipose_sdk.session import UniPose

OptionsT = TypeVar("OptionsT", bound=BaseOptions)


class Timer:
    """Wall-clock stage timer in milliseconds (device-synchronised on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.stages[name] = self.stages.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, stages: dict[str, float]) -> None:
        for name, ms in stages.items():
            self.stages[name] = self.stages.get(name, 0.0) + ms

    def finish(self, batch_size: int) -> dict[str, float]:
        """Per-item timing: a batch's stages and total are shared by its items, so they are reported as-is
        together with the batch size (divide by it for throughput)."""
        self._sync()
        out = {k: round(v, 3) for k, v in self.stages.items()}
        out["total"] = round((time.perf_counter() - self._start) * 1e3, 3)
        out["batch_size"] = float(batch_size)
        return out


class TaskBase:
    """Construction and life cycle shared by Estimator, Generator, Editor and Describer."""

    options_class: ClassVar[type[BaseOptions]] = BaseOptions

    def __init__(self, options: BaseOptions | None = None) -> None:
        options = options if options is not None else self.options_class()
        if not isinstance(options, BaseOptions):
            raise InvalidInputError.make(f"options of type {type(options).__name__}",
                                         f"a {self.options_class.__name__}",
                                         f"Build it with {self.options_class.__name__}(...).")
        self.options = options
        self.session = UniPose.load(options)

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, backend: str = "auto", device: str = "auto",
                        dtype: Any = None, **options: Any):  # type: ignore[no-untyped-def]
        """Load `model` (None or "unipose-tiny": the embedded default; else a model directory)."""
        return cls(cls.options_class(model=model, backend=backend, device=device, dtype=dtype, **options))

    @classmethod
    def from_session(cls, session: UniPose, options: BaseOptions | None = None):  # type: ignore[no-untyped-def]
        """The task over a session that is already loaded (e.g. one built around a runtime of your own); the
        where-to-load fields of `options` are not read."""
        task = cls.__new__(cls)
        task.options = options if options is not None else cls.options_class()
        task.session = session
        return task

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this object's hold on the shared model; the model is released when no task class holds it."""
        self.session = None  # type: ignore[assignment]

    def _session(self) -> UniPose:
        if self.session is None:
            raise InvalidInputError.make(f"a call on a closed {type(self).__name__}", "an open instance",
                                         f"Create a new {type(self).__name__} (or use it inside its `with` block).")
        return self.session

    # ------------------------------------------------------------------ input checks

    def _check_text(self, text: Any, what: str) -> str:
        if not isinstance(text, str):
            raise InvalidTextError.make(f"{what} of type {type(text).__name__}", "a string",
                                        f"Pass the {what} as text.")
        if not text.strip():
            raise InvalidTextError.make(f"{what}={text!r}", "non-empty text",
                                        f"Write the {what}, e.g. 'a person squatting with both arms raised'.")
        return text.strip()


def as_batch(value: Any, single_types: tuple[type, ...]) -> tuple[list[Any], bool]:
    """(items, was_single): a list/tuple is a batch, anything else one item."""
    if isinstance(value, (list, tuple)) and not isinstance(value, single_types):
        if len(value) == 0:
            raise InvalidInputError.make("an empty list", "at least one input", "Pass one input or a non-empty list.")
        return list(value), False
    return [value], True


def as_pose(value: Any, what: str) -> Pose:
    """Any supported pose input (Pose, array in a supported layout, or a file path) -> a one-row Pose."""
    pose = Pose.from_any(value)
    if len(pose) != 1:
        raise InvalidInputError.make(f"{what} holding {len(pose)} poses", "exactly one pose",
                                     "Pass a list of poses for a batch, one pose per item.")
    return pose


def split_batch(items: Sequence[Any], was_single: bool) -> Any:
    return items[0] if was_single else list(items)
