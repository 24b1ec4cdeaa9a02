"""What travels over HTTP between `unipose serve` and its clients: inputs, results, errors. No Ray, no FastAPI.

Nothing on the wire is unpickled: images arrive as image files (PNG, JPEG, ...) or `.npy` arrays read with
`allow_pickle=False`, poses as JSON numbers or pose files in the SDK's formats (read by `Pose.load`'s readers,
which never unpickle), results leave as JSON numbers and, on request, pose files in every format the CLI writes.

Inputs (JSON body; `multipart/form-data` uploads carry the same fields as files and form fields):
    IMAGE: a base64 string (an image file's bytes; a `data:image/...;base64,` URL is accepted too), or
        {"data": base64 file bytes}, or {"npy": base64 of a .npy array (H x W x C, any dtype `load_image` takes)}.
    POSE: a nested array of numbers in any single-pose layout `Pose.from_any` accepts (66 or 22x3 axis-angle,
        22x3x3 rotation matrices, 22x6 / 132 6D), or {"array": ..., "dtype": "float32" | "float64"}, or
        {"file": base64 bytes of a pose file (.npz smplx / AMASS keys, .npy matrices, JSON, BVH)}.
    A list of IMAGE objects / strings, or of POSE objects, is a batch (a bare nested array is always one pose).
    CHAT_POSE (/v1/chat only): a POSE, or {"codes": [80 ints]}, a pose of an earlier reply by its codes (they go
        into the prompt unchanged, as a ReplyPose's do in `Assistant.ask`; a ChatPose model's poses have no codes,
        and it reads no poses).

Results: the fields of `result.to_dict()` (input, text, timing_ms, batch_size, decode_steps, pose_steps, run,
pose_axis_angle, pose_joints_m, pose_codes, ...), the pose's exact float32 rotation matrices (`pose_rotmat`, and
`source_pose_rotmat` for an edit), `prompt` / `instruction` where the result class has them, and with
`"formats": [...]` a `files` object of base64 pose files (npz, npy, json, bvh, glb, png). An AssistantReply (/v1/chat)
has `poses`, one object per pose it produced ({"codes", "axis_angle", "joints_m", "rotmat", and "files" on
request}), and `generated_ids`, besides the fields of `AssistantReply.to_dict()`.

Errors: `{"error": {"type", "status", "message", "received", "expected", "fix"}}` with the SDK error's own text;
`error_from_body` turns it back into the same typed exception on the client.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unipose_sdk import errors
from unipose_sdk.errors import InvalidImageError, InvalidInputError, InvalidPoseError, InvalidTextError, UniPoseError

# The pose files a result can carry (`formats`): the CLI's pose files and its PNG rendering, plus the pose JSON
# that `unipose pose export --format json` writes.
WIRE_POSE_FORMATS = ("npz", "npy", "json", "bvh", "glb", "png")
MAX_REQUEST_JSON_DEPTH = 12  # a batch of 22x3x3 matrices nests 6 levels inside the document


# ---------------------------------------------------------------------------------------------- service errors


class LimitExceededError(InvalidInputError):
    """A request is larger than the service accepts (body bytes, image pixels, items per request): HTTP 413."""


class AuthenticationError(UniPoseError, PermissionError):
    """The service asks for an API key and the request carried none or a wrong one: HTTP 401."""


class ServiceOverloadedError(UniPoseError, RuntimeError):
    """The service's queue is full: HTTP 503 with Retry-After. `retry_after_s` says when to try again."""

    retry_after_s: float | None = None


class ServiceTimeoutError(UniPoseError, TimeoutError):
    """The request took longer than the service's request timeout: HTTP 504."""


class ServiceError(UniPoseError, RuntimeError):
    """The service failed on something that is not the request's fault (HTTP 5xx, or an unexpected answer)."""


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error: 413 for limits, 422 for every other bad input, 401, 503, 504, else 500."""
    if isinstance(exc, LimitExceededError):
        return 413
    if isinstance(exc, (InvalidInputError, errors.UniPoseFileNotFoundError)):
        return 422
    if isinstance(exc, AuthenticationError):
        return 401
    if isinstance(exc, ServiceOverloadedError):
        return 503
    if isinstance(exc, ServiceTimeoutError):
        return 504
    return 500


_MESSAGE_PARTS = re.compile(r"^received (?P<received>.*?); expected (?P<expected>.*?)\. (?P<fix>.*)$", re.DOTALL)


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of an error. A typed SDK error keeps its message word for word; the received /
    expected / fix parts are split out of it where it has that shape (`UniPoseError.make`)."""
    status = status_for(exc)
    message = str(exc)
    if not isinstance(exc, UniPoseError):  # a bug, not the request: say what failed without a traceback
        message = f"the service failed: {type(exc).__name__}: {exc}"
    error: dict[str, Any] = {"type": type(exc).__name__ if isinstance(exc, UniPoseError) else "ServiceError",
                             "status": status, "message": message}
    parts = _MESSAGE_PARTS.match(message) or _MESSAGE_PARTS.search(message.split(": ", 1)[-1])
    if parts:
        error.update(parts.groupdict())
    return status, {"error": error}


