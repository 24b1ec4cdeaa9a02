"""Pose files: read by content, written atomically.

Readable layouts (the format is recognised from the file's first bytes and, for .npz, from its keys; the
extension is only a hint):

| layout | content |
|---|---|
| smplx .npz | `global_orient` [B, 3], `body_pose` [B, 63] or [B, 21, 3] axis-angle (or [B, 1|-, 3, 3] / [B, 21, 3, 3] matrices); optional `transl` [B, 3], `betas` [B, K] or [K] |
| AMASS .npz | `root_orient` [N, 3] and `pose_body` [N, 63]; or `poses` [N, 156] (SMPL-H) / [N, 165] (SMPL-X) / [N, 72] / [N, 66] whose first 66 values are ours; optional `trans` [N, 3], `betas` |
| .npy | the official UniPose demo's (22, 3, 3) float32 rotation matrices, or (B, 22, 3, 3); any array `Pose.from_any` recognises by shape also works |
| JSON | `{"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle" | "rotmat" | "rotation_6d", "joint_names": [22 names], "poses": [B x 22 x 3 | 3x3 | 6], "transl_m": [B x 3] (optional), "betas": [B x K] or [K] (optional)}` |

Writing picks the layout from the extension: .npz -> smplx keys (float32 axis-angle), .npy -> the demo's
matrices ((22, 3, 3) for one pose, (B, 22, 3, 3) otherwise), .json -> the JSON schema above with axis-angle.
Every write goes to a temporary file in the target directory that is renamed over the target only once complete,
so a failed save leaves the previous file (or nothing) behind. Pickles are never unpickled.

Reading checks before it reads: the path must name a regular file (a FIFO would block, a device stream forever),
a JSON document may nest at most `MAX_JSON_DEPTH` levels and its numbers must be JSON numbers (not strings or
booleans), every stored value must fit a float32, and a damaged .npz member is a PoseFormatError naming the file
and the member.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from unipose_sdk.body.pose import Pose
from unipose_sdk.body.skeleton import JOINT_NAMES
from unipose_sdk.errors import InvalidInputError, InvalidPoseError, PoseFormatError
from unipose_sdk.fileio import atomic_write, open_regular_file, parse_json

JSON_FORMAT_NAME = "unipose-pose"
JSON_FORMAT_VERSION = 1
_JSON_ROTATION_FORMATS = {"axis_angle": 3, "rotmat": (3, 3), "rotation_6d": 6}
WRITE_EXTENSIONS = (".npz", ".npy", ".json")
# The pose JSON nests 5 levels at most (document, poses, pose, joint, matrix row); deeper input is refused before
# it is parsed (a deep enough document would exhaust the parser's recursion).
MAX_JSON_DEPTH = 8

_ACCEPTED_LAYOUTS = (
    "a .npz with smplx keys (global_orient + body_pose [+ transl, betas]) or AMASS keys (root_orient + pose_body, "
    "or poses [N, 66|72|156|165] [+ trans, betas]); a .npy of (22, 3, 3) or (B, 22, 3, 3) rotation matrices; or a "
    f"JSON document with \"format\": \"{JSON_FORMAT_NAME}\""
)


@dataclass(frozen=True)
class PoseFile:
    """What a pose file holds: the poses and, when the file has them, root translation and body shape."""

    pose: Pose
    transl_m: np.ndarray | None  # [B, 3] float32 metres
    betas: np.ndarray | None  # [B, K] or [K] float32 shape coefficients (unused by UniPose, kept for round trips)
    layout: str  # "smplx-npz", "amass-npz", "amass-poses-npz", "npy", "json"




# ---------------------------------------------------------------------------------------------- reading
_FILE_FIX = f"Name a pose file ({_ACCEPTED_LAYOUTS})."


def detect_pose_format(path: str | os.PathLike) -> str:
    """'npz', 'npy' or 'json', from the file's first bytes (not its extension)."""
    with open_regular_file(path, "pose file", PoseFormatError, _FILE_FIX) as handle:
        return _format_of(Path(path).expanduser(), handle.read(64))


