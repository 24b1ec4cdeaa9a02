"""Reading torch `.ckpt` / `.bin` files without running anything they contain.

A torch file is a pickle, and a pickle can call any importable function while it loads. Two readers, both
restricted, are tried in turn:

1. torch's own weights-only reader (`torch.load(weights_only=True)`): tensors, dtypes and plain containers,
   in the zip format and the legacy (non-zip) format. Most files stop here.
2. When that reader refuses a global (a Lightning checkpoint pickles hyper-parameters, callback states, ...),
   a zip-format file is read again by `RestrictedUnpickler` below, with our own storage reader for the zip's
   `data/<key>` records:
   - tensor reconstruction, storages, dtypes, `collections.OrderedDict` and plain builtins resolve to the real
     objects (or to our own tensor-rebuild functions);
   - a handful of metadata reconstructors (numpy scalars and dtypes, paths, dates, protocol-1 objects) resolve
     to a function that returns an inert placeholder without calling anything;
   - any other global becomes a placeholder class: building an instance of it (what pickling a data object
     does) yields an inert object that keeps nothing, and calling it (what every code-running payload does)
     stops the load with a CheckpointError naming the global.
   No module named by the file is ever imported. A legacy-format file that the weights-only reader refuses is
   refused too, with the conversion to make.
"""

from __future__ import annotations

import builtins
import logging
import math
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from unipose_sdk.errors import CheckpointError

log = logging.getLogger("unipose_sdk")

ZIP_MAGIC = b"PK\x03\x04"
_RESAVE_HINT = ("If you trust the file's origin, re-save only its tensors in the zip format (torch.save(state_dict, "
                "'weights.pt')) or as safetensors; otherwise do not use it.")

# Storage classes a torch pickle names -> the element dtype of their bytes.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
# Containers and scalars protocol-2 pickles rebuild by calling their type (sets, complex numbers); no type that
# allocates from a size argument (bytes, bytearray, range), so a file cannot ask for memory it does not hold.
_BUILTINS = frozenset({"set", "frozenset", "tuple", "list", "dict", "int", "float", "complex", "str", "bool"})
# Reconstructors of metadata that checkpoints commonly carry next to the weights; none of it is needed to
# rebuild tensors, so they return a placeholder instead of being called.
_INERT_RECONSTRUCTORS = frozenset({
    ("copyreg", "_reconstructor"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("pathlib", "Path"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"), ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timedelta"),
})


class _RefusedCall(Exception):
    """Raised inside the unpickler when the file asks to call a global outside the allow-list."""


class _PlaceholderMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedCall(cls.qualified_name)


class Placeholder(metaclass=_PlaceholderMeta):
    """Stands for an object of a class the checkpoint names but that is not needed for tensors.

    Built without calling the real class (its module is never imported); it keeps none of the pickled state and
    cannot be called, so nothing from the file runs through it."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:  # BUILD: the state is dropped
        pass

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS of dict subclasses (e.g. AttributeDict)
        pass

    def append(self, item: Any) -> None:  # APPENDS of list subclasses
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


def _placeholder_class(qualified: str) -> type:
    """A new subclass of Placeholder named after the global (for the log and the refusal message)."""
    return _PlaceholderMeta(qualified.rsplit(".", 1)[-1], (Placeholder,), {"qualified_name": qualified})


def _inert_reconstructor(placeholder: type) -> Any:
    def reconstruct(*args: Any, **kwargs: Any) -> Placeholder:
        return placeholder.__new__(placeholder)

    return reconstruct


class _Storage:
    """One `data/<key>` record of the archive: its bytes and the element dtype the pickle gives them."""

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype, numel: int) -> None:
        self.untyped, self.dtype, self.numel = untyped, dtype, numel


class _StorageKind:
    """What a pickled storage-class global resolves to: only its element dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise pickle.UnpicklingError(f"tensor {what} {value!r} is not a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor(_v2) for our storages: a view with bounds checked before it is made.
    The extra arguments (requires_grad, backward hooks, metadata) are training state and are dropped."""
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise pickle.UnpicklingError("tensor rebuild without a storage from this file")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor size {size} / stride {stride} / offset {storage_offset} do not agree")
    if math.prod(size) > 0:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise pickle.UnpicklingError(f"tensor view reaches element {last} of a storage of {storage.numel}")
    tensor = torch.empty((0,), dtype=storage.dtype)
    return tensor.set_(storage.untyped, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """torch._utils._rebuild_parameter: the loaders want tensors, so the Parameter wrapper is not rebuilt."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter rebuild without a tensor")
    return data


def _encode_text(text: Any, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes objects (latin-1 text)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"_codecs.encode with {type(text).__name__} / {encoding!r}")
    return text.encode(encoding)


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("_codecs", "encode"): _encode_text,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for one torch zip archive's `data.pkl` (see the module docstring for what resolves to what).

    `placeholders` collects the globals that became placeholders, for the log note."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, archive_bytes: int) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.archive_bytes = archive, prefix, archive_bytes
        self._placeholders: dict[str, type] = {}
        self._storages: dict[str, _Storage] = {}

    @property
    def placeholders(self) -> set[str]:
        return set(self._placeholders)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[module, name]
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(_STORAGE_DTYPES[name])
        # vars(), not getattr(): torch's module __getattr__ would import submodules for unknown names.
        if module == "torch" and isinstance(vars(torch).get(name), (torch.dtype, torch.layout, torch.memory_format)):
            return vars(torch)[name]
        qualified = f"{module}.{name}"
        if qualified not in self._placeholders:
            self._placeholders[qualified] = _placeholder_class(qualified)
        if (module, name) in _INERT_RECONSTRUCTORS:
            return _inert_reconstructor(self._placeholders[qualified])
        return self._placeholders[qualified]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageKind) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:100]}")
        _, kind, key, _location, numel = pid  # every storage is loaded on the CPU, whatever device it was saved on
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, kind.dtype, numel)
        storage = self._storages[key]
        if storage.dtype != kind.dtype:
            raise pickle.UnpicklingError(f"storage {key} is used as {storage.dtype} and {kind.dtype}")
        return storage

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise pickle.UnpicklingError(f"the archive has no record {name}") from None
        item = torch.empty((), dtype=dtype).element_size()
        # torch stores records uncompressed, so no record can be larger than the archive itself.
        if info.file_size != numel * item or info.file_size > self.archive_bytes:
            raise pickle.UnpicklingError(f"record {name} holds {info.file_size} bytes, not {numel} x {item}")
        buffer = bytearray(info.file_size)
        with self.archive.open(info) as handle:
            if handle.readinto(memoryview(buffer)) != info.file_size:
                raise pickle.UnpicklingError(f"record {name} is truncated")
        data = torch.frombuffer(buffer, dtype=torch.uint8) if buffer else torch.empty(0, dtype=torch.uint8)
        return _Storage(data.untyped_storage(), dtype, numel)


