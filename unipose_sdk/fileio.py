"""Safe reading and all-or-nothing writing of the files the SDK is handed or produces.

Reading: `check_regular_file` / `open_regular_file` refuse directories, FIFOs, devices and sockets before a byte
is read: opening a FIFO for reading blocks until a writer appears, and a device can stream forever.

Writing:
- `atomic_write` (one file): written to a temporary file beside the target and renamed over it once complete.
- `OutputSet` (several files that belong together, e.g. a result's .npz, .npy, .png and .json): written into a
  hidden staging directory inside the target directory and moved into place together, under a lock on the
  directory, so two writers cannot interleave their files; an existing file of the set is replaced only with
  `overwrite=True`. A numbered set (`numbered=True`, names PREFIX_000, PREFIX_001, ...) takes instead the next
  free numbers, chosen under the same lock at the commit, so repeated runs into one directory add to it.
- `replace_directory` (a finished directory swapped in for an old one).
New files and directories get the permissions the umask gives (the kernel applies it: they are created with
0o666 / 0o777, never with tempfile's private 0o600 / 0o700). Temporary names start with "." and end in ".tmp".

Signals: `signals_raise()` makes SIGTERM and SIGHUP raise `TerminatedBySignal` (and SIGINT KeyboardInterrupt) in
the main thread, so the cleanup above runs for them too instead of the process dying with its temporary files;
`deferred_signals()` holds them back during the few renames of a commit, so a set is complete or absent. A
process killed with SIGKILL cannot clean up: the next `OutputSet` in that directory removes the staging
directories of processes of this machine that no longer run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from unipose_sdk.errors import InvalidInputError, OutputExistsError, UniPoseError, UniPoseFileNotFoundError

# ---------------------------------------------------------------------------------------------- reading

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _kind_of(mode: int) -> str:
    for test, name in _FILE_KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: object, what: str, error: type[UniPoseError] = InvalidInputError,
                       fix: str = "Name a regular file.") -> Path:
    """`path` as a Path if it names an existing regular file (a symlink to one is fine), without opening it.

    Raises UniPoseFileNotFoundError when nothing is there, `error` for a directory, FIFO, device or socket (and
    for paths the system refuses to look at), InvalidInputError when `path` is not a str / PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError.make(f"{what} of type {type(path).__name__}",
                                     "a file path (str or pathlib.Path)", f"Pass the path of the {what}.")
    p = Path(path).expanduser()
    try:
        mode = os.stat(p).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise UniPoseFileNotFoundError.make(
            f"the {what} path {str(p)!r}, which does not exist",
            f"an existing {what}", f"Check the path (relative paths start at {os.getcwd()!r}).") from None
    except (OSError, ValueError) as exc:  # permission denied, a name too long, a NUL byte in the path
        raise error.make(f"the {what} path {str(p)!r}, which cannot be examined ({exc})",
                         f"a readable {what}", fix) from None
    if not stat.S_ISREG(mode):
        raise error.make(f"the {what} path {str(p)!r}, which is {_kind_of(mode)}",
                         "a regular file (pipes, devices and directories are never read)", fix)
    return p


