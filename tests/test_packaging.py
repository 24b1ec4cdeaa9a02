"""`export/` and `kernels/` install as `unipose_sdk.export` / `unipose_sdk.kernels`, never as top-level packages."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_namespaced_packages_import_from_the_repository_dirs(tmp_path: Path) -> None:
    """In the editable install, from a directory that is not the repository (so the checkout is not on sys.path)."""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import importlib.util, unipose_sdk.export, unipose_sdk.kernels; "
         "print(unipose_sdk.export.__file__); print(unipose_sdk.kernels.__file__); "
         "print(importlib.util.find_spec('export') is None or 'site' in importlib.util.find_spec('export').origin); "
         "spec = importlib.util.find_spec('kernels'); "
         "print(spec is None or 'site' in (spec.origin or ''))"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    export_file, kernels_file, export_not_top_level, kernels_not_top_level = probe.stdout.split()
    assert Path(export_file).resolve().parent == ROOT / "export"
    assert Path(kernels_file).resolve().parent == ROOT / "kernels"
    assert export_not_top_level == "True" and kernels_not_top_level == "True"


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, directory in config["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / directory)
            found.add(".".join([package, *rel.parts]))
    assert found <= set(config["packages"]), f"packages missing from pyproject.toml: {sorted(found - set(config['packages']))}"


@pytest.mark.slow
def test_wheel_maps_export_and_kernels_into_the_namespace(tmp_path: Path) -> None:
    """A normal (non-editable) install: build the wheel and check what it would install."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=900,
        # The layout is what this test checks; compiling the C++ kernel again would only slow it down
        # (tests/test_kernels.py covers the extension build).
        env={**os.environ, "UNIPOSE_SKIP_CPU_EXT": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = next(tmp_path.glob("unipose_sdk-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "unipose_sdk/export/__init__.py" in names
    assert "unipose_sdk/kernels/__init__.py" in names
    assert not any(n.startswith(("export/", "kernels/")) for n in names), "generic top-level packages leaked"
    # Import the installed layout from the unpacked wheel in a clean interpreter, away from the repository.
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = subprocess.run(
        [sys.executable, "-I", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import unipose_sdk.export, unipose_sdk.kernels; "
         "print(unipose_sdk.export.__file__)", str(unpacked)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(unpacked))