def _tampered_tensors(data: Any) -> list[str]:
    """Paths of tensors the pickle changed after rebuilding them. torch.save never does that, but a hand-made
    pickle can BUILD a tensor (Tensor.__setstate__: another storage view, backward hooks, attributes)."""
    found, stack, seen = [], [("", data)], set()
    while stack:
        where, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if type(obj) is not torch.Tensor or obj.__dict__ or obj._backward_hooks or obj.requires_grad:
                found.append(where or "<top>")
        elif isinstance(obj, dict):
            stack.extend((f"{where}[{k!r}]", v) for k, v in obj.items())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(obj))
    return found


def _weights_only_reason(exc: Exception) -> str:
    """What torch's weights-only reader refused, without its preamble (which recommends weights_only=False:
    exactly what must not be done with a file of unknown origin)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    for marker in ("WeightsUnpickler error:", "Trying to load"):
        if marker in text:
            text = text[text.index(marker):]
            break
    return text.split(" Check the documentation")[0][:300] or type(exc).__name__


def load_torch_file(path: str | os.PathLike, what: str, *, mmap: bool = False) -> Any:
    """Read a torch `.ckpt` / `.bin` / `.pt` file without running code from it (see the module docstring).

    `what` names the expected content for error messages. CheckpointError for anything unreadable, truncated,
    in the legacy format with foreign objects, or asking to call a function outside tensor reconstruction."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == ZIP_MAGIC
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        first_error = _weights_only_reason(exc)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds (RuntimeError, EOFError, OSError ...)
        raise CheckpointError.make(
            f"{path}, which torch.load cannot read ({type(exc).__name__}: {str(exc)[:200]})", what,
            "Check that the file is complete (download it again) and that it is the file this option expects.",
        ) from None
    if not is_zip:
        raise CheckpointError.make(
            f"{path}, a legacy-format (non-zip) torch file that torch.load cannot read with weights only, e.g. "
            f"because it holds objects besides tensors ({first_error})",
            f"{what}: tensors and plain containers, or a zip-format torch file", _RESAVE_HINT)
    return _load_zip_restricted(path, what, first_error)


def _load_zip_restricted(path: Path, what: str, first_error: str) -> Any:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError.make(
                    f"{path}, a zip archive with {len(pickles)} data.pkl records", f"{what} saved by torch.save",
                    "Pass the checkpoint file itself, not another archive.")
            prefix = pickles[0][: -len("data.pkl")]
            if f"{prefix}byteorder" in archive.namelist() and \
                    archive.read(f"{prefix}byteorder").decode("ascii", "replace") != sys.byteorder:
                raise CheckpointError.make(f"{path}, saved on a machine of the other byte order",
                                           f"{what} in {sys.byteorder}-endian order", _RESAVE_HINT)
            with archive.open(pickles[0]) as handle:
                unpickler = RestrictedUnpickler(handle, archive, prefix, path.stat().st_size)
                data = unpickler.load()
    except CheckpointError:
        raise
    except _RefusedCall as exc:
        raise CheckpointError.make(
            f"{path}, whose pickle asks to call {exc} while loading (refused: nothing from the file was run)",
            f"{what}: tensors, plain containers and data objects only", _RESAVE_HINT) from None
    except Exception as exc:  # noqa: BLE001 - zip and pickle parse failures of every kind (BadZipFile, EOFError ...)
        raise CheckpointError.make(
            f"{path}, which cannot be read as a torch checkpoint ({type(exc).__name__}: {str(exc)[:200]}; "
            f"the weights-only reader said: {first_error})", what,
            "Check that the file is complete (download it again) and that it is the file this option expects.",
        ) from None
    tampered = _tampered_tensors(data)
    if tampered:
        raise CheckpointError.make(
            f"{path}, whose pickle modifies tensors after rebuilding them ({', '.join(tampered[:5])})",
            f"{what} as torch.save writes it", _RESAVE_HINT)
    if unpickler.placeholders:
        log.info("checkpoint %s: kept %d kinds of non-tensor objects as inert placeholders (not needed for the "
                 "weights): %s", path, len(unpickler.placeholders), ", ".join(sorted(unpickler.placeholders)[:12]))
    return data
