"""What the four task classes share: construction, the shared session, input checks, batching.

Threads: `options.num_threads` applies to the calls of that task object only. On the torch backend torch's
thread count is set for the duration of each call and restored afterwards (one call with a thread count runs at a
time in the process, so two task objects with different counts do not overlap); the process's own setting is
never changed. ONNX Runtime and TensorRT fix their threads when the graphs load, so a task object that asks an
already loaded exported model for a different count is refused (InvalidOptionError) instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.errors import InvalidImageError, InvalidInputError, InvalidOptionError, InvalidTextError
from unipose_sdk.fileio import check_regular_file
from unipose_sdk.options import BaseOptions
from unipose_sdk.session import UniPose

OptionsT = TypeVar("OptionsT", bound=BaseOptions)


class TaskBase:
    """Construction and life cycle shared by Estimator, Generator, Editor and Describer."""

    options_class: ClassVar[type[BaseOptions]] = BaseOptions

    def __init__(self, options: BaseOptions | None = None) -> None:
        """Load the model `options` name (or take it from the shared cache).

        Raises:
            InvalidOptionError: `options` is not this task's options class (e.g. GeneratorOptions for a
                Describer), or asks an exported model already loaded for another num_threads.
            ModelNotFoundError: the model directory does not exist or holds no model.
            CheckpointError / ConfigError: the model files are damaged or inconsistent (the message names them).
            BackendUnavailableError: the backend or device asked for is not installed or not present.
        """
        options = options if options is not None else self.options_class()
        self.options = self._checked_options(options)
        self.session = UniPose.load(options)
        _check_loaded_threads(self.session, options)

    @classmethod
    def _checked_options(cls, options: object) -> BaseOptions:
        """Options of this task's class: another task's options would carry fields this task cannot use (or lack
        fields it needs), so they are refused rather than half read."""
        if not isinstance(options, cls.options_class):
            raise InvalidOptionError.make(f"options of type {type(options).__name__} for {cls.__name__}",
                                          f"a {cls.options_class.__name__}",
                                          f"Build them with {cls.options_class.__name__}(...).")
        return options

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, backend: str = "auto", device: str = "auto",
                        dtype: Any = None, **options: Any):  # type: ignore[no-untyped-def]
        """Load `model` (None or "unipose-tiny": the embedded default; else a model directory). `options` are the
        fields of the task's options class (e.g. max_new_tokens=64); an unknown name is an InvalidOptionError
        listing the valid ones.

        Raises:
            InvalidOptionError: an option this task does not have (e.g. pose_only for a Describer; the message
                lists the valid names and suggests the closest), or a value of the wrong type or range.
            InvalidInputError: a backend, device or dtype name that does not exist.
            ModelNotFoundError: the model directory does not exist or holds no model.
            CheckpointError / ConfigError: the model files are damaged or inconsistent (the message names them).
            BackendUnavailableError: the backend or device asked for is not installed or not present.
        """
        valid = option_names(cls.options_class)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            hints = [f"{name!r} -> {close[0]!r}" for name in unknown
                     for close in [difflib.get_close_matches(name, valid, n=1)] if close]
            raise InvalidOptionError.make(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                f"{cls.__name__}", f"names among {', '.join(valid)}",
                f"Did you mean {'; '.join(hints)}?" if hints else "Check the spelling.")
        return cls(cls.options_class(model=model, backend=backend, device=device, dtype=dtype, **options))

    @classmethod
    def from_session(cls, session: UniPose, options: BaseOptions | None = None):  # type: ignore[no-untyped-def]
        """The task over a session that is already loaded (e.g. one built around a runtime of your own); the
        where-to-load fields of `options` are not read.

        Raises:
            InvalidOptionError: `options` is not this task's options class.
        """
        task = cls.__new__(cls)
        task.options = cls._checked_options(options if options is not None else cls.options_class())
        task.session = session
        return task

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this object's hold on the shared model; the model is released when no task class holds it.
        Closing twice is harmless; any call after it raises InvalidInputError ("a call on a closed ...").

        Raises:
            Nothing.
        """
        self.session = None  # type: ignore[assignment]

    def _session(self) -> UniPose:
        if self.session is None:
            raise InvalidInputError.make(f"a call on a closed {type(self).__name__}", "an open instance",
                                         f"Create a new {type(self).__name__} (or use it inside its `with` block).")
        return self.session

    # ------------------------------------------------------------------ input checks

    def _check_text(self, text: Any, what: str) -> str:
        return check_text(text, what)

    @contextmanager
    def _call(self) -> Iterator[UniPose]:
        """One task call: the open session, with this object's thread count (see the module doc)."""
        session = self._session()
        with torch_threads(self.options.num_threads if session.runtime.backend == "torch" else None):
            yield session


def option_names(options_class: type[BaseOptions]) -> list[str]:
    return [f.name for f in dataclasses.fields(options_class) if f.init]


def check_text(text: Any, what: str) -> str:
    """A prompt or instruction: a non-empty str that encodes as UTF-8 (a lone surrogate cannot be tokenized)."""
    if not isinstance(text, str):
        raise InvalidTextError.make(f"{what} of type {type(text).__name__}", "a string",
                                    f"Pass the {what} as text.")
    if not text.strip():
        raise InvalidTextError.make(f"{what}={text!r}", "non-empty text",
                                    f"Write the {what}, e.g. 'a person squatting with both arms raised'.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTextError.make(
            f"{what} with the character {text[exc.start]!r} at index {exc.start}, which is not valid Unicode "
            f"text ({exc.reason})", "text that encodes as UTF-8 (no lone surrogates)",
            "Remove the character, or clean the text with text.encode('utf-8', 'replace').decode('utf-8').",
        ) from None
    return text.strip()


def check_image_paths(images: Sequence[Any]) -> None:
    """Every path among `images` names a regular file, checked before any work (a FIFO would block the read)."""
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            what = "image" if len(images) == 1 else f"image {i}"
            check_regular_file(image, what, InvalidImageError, "Pass an image file (PNG, JPEG, ...).")


_THREADS_LOCK = threading.Lock()


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `num_threads` for the block and restored after; None: untouched."""
    if num_threads is None:
        yield
        return
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        if before != num_threads:
            torch.set_num_threads(num_threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


# The num_threads an exported-backend session was loaded with: the request of the first task object that got it
# (the session cache hands one session to every task object with the same model, backend, device and dtype).
_LOADED_THREADS: weakref.WeakKeyDictionary[UniPose, int | None] = weakref.WeakKeyDictionary()


def _check_loaded_threads(session: UniPose, options: BaseOptions) -> None:
    """Exported backends fix their thread count at load: a conflicting request for a shared session is refused."""
    if session.runtime.backend == "torch":
        return
    with _THREADS_LOCK:
        loaded = _LOADED_THREADS.setdefault(session, options.num_threads)
    if options.num_threads is not None and loaded != options.num_threads:
        raise InvalidOptionError.make(
            f"num_threads={options.num_threads} for {session.model_name}, which is already loaded on "
            f"{session.runtime.backend} with num_threads={loaded}", "the thread count the graphs were loaded with",
            f"Pass num_threads={loaded}, or close the task objects holding the model so it loads again.")


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
