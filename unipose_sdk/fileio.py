"""Atomic file and directory writes: a failed write leaves nothing half-written, and an existing target is
replaced only once the new content is complete. Every writer in the SDK goes through these."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from unipose_sdk.errors import InvalidInputError, UniPoseFileNotFoundError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`. If `write` (or anything
    else) fails, the temporary file is removed and `path` is untouched. Returns the final path."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise UniPoseFileNotFoundError(f"received the output path {str(path)!r} whose directory does not exist; "
                                       f"expected a path in an existing directory. Create {str(path.parent)!r} "
                                       f"first.")
    if path.is_dir():
        raise InvalidInputError(f"received the output path {str(path)!r}, which is a directory; expected a file "
                                f"path. Add a file name, e.g. {str(path / 'pose.npz')!r}.")
    # mkstemp makes the file 0600; give it the mode an ordinary new file gets (or the one it replaces).
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_current_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_directory(new: Path, target: Path) -> None:
    """Rename the finished directory `new` to `target`; an existing target is moved aside first and removed only
    after the swap, so a failure leaves the old target in place."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _current_umask() -> int:
    # The only portable way to read the umask is to set it; read it once, at first use.
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None