def _format_of(p: Path, head: bytes) -> str:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
        return "json"
    if not head:
        found = "an empty file"
    elif head[:1] == b"\x80":
        found = "a Python pickle (e.g. a torch checkpoint or an SMPL model file), which is never unpickled"
    else:
        found = f"a file starting with the bytes {head[:16]!r}"
    raise PoseFormatError(f"received {str(p)!r}: {found}; expected {_ACCEPTED_LAYOUTS}. Convert the pose to one "
                          f"of these layouts (see unipose_sdk.body.io).")


def _pose_error_in(p: Path, exc: InvalidPoseError) -> InvalidPoseError:
    return InvalidPoseError(f"in {str(p)!r}: {exc}")


def _float_array(value: np.ndarray, p: Path, key: str) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.floating):
        raise PoseFormatError(f"received {str(p)!r} whose '{key}' has dtype {value.dtype} and shape "
                              f"{list(value.shape)}; expected floating-point numbers. Re-save it as float32.")
    if not np.all(np.isfinite(value)):
        raise InvalidPoseError(f"received {str(p)!r} whose '{key}' holds NaN or infinite values; expected finite "
                               f"numbers. Repair or drop those rows.")
    with np.errstate(over="ignore"):
        single = value.astype(np.float32)
    if not np.all(np.isfinite(single)):
        worst = float(np.max(np.abs(value)))
        raise InvalidPoseError(f"received {str(p)!r} whose '{key}' holds values up to {worst:.3g}, beyond float32's "
                               f"range (3.4e38); expected values a float32 pose file can hold. Repair the producer.")
    return single


def _optional_transl(value: np.ndarray | None, batch: int, p: Path, key: str) -> np.ndarray | None:
    if value is None:
        return None
    value = _float_array(value, p, key)
    if value.shape == (3,):
        value = value[None]
    if value.ndim != 2 or value.shape[1] != 3 or value.shape[0] not in (1, batch):
        raise PoseFormatError(f"received {str(p)!r} whose '{key}' has shape {list(value.shape)}; expected [{batch}, "
                              f"3] (one translation per pose). Fix or remove '{key}'.")
    return np.broadcast_to(value, (batch, 3)).copy()


def _optional_betas(value: np.ndarray | None, p: Path) -> np.ndarray | None:
    if value is None:
        return None
    value = _float_array(value, p, "betas")
    if value.ndim not in (1, 2):
        raise PoseFormatError(f"received {str(p)!r} whose 'betas' has shape {list(value.shape)}; expected [K] or "
                              f"[B, K]. Fix or remove 'betas'.")
    return value


def _smplx_pose(root: np.ndarray, body: np.ndarray, p: Path) -> Pose:
    """smplx keys hold axis-angle ([B, 3] + [B, 63]) or, for `pose2rot=False` users, matrices."""
    if body.shape[-2:] == (3, 3):
        root_m = root.reshape(-1, 1, 3, 3)
        body_m = body.reshape(-1, body.shape[-3], 3, 3)
        if root_m.shape[0] != body_m.shape[0]:
            raise PoseFormatError(f"received {str(p)!r} with global_orient {list(root.shape)} and body_pose "
                                  f"{list(body.shape)}; expected the same number of poses in both.")
        return Pose.from_rotmat(np.concatenate([root_m, body_m], axis=1))
    return Pose.from_smpl(root, body)


# What numpy and zipfile raise for damaged archives and members (a bad CRC, a truncated stream, a bad header).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, NotImplementedError)


