"""The `unipose` command line.

Each module in this package that defines `register(subparsers)` adds its own subcommands; a handler returns
an exit code. Modules import torch and the model code inside their handlers only, so `unipose --help` and argument
errors answer at once. Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input (any InvalidInputError,
missing file or unreadable checkpoint), 128 + N when signal N stopped the command (130 for Ctrl-C, 143 for SIGTERM,
129 for SIGHUP).

Every command runs under `signal_guard`: SIGTERM and SIGHUP raise inside the command, as Ctrl-C does, so the cleanup
of its writers (the temporary directory of an export or a conversion, the staging directory of a result set)
runs before the process exits; the command then ends with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
from collections.abc import Iterator

from unipose_sdk import errors

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

_USER_ERRORS = (errors.InvalidInputError, errors.UniPoseFileNotFoundError, errors.CheckpointError,
                errors.VocabularyError, errors.BackendUnavailableError)


# The order of `unipose --help`: the tasks, then working with poses and models, then measuring and training.
_ORDER = ("tasks", "chat", "pose", "info", "convert", "export", "bench", "evaluate", "data", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unipose", description="UniPose inference SDK command line.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    rank = {name: i for i, name in enumerate(_ORDER)}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (rank.get(m.name, len(rank)), m.name)):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


@contextlib.contextmanager
def signal_guard() -> Iterator[None]:
    """SIGTERM / SIGHUP raise inside the block (so the command's cleanup runs), and a signal whose exception was
    swallowed on the way out is raised again at the end: TerminatedBySignal, or KeyboardInterrupt for SIGINT."""
    import signal

    from unipose_sdk.fileio import TerminatedBySignal, received_signal, signals_raise

    with signals_raise():
        try:
            yield
        except Exception:
            if received_signal() is None:
                raise
        signum = received_signal()
        if signum is not None:
            raise KeyboardInterrupt if signum == signal.SIGINT else TerminatedBySignal(signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was typed, for commands that record how their output was made
    from unipose_sdk.fileio import TerminatedBySignal

    try:
        with signal_guard():
            code = int(args.handler(args) or 0)
        return code
    except TerminatedBySignal as exc:
        print(f"unipose: {exc}; no partial output was left", file=sys.stderr)
        return 128 + exc.signum
    except _USER_ERRORS as exc:
        print(f"unipose: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except errors.UniPoseError as exc:
        print(f"unipose: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a failure at run time, not the user's input: exit 1 with a one-line reason
        if os.environ.get("UNIPOSE_DEBUG"):
            raise
        print(f"unipose: runtime failure: {type(exc).__name__}: {exc} (set UNIPOSE_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
