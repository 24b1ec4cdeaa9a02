"""Typed errors of the SDK.

Every message says three things: what was received, what was expected, and what to do about it. Build them
with `UniPoseError.make(...)` (or pass a finished message) so that the three parts are never forgotten.
All errors that come from bad user input also subclass ValueError (or FileNotFoundError), so generic
`except ValueError` code keeps working.
"""

from __future__ import annotations


class UniPoseError(Exception):
    """Base class of every error raised on purpose by unipose-sdk."""

    @classmethod
    def make(cls, received: str, expected: str, fix: str) -> "UniPoseError":
        return cls(f"received {received}; expected {expected}. {fix}")


class InvalidInputError(UniPoseError, ValueError):
    """An argument has the wrong type, shape, range or content."""


class InvalidPoseError(InvalidInputError):
    """A pose array has the wrong shape, non-finite values, or matrices that are not rotations."""


class InvalidImageError(InvalidInputError):
    """An image cannot be read or has an unusable layout."""


class InvalidTextError(InvalidInputError):
    """A text prompt is empty, or longer than the model's context."""


class PoseFormatError(InvalidInputError):
    """A pose file's content matches none of the supported formats."""


class UniPoseFileNotFoundError(UniPoseError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class CheckpointError(UniPoseError):
    """A checkpoint has missing, unexpected or mis-shaped keys, or is of the wrong kind."""


class ModelNotFoundError(UniPoseFileNotFoundError):
    """A model directory or checkpoint the user named does not exist."""


class BackendUnavailableError(UniPoseError, RuntimeError):
    """A requested backend (onnxruntime, tensorrt, ...) or device is not available here."""


class ExportValidationError(UniPoseError, RuntimeError):
    """An exported artifact does not reproduce the torch model within the graph's tolerance."""


class VocabularyError(UniPoseError):
    """A text tokenizer whose added-token ids differ from the model's vocabulary layout."""


class ConfigError(CheckpointError, ValueError):
    """A model or tokenizer config (config.json) has a field of the wrong type, out of range, or inconsistent."""


class InvalidOptionError(InvalidInputError):
    """An option has an unknown name or a value of the wrong type or range."""


class OutputExistsError(InvalidInputError, FileExistsError):
    """An output would replace existing files, and replacing was not asked for (overwrite / --overwrite)."""


class ConversationTooLongError(InvalidTextError):
    """A conversation's history plus the new turn and its reply budget would not fit the model's context."""


class UnsupportedTaskError(InvalidInputError):
    """The loaded model's family cannot do the task (e.g. ChatPose takes no pose as input, so it cannot edit or
    describe poses); the message names the family that can."""