def _read_npz(p: Path, handle: BinaryIO) -> PoseFile:
    try:
        archive = np.load(handle, allow_pickle=False)
    except _DAMAGED as exc:
        raise PoseFormatError(f"received {str(p)!r}, which looks like a .npz archive but cannot be read ({exc}); "
                              f"expected {_ACCEPTED_LAYOUTS}. Re-create the file.") from None
    with archive:
        keys = set(archive.files)

        def get(key: str) -> np.ndarray | None:
            if key not in keys:
                return None
            try:
                value = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):  # an object array: would need unpickling
                    raise PoseFormatError(f"received {str(p)!r} whose '{key}' is a pickled object array; expected "
                                          f"a numeric array. Re-save it with numeric dtypes.") from None
                raise _damaged_member(p, key, exc) from None
            except _DAMAGED as exc:
                raise _damaged_member(p, key, exc) from None
            if not isinstance(value, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
                raise PoseFormatError(f"received {str(p)!r} whose member '{key}' is not a .npy array "
                                      f"({len(value)} bytes without the NumPy header); expected numeric arrays. "
                                      f"Re-create the file with np.savez.")
            return value

        if {"global_orient", "body_pose"} <= keys:
            layout, rot = "smplx-npz", lambda: _smplx_pose(
                _float_array(get("global_orient"), p, "global_orient"), _float_array(get("body_pose"), p,
                                                                                     "body_pose"), p)
            transl_key = "transl"
        elif {"root_orient", "pose_body"} <= keys:
            layout, rot = "amass-npz", lambda: Pose.from_smpl(
                _float_array(get("root_orient"), p, "root_orient"), _float_array(get("pose_body"), p, "pose_body"))
            transl_key = "trans"
        elif "poses" in keys:
            layout, rot = "amass-poses-npz", lambda: Pose.from_any(_float_array(get("poses"), p, "poses"))
            transl_key = "trans"
        else:
            raise PoseFormatError(f"received {str(p)!r}, a .npz with keys {sorted(keys)}; expected "
                                  f"{_ACCEPTED_LAYOUTS}. Rename the arrays to one of these key sets.")
        try:
            pose = rot()
        except PoseFormatError:
            raise
        except InvalidPoseError as exc:
            raise _pose_error_in(p, exc) from None
        transl_key = transl_key if transl_key in keys else ("transl" if "transl" in keys else "trans")
        transl = _optional_transl(get(transl_key), len(pose), p, transl_key)
        return PoseFile(pose, transl, _optional_betas(get("betas"), p), layout)


def _damaged_member(p: Path, key: str, exc: BaseException) -> PoseFormatError:
    return PoseFormatError(f"received {str(p)!r} whose member '{key}' is damaged ({type(exc).__name__}: {exc}); "
                           f"expected a readable .npz archive. Re-create the file (a copy may have been cut short).")


def _read_npy(p: Path, handle: BinaryIO) -> PoseFile:
    try:
        array = np.load(handle, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise PoseFormatError(f"received {str(p)!r}, a .npy that cannot be read ({exc}); expected a numeric "
                                  f"(22, 3, 3) or (B, 22, 3, 3) array. Re-create the file.") from None
        raise PoseFormatError(f"received {str(p)!r}, a .npy that cannot be read without unpickling ({exc}); "
                              f"expected a numeric (22, 3, 3) or (B, 22, 3, 3) array. Re-save it with "
                              f"np.save(path, rotmat.astype(np.float32)).") from None
    except (EOFError, OSError) as exc:
        raise PoseFormatError(f"received {str(p)!r}, a .npy that cannot be read ({exc}); expected a complete "
                              f"numeric array file. Re-create the file (a copy may have been cut short).") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise PoseFormatError(f"received {str(p)!r}, a .npy of dtype {array.dtype} and shape {list(array.shape)}; "
                              f"expected floating-point rotation matrices (22, 3, 3) or (B, 22, 3, 3).")
    if np.issubdtype(array.dtype, np.floating) and array.size:
        array = _float_array(array, p, "array")
    try:
        return PoseFile(Pose.from_any(array), None, None, "npy")
    except InvalidPoseError as exc:
        if "matches no pose layout" in str(exc):
            raise PoseFormatError(f"received {str(p)!r}, a .npy of shape {list(array.shape)}; expected "
                                  f"(22, 3, 3) or (B, 22, 3, 3) rotation matrices (the UniPose demo layout), or "
                                  f"another shape Pose.from_any recognises ([B, 66], [B, 22, 3], [B, 22, 6])."
                                  ) from None
        raise _pose_error_in(p, exc) from None


def _json_numbers(value: Any, p: Path, key: str) -> np.ndarray | None:
    """A rectangular nest of JSON numbers -> float64 array; None when it is ragged or holds anything else
    (numpy alone would turn true into 1.0 and "1.5" into 1.5)."""
    try:
        nest = np.array(value, dtype=object)
    except (ValueError, RecursionError):
        return None
    flat = nest.reshape(-1)
    if not all(type(v) in (int, float) for v in flat):
        return None
    try:
        return nest.astype(np.float64)
    except OverflowError:  # an integer beyond float64
        raise InvalidPoseError(f"received {str(p)!r} whose \"{key}\" holds a number beyond float64's range; "
                               f"expected pose values. Repair the producer.") from None


def _read_json(p: Path, handle: BinaryIO) -> PoseFile:
    doc = parse_json(handle.read(), p, PoseFormatError, MAX_JSON_DEPTH,
                     f"a JSON document with \"format\": \"{JSON_FORMAT_NAME}\"")
    found = f"a JSON {type(doc).__name__}" + (f" with keys {sorted(doc)}" if isinstance(doc, dict) else "")
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT_NAME:
        format_found = doc.get("format") if isinstance(doc, dict) else None
        raise PoseFormatError(f"received {str(p)!r}: {found} and format {format_found!r}; "
                              f"expected a JSON object with \"format\": \"{JSON_FORMAT_NAME}\", \"version\": "
                              f"{JSON_FORMAT_VERSION}, \"rotation_format\" and \"poses\" (see unipose_sdk.body.io).")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > JSON_FORMAT_VERSION or version < 1:
        raise PoseFormatError(f"received {str(p)!r} with version {version!r}; expected version "
                              f"{JSON_FORMAT_VERSION} (an integer). A newer file needs a newer unipose-sdk: "
                              f"upgrade with `pip install -U unipose-sdk`.")
    rotation_format = doc.get("rotation_format")
    if not isinstance(rotation_format, str) or rotation_format not in _JSON_ROTATION_FORMATS or "poses" not in doc:
        raise PoseFormatError(f"received {str(p)!r} with rotation_format {rotation_format!r} and keys "
                              f"{sorted(doc)}; expected a \"poses\" array and rotation_format one of "
                              f"{sorted(_JSON_ROTATION_FORMATS)}.")
    names = doc.get("joint_names")
    if names is not None and (not isinstance(names, list) or names != list(JOINT_NAMES)):
        raise PoseFormatError(f"received {str(p)!r} with joint_names {names}; expected the SMPL order "
                              f"{list(JOINT_NAMES)}. Reorder the joints before saving.")
    event = _JSON_ROTATION_FORMATS[rotation_format]
    event_shape = (22,) + (event if isinstance(event, tuple) else (event,))
    poses = _json_numbers(doc["poses"], p, "poses")
    if poses is None or poses.ndim != 1 + len(event_shape) or poses.shape[1:] != event_shape:
        shape = "not a rectangular array of numbers" if poses is None else f"shape {list(poses.shape)}"
        raise PoseFormatError(f"received {str(p)!r} whose \"poses\" is {shape}; expected [B, "
                              f"{', '.join(map(str, event_shape))}] for rotation_format {rotation_format!r}.")
    constructor = {"axis_angle": Pose.from_axis_angle, "rotmat": Pose.from_rotmat, "rotation_6d": Pose.from_6d}
    try:
        pose = constructor[rotation_format](poses)
    except InvalidPoseError as exc:
        raise _pose_error_in(p, exc) from None

    def optional(key: str) -> np.ndarray | None:
        if doc.get(key) is None:
            return None
        values = _json_numbers(doc[key], p, key)
        if values is None:
            raise PoseFormatError(f"received {str(p)!r} whose \"{key}\" is not an array of numbers; expected "
                                  f"numbers. Fix or remove \"{key}\".")
        return values

    transl = _optional_transl(optional("transl_m"), len(pose), p, "transl_m")
    return PoseFile(pose, transl, _optional_betas(optional("betas"), p), "json")


def read_pose_file(path: str | os.PathLike) -> PoseFile:
    """Read poses and, where present, translation and betas; the layout is recognised from the content."""
    with open_regular_file(path, "pose file", PoseFormatError, _FILE_FIX) as handle:
        p = Path(path).expanduser()
        reader = {"npz": _read_npz, "npy": _read_npy, "json": _read_json}[_format_of(p, handle.read(64))]
        handle.seek(0)
        return reader(p, handle)


def load_pose(path: str | os.PathLike) -> Pose:
    """The poses in a file (see the table at the top of this module)."""
    return read_pose_file(path).pose


# ---------------------------------------------------------------------------------------------- writing
def _as_numpy_f32(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(f"received {what} of type {type(value).__name__}; expected an array of numbers."
                                ) from None
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"received {what} with NaN or infinite values; expected finite numbers.")
    return array


def save_pose(pose: Pose, path: str | os.PathLike, transl_m: Any = None, betas: Any = None) -> Path:
    """Write `pose` atomically; .npz (smplx keys), .npy (demo matrices) or .json by extension. Returns the path."""
    if not isinstance(pose, Pose):
        raise InvalidInputError(f"received {type(pose).__name__}; expected a Pose. Build one with "
                                f"`Pose.from_any(x)`.")
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise PoseFormatError(f"received the output path {str(p)!r} with extension {ext or '(none)'!r}; expected "
                              f"one of {', '.join(WRITE_EXTENSIONS)}. Change the file name's extension.")
    batch = len(pose)
    transl = None
    if transl_m is not None:
        transl = _as_numpy_f32(transl_m, "transl_m")
        if transl.shape != (3,) and not (transl.ndim == 2 and transl.shape[1] == 3 and transl.shape[0] in (1, batch)):
            raise InvalidInputError(f"received transl_m of shape {list(transl.shape)}; expected [3] or "
                                    f"[{batch}, 3] metres. Pass one translation per pose.")
        transl = np.broadcast_to(transl.reshape(-1, 3), (batch, 3)).copy()
    betas_arr = None if betas is None else _as_numpy_f32(betas, "betas")
    if betas_arr is not None and betas_arr.ndim not in (1, 2):
        raise InvalidInputError(f"received betas of shape {list(betas_arr.shape)}; expected [K] or [B, K].")
    if ext == ".npy" and (transl is not None or betas_arr is not None):
        raise PoseFormatError(f"received transl_m/betas for {str(p)!r}; expected none: the .npy layout holds "
                              f"rotation matrices only. Save as .npz or .json to keep them.")

    if ext == ".npz":
        aa = pose.axis_angle().detach().cpu().numpy()
        arrays = {"global_orient": aa[:, :3], "body_pose": aa[:, 3:]}
        if transl is not None:
            arrays["transl"] = transl
        if betas_arr is not None:
            arrays["betas"] = betas_arr
        return atomic_write(p, lambda f: np.savez(f, **arrays))
    if ext == ".npy":
        rotmat = pose.numpy()
        return atomic_write(p, lambda f: np.save(f, rotmat[0] if batch == 1 else rotmat))
    doc: dict[str, Any] = {
        "format": JSON_FORMAT_NAME, "version": JSON_FORMAT_VERSION, "rotation_format": "axis_angle",
        "joint_names": list(JOINT_NAMES),
        "poses": pose.axis_angle().detach().cpu().double().reshape(batch, 22, 3).tolist(),
    }
    if transl is not None:
        doc["transl_m"] = transl.astype(np.float64).tolist()
    if betas_arr is not None:
        doc["betas"] = betas_arr.astype(np.float64).tolist()
    payload = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
    return atomic_write(p, lambda f: f.write(payload))