_SERVICE_ERRORS = {cls.__name__: cls for cls in (LimitExceededError, AuthenticationError, ServiceOverloadedError,
                                                   ServiceTimeoutError, ServiceError)}


def error_from_body(status: int, body: Any, retry_after: str | None = None) -> UniPoseError:
    """The typed exception an error response stands for (the same class and message the service raised)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return ServiceError(f"received HTTP {status} with a body that is not a unipose error ({str(body)[:200]!r}); "
                            "expected an error object. Check that the URL points at `unipose serve`.")
    name = str(error.get("type", ""))
    cls = _SERVICE_ERRORS.get(name) or getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, UniPoseError)):
        cls = ServiceError
    exc = cls(error["message"])
    if isinstance(exc, ServiceOverloadedError) and retry_after is not None:
        try:
            exc.retry_after_s = float(retry_after)
        except ValueError:
            pass
    return exc


# ---------------------------------------------------------------------------------------------- inputs


def decode_base64(text: Any, what: str, error: type[UniPoseError]) -> bytes:
    """Strict base64 (a `data:...;base64,` prefix allowed) -> bytes."""
    if not isinstance(text, str):
        raise error.make(f"{what} of type {type(text).__name__}", "a base64 string",
                         "Encode the file's bytes with base64.")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error.make(f"{what} that is not valid base64 ({exc})", "the file's bytes in base64",
                         "Encode with base64.b64encode(data).decode('ascii').") from None


def is_batch_of_objects(value: Any) -> bool:
    """A JSON list of IMAGE / POSE items (strings or objects) is a batch; a nested number array is one pose."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, (str, dict)) for v in value)


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise LimitExceededError.make(f"{what} of {width}x{height} = {width * height} pixels",
                                      f"at most {max_pixels} pixels", "Downscale the image before sending it.")


