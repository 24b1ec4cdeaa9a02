"""Build of the optional C++ extension only; every piece of package metadata lives in pyproject.toml.

`unipose_sdk.kernels._mixed_attention_cpu` (kernels/csrc/mixed_attention.cpp, pybind11, no torch headers) is
compiled by `pip install .`, `pip install -e .` and wheel builds. It is optional: without a C++ compiler, or
without OpenMP, the install still succeeds (without the extension, or with a single-threaded one) and the
`unipose::mixed_attention` op falls back to the torch reference with a one-time warning.

Flags: -O3 and the baseline instruction set of the target (no -march=native: a wheel must run on other CPUs of
the same architecture). The kernel carries AVX2 and AVX-512 clones of its hot function and picks one at run time.
Set UNIPOSE_SKIP_CPU_EXT=1 to skip the extension on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pybind11 is a build requirement; an environment without it still installs the pure package
    Pybind11Extension = None
    from setuptools.command.build_ext import build_ext

EXTENSION = "unipose_sdk.kernels._mixed_attention_cpu"


def _openmp_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags that enable OpenMP with this compiler family, or nothing."""
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":  # Apple clang needs libomp from elsewhere; try the usual spelling
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


class OptionalBuildExt(build_ext):
    """Build each extension with OpenMP, else without it, else skip it with a warning: never fail the install."""

    def build_extension(self, ext) -> None:
        if os.environ.get("UNIPOSE_SKIP_CPU_EXT") == "1":
            self.announce(f"UNIPOSE_SKIP_CPU_EXT=1: not building {ext.name}", level=3)
            return
        base_compile, base_link = list(ext.extra_compile_args), list(ext.extra_link_args)
        omp_compile, omp_link = _openmp_flags()
        attempts = [("with OpenMP", omp_compile, omp_link), ("without OpenMP", [], [])]
        for label, extra_compile, extra_link in attempts:
            ext.extra_compile_args = base_compile + extra_compile
            ext.extra_link_args = base_link + extra_link
            try:
                super().build_extension(ext)
                self.announce(f"built {ext.name} {label}", level=3)
                return
            except Exception as error:  # compiler missing, OpenMP missing, unsupported flag: all non-fatal
                sys.stderr.write(f"warning: building {ext.name} {label} failed: {error}\n")
        sys.stderr.write(
            f"warning: {ext.name} was not built; unipose::mixed_attention will use the torch reference on CPU. "
            "Install a C++17 compiler (and OpenMP) and reinstall to get the fused CPU kernel.\n"
        )


ext_modules = []
if Pybind11Extension is not None:
    # -Wno-psabi: the kernel's GCC vector types only live inside always-inlined functions, no ABI is crossed.
    compile_args = ["/O2"] if sys.platform == "win32" else ["-O3", "-Wno-psabi"]
    ext_modules.append(
        Pybind11Extension(
            EXTENSION,
            ["kernels/csrc/mixed_attention.cpp"],
            cxx_std=17,
            extra_compile_args=compile_args,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
