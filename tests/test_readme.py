"""The README is part of the product: its Python blocks run as written, and CI runs its test command."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_command() -> None:
    commands = [line for line in _blocks("bash")[0].splitlines() if line.strip()]
    assert len(commands) == 2, commands
    setup, test_command = commands
    assert setup.startswith("pip install torch==2.13.0") and "pip install -e" in setup
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci, f"CI must run the README's test command {test_command!r}"
    for install in re.findall(r"pip install [^&]+", setup):
        assert install.strip().split("pip install ")[1] in ci, f"CI must install as the README says: {install}"


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_blocks_run_as_written(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's relative paths are from the repository root
    code = _blocks("python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert os.getcwd() == str(ROOT)