def image_from_bytes(data: bytes, what: str, max_pixels: int) -> Any:
    """An image file's bytes -> an upright PIL image (as `load_image` reads a file), its size checked from the
    header before the pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    unreadable = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)

    def refused(exc: BaseException) -> InvalidImageError:
        return InvalidImageError.make(f"{what} that cannot be decoded as an image ({type(exc).__name__}: {exc})",
                                      "a readable image file (PNG, JPEG, BMP, TIFF, WebP, ...)",
                                      "Send the complete file's bytes.")

    try:
        opened = Image.open(io.BytesIO(data))
    except unreadable as exc:
        raise refused(exc) from None
    with opened:
        _check_pixels(opened.width, opened.height, max_pixels, what)
        try:
            opened.load()
            return ImageOps.exif_transpose(opened)
        except unreadable as exc:
            raise refused(exc) from None


def array_from_npy(data: bytes, what: str, error: type[UniPoseError], max_elements: int) -> np.ndarray:
    """A .npy file's bytes -> array, read without pickles; its size checked from the header before the data."""
    handle = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = read_header(handle)  # the header only: nothing is allocated yet
    except (ValueError, OSError) as exc:
        raise error.make(f"{what} that is not a .npy file ({exc})", "the bytes of np.save(..., allow_pickle=False)",
                         "Save the array with numpy.save.") from None
    if dtype.hasobject:
        raise error.make(f"{what} holding Python objects", "a numeric array", "Send numbers only.")
    elements = math.prod(shape)
    if elements > max_elements:
        raise LimitExceededError.make(f"{what} of shape {list(shape)} ({elements} values)",
                                      f"at most {max_elements} values", "Downscale the array before sending it.")
    handle.seek(0)
    try:
        return np.load(handle, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise error.make(f"{what} that cannot be read ({exc})", "a complete .npy file",
                         "Send the whole file.") from None


def decode_image(value: Any, what: str, max_pixels: int) -> Any:
    """One IMAGE (see the module doc) -> a PIL image or a numpy array for `Estimator` / `Describer`."""
    if isinstance(value, str):
        return image_from_bytes(decode_base64(value, what, InvalidImageError), what, max_pixels)
    if isinstance(value, dict) and set(value) <= {"data", "name"} and "data" in value:
        return image_from_bytes(decode_base64(value["data"], what, InvalidImageError), what, max_pixels)
    if isinstance(value, dict) and set(value) <= {"npy", "name"} and "npy" in value:
        data = decode_base64(value["npy"], what, InvalidImageError)
        return array_from_npy(data, what, InvalidImageError, 4 * max_pixels)  # up to 4 channels
    raise InvalidImageError.make(f"{what} of type {type(value).__name__}" + (
        f" with keys {sorted(value)}" if isinstance(value, dict) else ""),
        'a base64 string, {"data": base64 file bytes} or {"npy": base64 .npy bytes}',
        "Encode the image file with base64.")


def decode_pose(value: Any, what: str) -> Any:
    """One POSE (see the module doc) -> a one-row Pose."""
    from unipose_sdk.body.pose import Pose, read_pose_file
    from unipose_sdk.tasks.base import as_pose

    if isinstance(value, dict) and "file" in value and set(value) <= {"file", "name"}:
        data = decode_base64(value["file"], what, InvalidPoseError)
        name = Path(str(value.get("name") or "pose")).name  # the suffix only helps a reader's message
        with tempfile.TemporaryDirectory(prefix="unipose-serve-") as tmp:
            path = Path(tmp) / (name if "." in name else f"{name}.bin")
            path.write_bytes(data)
            try:
                pose = read_pose_file(path).pose
            except UniPoseError as exc:
                raise type(exc)(str(exc).replace(str(path), f"the uploaded {what}")) from None
        return as_pose(pose, what)
    dtype = np.float64
    if isinstance(value, dict) and "array" in value and set(value) <= {"array", "dtype"}:
        dtype = {"float32": np.float32, "float64": np.float64}.get(value.get("dtype", "float64"))
        if dtype is None:
            raise InvalidPoseError.make(f"{what} with dtype={value.get('dtype')!r}", "'float32' or 'float64'",
                                        "Leave dtype out for float64.")
        value = value["array"]
    if not isinstance(value, list):
        raise InvalidPoseError.make(f"{what} of type {type(value).__name__}",
                                    'a nested array of numbers, {"array": ...} or {"file": base64 pose file}',
                                    "Send the pose as numbers, e.g. 66 axis-angle values.")
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidPoseError.make(f"{what} that is not a rectangular array of numbers ({exc})",
                                    "a nested array of numbers in one pose layout",
                                    "Send e.g. 66 axis-angle values or 22x3x3 rotation matrices.") from None
    return as_pose(Pose.from_any(array), what)


@dataclass(frozen=True)
class PoseCodes:
    """A CHAT_POSE given by its codes: checked against the model's codebook on the replica (which knows it)."""

    codes: tuple[int, ...]


MAX_POSE_CODES = 1024  # far above any model's 80; only bounds what is read before the replica checks the codes


def decode_pose_codes(value: Any, what: str) -> PoseCodes:
    """{"codes": [ints]} or [ints] -> PoseCodes (their number and range are the model's to check: a UniPose pose
    has 80, a ChatPose pose none)."""
    codes = value.get("codes") if isinstance(value, dict) else value
    if not (isinstance(codes, list) and len(codes) <= MAX_POSE_CODES
            and all(isinstance(c, int) and not isinstance(c, bool) for c in codes)):
        raise InvalidPoseError.make(f"{what} with codes of type {type(codes).__name__}" + (
            f" ({len(codes)} items)" if isinstance(codes, list) else ""), "a list of integer codebook indices",
            'Send the "codes" of a pose of an earlier reply as they came.')
    return PoseCodes(tuple(codes))


def decode_chat_pose(value: Any, what: str) -> Any:
    """One CHAT_POSE (see the module doc) -> PoseCodes or a one-row Pose."""
    if isinstance(value, dict) and set(value) == {"codes"}:
        return decode_pose_codes(value, what)
    return decode_pose(value, what)


def decode_text(value: Any, what: str, max_chars: int) -> str:
    """One text: the SDK's own checks (non-empty UTF-8), and the service's length limit."""
    from unipose_sdk.tasks.base import check_text

    text = check_text(value, what)
    if len(text) > max_chars:
        raise InvalidTextError.make(f"a {what} of {len(text)} characters", f"at most {max_chars} characters",
                                    f"Shorten the {what}.")
    return text


def check_batch(items: Sequence[Any], max_items: int, what: str) -> None:
    if len(items) > max_items:
        raise LimitExceededError.make(f"{len(items)} {what} in one request", f"at most {max_items}",
                                      "Split the batch over several requests.")


# ---------------------------------------------------------------------------------------------- client side inputs


def encode_image(image: Any) -> dict[str, str]:
    """An image as the SDK takes it (path, PIL, numpy, torch) -> an IMAGE object; a file travels as its bytes,
    an array as .npy, a PIL image as PNG (lossless), so the service decodes exactly what a local call reads."""
    import os

    from unipose_sdk.fileio import open_regular_file

    if isinstance(image, (str, os.PathLike)):
        with open_regular_file(image, "image file", InvalidImageError, "Name one image file.") as handle:
            return {"data": base64.b64encode(handle.read()).decode("ascii"), "name": Path(image).name}
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL
        out = io.BytesIO()
        image.save(out, format="PNG")
        return {"data": base64.b64encode(out.getvalue()).decode("ascii")}
    if hasattr(image, "detach"):  # torch
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        out = io.BytesIO()
        np.save(out, image, allow_pickle=False)
        return {"npy": base64.b64encode(out.getvalue()).decode("ascii")}
    raise InvalidImageError.make(f"an object of type {type(image).__name__}",
                                 "a file path, a PIL image, a numpy array or a torch tensor",
                                 "Pass the image in one of those forms.")


def encode_pose(pose: Any) -> dict[str, Any]:
    """A pose as the SDK takes it -> a POSE object: a file travels as its bytes, a Pose as its float32 rotation
    matrices, an array in its own layout and precision."""
    import os

    from unipose_sdk.body.pose import Pose
    from unipose_sdk.fileio import open_regular_file

    if isinstance(pose, (str, os.PathLike)):
        with open_regular_file(pose, "pose file", errors.PoseFormatError, "Name one pose file.") as handle:
            return {"file": base64.b64encode(handle.read()).decode("ascii"), "name": Path(pose).name}
    if isinstance(pose, Pose):
        if len(pose) != 1:
            raise InvalidInputError.make(f"a Pose holding {len(pose)} poses", "exactly one pose",
                                         "Pass a list of poses for a batch, one pose per item.")
        return {"array": pose.rotmat[0].cpu().numpy().tolist(), "dtype": "float32"}
    if hasattr(pose, "detach"):
        pose = pose.detach().cpu().numpy()
    if isinstance(pose, dict):
        pose = Pose.from_any(pose)  # SMPL parameters: converted here, sent as matrices
        return encode_pose(pose)
    array = np.asarray(pose)
    if array.dtype.kind not in "fiu":
        raise InvalidPoseError.make(f"a pose of type {type(pose).__name__}", "a Pose, an array or a pose file path",
                                    "Build one with Pose.from_any(x).")
    return {"array": array.tolist(), "dtype": "float32" if array.dtype == np.float32 else "float64"}


def encode_chat_pose(pose: Any) -> dict[str, Any]:
    """A pose as `Assistant.ask` takes it -> a CHAT_POSE: a ReplyPose by its codes, anything else as `encode_pose`."""
    from unipose_sdk.results import ReplyPose

    if isinstance(pose, ReplyPose):
        return {"codes": [int(c) for c in pose.codes]}
    return encode_pose(pose)


# ---------------------------------------------------------------------------------------------- results


def _rotmat(pose: Any) -> list[Any]:
    return pose.rotmat[0].cpu().numpy().tolist()


def pose_files(result: Any, formats: Sequence[str]) -> dict[str, str]:
    """The result's pose in each requested format, base64; png: the CLI's rendering (source and edited side by
    side for an edit)."""
    from unipose_sdk.body.render import render_poses_png

    pose = getattr(result, "pose", None)
    if pose is None or not formats:
        return {}
    files = {}
    with tempfile.TemporaryDirectory(prefix="unipose-serve-") as tmp:
        for fmt in formats:
            path = Path(tmp) / f"pose.{fmt}"
            if fmt == "png":
                source = getattr(result, "source_pose", None)
                render_poses_png([source, pose] if source is not None else [pose], path,
                                 titles=["source", "edited"] if source is not None else None)
            else:
                pose.save(path)
            files[fmt] = base64.b64encode(path.read_bytes()).decode("ascii")
    return files


def check_wire_formats(formats: Any) -> tuple[str, ...]:
    if formats is None:
        return ()
    if isinstance(formats, str):
        formats = [f for f in formats.replace(",", " ").split() if f]
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise InvalidInputError.make(f"formats={formats!r}", f"a list of names from {list(WIRE_POSE_FORMATS)}",
                                     'Send e.g. "formats": ["npz", "bvh"].')
    unknown = sorted(set(formats) - set(WIRE_POSE_FORMATS))
    if unknown:
        raise InvalidInputError.make(f"the pose formats {unknown}", f"names from {list(WIRE_POSE_FORMATS)}",
                                     "Pick formats from that list.")
    if "glb" in formats:
        from unipose_sdk.body.gltf import require_pygltflib

        require_pygltflib()
    return tuple(f for f in WIRE_POSE_FORMATS if f in formats)


def encode_result(result: Any, formats: Sequence[str] = ()) -> dict[str, Any]:
    """A task result -> its JSON object (see the module doc)."""
    from unipose_sdk.results import AssistantReply

    item = result.to_dict()
    item["kind"] = type(result).__name__
    if isinstance(result, AssistantReply):  # every pose of the reply, each in the wire form of a pose result
        for pose_item, reply_pose in zip(item["poses"], result.poses):
            pose_item["rotmat"] = _rotmat(reply_pose.pose)
            if formats:
                pose_item["files"] = pose_files(reply_pose, formats)
        item["generated_ids"] = [int(t) for t in result.generated_ids]
        return item
    if getattr(result, "pose", None) is not None:
        item["pose_rotmat"] = _rotmat(result.pose)
    if getattr(result, "source_pose", None) is not None:
        item["source_pose_rotmat"] = _rotmat(result.source_pose)
    for name in ("prompt", "instruction"):
        if hasattr(result, name):
            item[name] = getattr(result, name)
    if formats:
        item["files"] = pose_files(result, formats)
    return item


def decode_result(item: dict[str, Any]) -> Any:
    """A result's JSON object -> the result class a local call returns, with the same values (the pose from its
    exact float32 matrices)."""
    from unipose_sdk.body.pose import Pose
    from unipose_sdk.results import (
        AssistantReply,
        DescribeResult,
        EditResult,
        EstimateResult,
        GenerateResult,
        ReplyPose,
        RunInfo,
    )

    classes = {c.__name__: c for c in (EstimateResult, GenerateResult, EditResult, DescribeResult, AssistantReply)}
    cls = classes.get(item.get("kind", ""))
    if cls is None:
        raise ServiceError(f"received a result of kind {item.get('kind')!r}; expected one of {sorted(classes)}. "
                           "Check that the client and the service are the same unipose-sdk version.")
    fields: dict[str, Any] = {
        "timing_ms": dict(item["timing_ms"]), "run": RunInfo(**item["run"]), "text": item.get("text", ""),
        "input": dict(item.get("input", {})), "batch_size": int(item.get("batch_size", 1)),
        "decode_steps": int(item.get("decode_steps", 0)), "pose_steps": int(item.get("pose_steps", 0)),
    }
    if cls is AssistantReply:
        return AssistantReply(
            **fields, poses=[ReplyPose(Pose(np.asarray([p["rotmat"]], dtype=np.float32)), [int(c) for c in p["codes"]])
                             for p in item.get("poses", [])],
            turn=int(item.get("turn", 0)), finish_reason=str(item.get("finish_reason", "")),
            prompt_tokens=int(item.get("prompt_tokens", 0)), reused_tokens=int(item.get("reused_tokens", 0)),
            generated_ids=[int(t) for t in item.get("generated_ids", [])])
    if cls is not DescribeResult:
        fields["pose"] = Pose(np.asarray([item["pose_rotmat"]], dtype=np.float32))
        fields["pose_codes"] = [int(c) for c in item.get("pose_codes", [])]
    if cls is GenerateResult:
        fields["prompt"] = item.get("prompt", "")
    if cls is EditResult:
        fields["instruction"] = item.get("instruction", "")
        fields["edited_regions"] = [str(r) for r in item.get("edited_regions", [])]
        if item.get("source_pose_rotmat") is not None:
            fields["source_pose"] = Pose(np.asarray([item["source_pose_rotmat"]], dtype=np.float32))
    return cls(**fields)