def open_regular_file(path: object, what: str, error: type[UniPoseError] = InvalidInputError,
                      fix: str = "Name a regular file.") -> BinaryIO:
    """Open a regular file for binary reading; never blocks on a FIFO, even one swapped in after the check."""
    p = check_regular_file(path, what, error, fix)
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO with it returns at once instead of waiting
    try:
        fd = os.open(p, os.O_RDONLY | nonblocking | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error.make(f"the {what} path {str(p)!r}, which cannot be opened ({exc.strerror})",
                         f"a readable {what}", fix) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error.make(f"the {what} path {str(p)!r}, which became {_kind_of(mode)} while being opened",
                             "a regular file", fix)
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(data: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not count)."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    steps = (np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(codes, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(steps).max()) if steps.size else 0


def parse_json(data: bytes, source: str | os.PathLike, error: type[UniPoseError], max_depth: int,
               expected: str) -> object:
    """Decode a JSON document read from `source`, refusing invalid UTF-8 / syntax and nesting deeper than
    `max_depth` (checked before parsing: Python's parser would exhaust its recursion) with `error`."""
    name = os.fspath(source)
    depth = json_depth(data)
    if depth > max_depth:
        raise error.make(f"{name!r}, a JSON document nested {depth} levels deep",
                         f"{expected}, nested at most {max_depth} levels", "Re-create the file.")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error.make(f"{name!r}, which is not valid JSON ({exc})", expected, "Fix the syntax.") from None


# ---------------------------------------------------------------------------------------------- signals


class TerminatedBySignal(BaseException):
    """SIGTERM or SIGHUP arrived while `signals_raise()` was active. A BaseException, like KeyboardInterrupt, so
    `except Exception` blocks let it through and only cleanup code (`finally`, `except BaseException`) runs."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"terminated by {signal.Signals(signum).name}")


_CATCHABLE = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None),
                               getattr(signal, "SIGINT", None)) if s is not None)
_defer_lock = threading.Lock()
_defer_depth = 0
_pending_signals: list[int] = []
# Every signal raised since `signals_raise` began. The exception a handler raises lands in whatever code runs at
# that moment; when that is a weakref callback or a __del__ (matplotlib has some), Python prints and drops it.
# The record lets `raise_if_signalled` (called before every commit) and the CLI's wrapper still honour it.
_received_signals: list[int] = []


def _raise_for_signal(signum: int, frame: object) -> None:
    if _defer_depth:
        _pending_signals.append(signum)
        return
    _received_signals.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise TerminatedBySignal(signum)


def received_signal() -> int | None:
    """The first signal `signals_raise` turned into an exception in the current block, or None."""
    return _received_signals[0] if _received_signals else None


def raise_if_signalled() -> None:
    """Raise again for a signal whose exception may have been swallowed (see _received_signals)."""
    signum = received_signal()
    if signum is not None:
        raise KeyboardInterrupt if signum == signal.SIGINT else TerminatedBySignal(signum)


def _quiet_for_recorded_signals(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable hook that drops the exception our handler raised where Python cannot propagate it (a weakref
    callback, a __del__): the signal is recorded and raised again at the next check, so printing "Exception
    ignored" with a traceback would only alarm. Everything else goes to the previous hook."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, (TerminatedBySignal, KeyboardInterrupt)) and _received_signals:
            return
        previous(unraisable)

    return hook


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM / SIGHUP raise TerminatedBySignal and SIGINT KeyboardInterrupt (main thread only;
    elsewhere a no-op). A signal the process ignores (e.g. SIGINT of a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    outermost = not _active_handlers
    if outermost:  # a record from an earlier block is not this one's signal
        _received_signals.clear()
        unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _quiet_for_recorded_signals(unraisable_hook)
    for signum in _CATCHABLE:
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _raise_for_signal)
    _active_handlers.append(previous)
    try:
        yield
    finally:
        # By identity; absent in a forked child, which dropped them on the way in.
        _active_handlers[:] = [entry for entry in _active_handlers if entry is not previous]
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if outermost:
            sys.unraisablehook = unraisable_hook
        if not _active_handlers:  # kept for an outer block (the CLI's guard) to see; forgotten after the last
            _received_signals.clear()


# The handlers that `signals_raise` replaced, innermost last. A process forked inside the block (a worker pool)
# gets them back: the cleanup the raised exception would run belongs to the parent, and a pool's workers, which
# their pool stops with SIGTERM, would otherwise print a traceback each instead of ending quietly.
_active_handlers: list[dict[int, object]] = []


def _restore_handlers_in_child() -> None:
    for previous in reversed(_active_handlers):
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, handler)  # type: ignore[arg-type]
    _active_handlers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_handlers_in_child)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Signals handled by `signals_raise` wait until the block ends (a commit's renames are not cut in half)."""
    global _defer_depth
    with _defer_lock:
        _defer_depth += 1
    try:
        yield
    finally:
        with _defer_lock:
            _defer_depth -= 1
            pending = _pending_signals[:1] if _defer_depth == 0 else []
            if pending:
                _pending_signals.clear()
        if pending:
            if threading.current_thread() is threading.main_thread():
                _raise_for_signal(pending[0], None)
            else:  # the handler runs in the main thread: hand the signal back to it
                signal.raise_signal(pending[0])


# ---------------------------------------------------------------------------------------------- single files


def _create_exclusive(directory: Path, prefix: str, mode: int = 0o666) -> tuple[int, Path]:
    """A new temporary file (O_EXCL) whose permissions follow the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = directory / f".{prefix}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(name, flags, mode), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`. If `write` (or anything
    else, a signal included) fails, the temporary file is removed and `path` is untouched. A replaced file keeps
    its permissions; a new one gets the umask's. Returns the final path."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise UniPoseFileNotFoundError(f"received the output path {str(path)!r} whose directory does not exist; "
                                       f"expected a path in an existing directory. Create {str(path.parent)!r} "
                                       f"first.")
    if path.is_dir():
        raise InvalidInputError(f"received the output path {str(path)!r}, which is a directory; expected a file "
                                f"path. Add a file name, e.g. {str(path / 'pose.npz')!r}.")
    keep_mode = path.stat().st_mode & 0o7777 if path.is_file() else None
    fd, tmp_name = _create_exclusive(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_mode is not None:
            os.chmod(tmp_name, keep_mode)
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


def follow_umask(path: str | os.PathLike) -> None:
    """Give the file `path` the mode a new file gets from the umask, for writers that create their files private
    (safetensors' save_file makes them 0o600). The mode is read off a probe file created beside it, as the umask
    cannot be read without setting it, which would race with other threads creating files."""
    path = Path(path)
    fd, probe = _create_exclusive(path.parent, "mode-probe")
    try:
        os.close(fd)
        mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.unlink(probe)
    os.chmod(path, mode)


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden directory `.PREFIX.XXXXXXXX.tmp` in `parent` whose permissions follow the umask (tempfile's
    mkdtemp makes 0o700 directories, which would survive a rename into place)."""
    parent = Path(parent)
    for _ in range(100):
        candidate = parent / f".{prefix}.{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(candidate, 0o777)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def replace_directory(new: Path, target: Path) -> None:
    """Rename the finished directory `new` to `target`; an existing target is moved aside first and removed only
    after the swap, so a failure leaves the old target in place."""
    if not target.exists():
        os.replace(new, target)
        return
    old = make_temp_dir(target.parent, f"{target.name}.old")  # a free name for the old directory
    os.rmdir(old)
    with deferred_signals():
        os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old, target)
            raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- file sets

# Staging directories name their machine and process, so a later writer can tell a dead run's leftovers from
# a live run's work in progress.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_STAGING_PREFIX = ".unipose-"
_STAGING_RE = re.compile(r"^\.unipose-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}\.tmp$")
MAX_STEM_CHARS = 200


def check_stem(stem: object, what: str = "stem") -> str:
    """A file-name stem that stays inside its directory: no separators, not '.' / '..', not hidden, no NUL."""
    if not isinstance(stem, str):
        raise InvalidInputError.make(f"{what} of type {type(stem).__name__}", "a file-name stem (str)",
                                     f"Pass e.g. {what}='result'.")
    separators = {"/", "\\", os.sep, os.altsep or "/"}
    bad = (not stem or stem.strip() != stem or stem.startswith(".") or "\x00" in stem
           or any(s in stem for s in separators) or len(stem) > MAX_STEM_CHARS)
    if bad:
        raise InvalidInputError.make(
            f"{what}={stem!r}", f"a plain file name of 1-{MAX_STEM_CHARS} characters without path separators, "
            "surrounding spaces, NUL or a leading '.' (files are only ever written inside the given directory)",
            f"Pass e.g. {what}='result'; choose the directory with the directory argument.")
    return stem


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _sweep_dead_staging(directory: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = _STAGING_RE.match(entry.name)
            if match and match.group(1) == _HOST_TAG and int(match.group(2)) != os.getpid() \
                    and not _pid_alive(int(match.group(2))):
                shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the directory itself (no lock file is left behind); a no-op where the
    platform has no flock."""
    try:
        import fcntl
    except ImportError:  # Windows: renames are still atomic one by one
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_output_directory(directory: str | os.PathLike, claims: Sequence[str] = (), overwrite: bool = False,
                           overwrite_hint: str = "Pass overwrite=True to replace them, or choose another "
                                                 "directory.") -> Path:
    """Before any work: `directory` is (or can be created as) a writable directory, and none of the `claims`
    exists in it unless `overwrite`. Creates nothing. Raises InvalidInputError / OutputExistsError."""
    out = Path(directory).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidInputError.make(f"the output path {str(out)!r}, which is a file",
                                     "a directory (it is created if missing)",
                                     "Pass a directory name for the output, e.g. 'out/'.")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise InvalidInputError.make(f"the output path {str(out)!r}, inside {str(base)!r} which is a file",
                                     "a path whose existing parts are directories", "Choose another directory.")
    _probe_writable(base, out)
    if out.is_dir():
        existing = [name for name in claims if os.path.lexists(out / name)]
        if existing and not overwrite:
            listed = ", ".join(existing[:6]) + (f" and {len(existing) - 6} more" if len(existing) > 6 else "")
            raise OutputExistsError.make(f"the output directory {str(out)!r}, which already holds {listed}",
                                         "no existing result files under the names this run writes",
                                         overwrite_hint)
    return out


def _probe_writable(base: Path, wanted: Path) -> None:
    """os.access cannot see read-only mounts (and is always True for root): try creating a directory."""
    try:
        with deferred_signals():  # created and removed in one step, whatever signal arrives meanwhile
            probe = make_temp_dir(base, "unipose-write-probe")
            os.rmdir(probe)
    except OSError as exc:
        raise InvalidInputError.make(f"the output path {str(wanted)!r}, where {str(base)!r} is not writable "
                                     f"({exc.strerror})", "a directory this process can write",
                                     "Choose a writable directory for the output.") from None


def check_output_file(path: str | os.PathLike, overwrite: bool = False,
                      overwrite_hint: str = "Pass overwrite=True to replace it, or choose another name.") -> Path:
    """Before any work: `path` can be written (its directory exists and is writable) and does not exist
    unless `overwrite` (and then is a regular file)."""
    out = Path(path).expanduser()
    if not out.parent.is_dir():
        raise UniPoseFileNotFoundError.make(f"the output path {str(out)!r} whose directory does not exist",
                                            "a path in an existing directory", f"Create {str(out.parent)!r} "
                                            "first.")
    if out.is_dir():
        raise InvalidInputError.make(f"the output path {str(out)!r}, which is a directory", "a file path",
                                     "Add a file name.")
    if os.path.lexists(out):
        mode = os.stat(out).st_mode if out.exists() else 0
        if not stat.S_ISREG(mode):
            kind = _kind_of(mode) if mode else "a broken symbolic link"
            raise InvalidInputError.make(f"the output path {str(out)!r}, which is {kind}",
                                         "a new file name or an existing regular file", "Choose another name.")
        if not overwrite:
            raise OutputExistsError.make(f"the output path {str(out)!r}, which already exists", "a new file",
                                         overwrite_hint)
    _probe_writable(out.parent, out)
    return out


_NUMBERED = re.compile(r"^(?P<prefix>.+)_(?P<number>\d{3,})(?P<suffix>\..*)?$")


def _parse_numbered(claims: Sequence[str]) -> tuple[str, dict[str, tuple[int, str]]]:
    """(prefix, {claim: (number, suffix)}) for claims named PREFIX_NNN[.SUFFIX] numbered from 0 without gaps."""
    parts: dict[str, tuple[int, str]] = {}
    prefixes = set()
    for name in claims:
        match = _NUMBERED.match(name)
        if match is None:
            break
        prefixes.add(match["prefix"])
        parts[name] = (int(match["number"]), match["suffix"] or "")
    numbers = sorted({number for number, _ in parts.values()})
    if len(parts) != len(claims) or len(prefixes) != 1 or numbers != list(range(len(numbers))):
        raise InvalidInputError.make(f"file names {list(claims)[:6]} for a numbered set",
                                     "names PREFIX_000.SUFFIX, PREFIX_001.SUFFIX, ... with one prefix",
                                     "Number the stems from 000 without gaps.")
    return prefixes.pop(), parts


def next_free_number(directory: str | os.PathLike, prefix: str) -> int:
    """1 + the highest NNN of the entries named PREFIX_NNN or PREFIX_NNN.* in `directory` (0 when none): numbers
    follow the order of the runs, and a number someone deleted is not reused."""
    pattern = re.compile(re.escape(prefix) + r"_(\d{3,})(?:\.|$)")
    highest = -1
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


class OutputSet:
    """Files that appear in `directory` together or not at all.

        with OutputSet(directory, claims=["a.npz", "a.json"]) as out:
            write_npz(out.path("a.npz")); write_json(out.path("a.json"))
        # leaving the block normally moves them into `directory` (under a lock, signals deferred);
        # an exception or a signal leaves `directory` as it was.

    `claims`: every name the set owns, also those not written this time (a result without a pose still owns
    the .npz of an earlier pose result under its stem, so the two cannot mix). An existing claimed name is an
    OutputExistsError (checked on entry and again at the commit, for a run that wrote meanwhile) unless
    `overwrite`; with it, all claimed names are replaced together: a claimed name not written is removed.
    A directory that did not exist is created, and removed again if nothing is committed.

    `numbered=True` (ignored with `overwrite`): the claims are PREFIX_NNN.SUFFIX with one prefix and the numbers
    0..k-1; at the commit, under the directory lock, the whole set is shifted past the highest PREFIX_NNN already
    in the directory (PREFIX_000 taken: the set becomes PREFIX_001 ...), so it replaces nothing, stays
    contiguous, and a concurrent run's set takes the numbers after it. `final_name` maps a claim to the name it
    was committed under.
    """

    def __init__(self, directory: str | os.PathLike, claims: Sequence[str], overwrite: bool = False,
                 overwrite_hint: str = "Pass overwrite=True to replace them, or choose another directory.",
                 numbered: bool = False) -> None:
        self.directory = Path(directory).expanduser()
        self.claims = [check_stem(name, "file name") for name in claims]
        if len(set(self.claims)) != len(self.claims):
            raise InvalidInputError.make(f"file names {self.claims}", "distinct names", "Use distinct stems.")
        self.overwrite = bool(overwrite)
        self.overwrite_hint = overwrite_hint
        self._numbering = _parse_numbered(self.claims) if numbered and not self.overwrite else None
        self.renamed: dict[str, str] = {}
        self.staging: Path | None = None
        self._created: list[Path] = []
        self.committed: list[Path] = []

    def final_name(self, name: str) -> str:
        """The name the claimed file `name` has in the directory after the commit."""
        return self.renamed.get(name, name)

    def __enter__(self) -> OutputSet:
        claims = () if self._numbering is not None else self.claims  # numbered sets never take an existing name
        check_output_directory(self.directory, claims, self.overwrite, self.overwrite_hint)
        missing = []
        probe = self.directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first: the order to remove them in
            _sweep_dead_staging(self.directory)
            self.staging = self.directory / f"{_STAGING_PREFIX}{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
            os.mkdir(self.staging, 0o700)  # private while being filled; the files inside follow the umask
        except BaseException:
            self._discard()
            raise
        return self

    def path(self, name: str) -> Path:
        """Where to write the claimed file `name` before the commit."""
        if name not in self.claims or self.staging is None:
            raise InvalidInputError.make(f"file name {name!r}", f"one of the claimed names {self.claims}",
                                         "Claim every name the set writes.")
        return self.staging / name

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._commit()
        finally:
            self._discard()

    def _commit(self) -> None:
        assert self.staging is not None
        raise_if_signalled()  # a signal whose exception was swallowed on the way must not be committed over
        written = [name for name in self.claims if (self.staging / name).is_file()]
        aside = self.staging / ".replaced"
        with _directory_lock(self.directory), deferred_signals():
            if self._numbering is not None:
                prefix, parts = self._numbering
                offset = next_free_number(self.directory, prefix)
                self.renamed = {name: f"{prefix}_{number + offset:03d}{suffix}"
                                for name, (number, suffix) in parts.items()}
            final = self.final_name
            existing = [name for name in self.claims if os.path.lexists(self.directory / final(name))]
            for name in existing:
                if (self.directory / final(name)).is_dir() and not (self.directory / final(name)).is_symlink():
                    raise InvalidInputError.make(f"{str(self.directory / final(name))!r}, which is a directory",
                                                 "a file name free for the result", "Move the directory away.")
            if existing and not self.overwrite:
                raise OutputExistsError.make(
                    f"the output directory {str(self.directory)!r}, where another run wrote "
                    f"{', '.join(final(n) for n in existing[:6])} while this one was working",
                    "no existing result files under the names this run writes", self.overwrite_hint)
            os.mkdir(aside, 0o700)
            moved_aside: list[str] = []
            moved_in: list[str] = []
            try:
                for name in existing:
                    os.replace(self.directory / final(name), aside / name)
                    moved_aside.append(name)
                for name in written:
                    os.replace(self.staging / name, self.directory / final(name))
                    moved_in.append(name)
            except BaseException:
                for name in moved_in:
                    with contextlib.suppress(OSError):
                        os.replace(self.directory / final(name), self.staging / name)
                for name in moved_aside:
                    with contextlib.suppress(OSError):
                        os.replace(aside / name, self.directory / final(name))
                raise
            self._created = []  # the directory now holds the result
            self.committed = [self.directory / final(name) for name in written]

    def _discard(self) -> None:
        # A signal arriving now (also just after a commit) waits until the cleanup is done: cut short, it would
        # leave the staging directory behind.
        with deferred_signals():
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
            for created in self._created:
                with contextlib.suppress(OSError):
                    created.rmdir()  # only if still empty
            self._created = []
