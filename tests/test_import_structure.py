"""The package's import structure: no import cycles between files or between packages, `models/` a leaf, and a CLI
whose import does not load torch.

The graph is read from the source (an AST walk over every module installed under `unipose_sdk.*`, `export/` and
`kernels/` included), not from what one run happens to import, so an import inside a function counts as much as
one at the top of a file. An edge A -> B exists when A's source names module B:
- `import a.b.c` -> a.b.c;
- `from a.b import c` -> a.b.c when c is a module, and a.b as well (the statement reads a.b's namespace, so a.b's
  `__init__` must have run; a package's own submodules import their siblings as `import a.b.c as c` or
  `from a.b.c import name`);
- relative imports, resolved against the importing module;
- a module's name as a string literal passed to `importlib.import_module` or held in a dict literal (the
  PEP 562 lazy-attribute tables; in a package's `__init__` also a submodule's short name);
- `pkgutil.iter_modules` in a package's `__init__` (plugin discovery): every direct submodule.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "unipose_sdk"
# The leaf: what a module of unipose_sdk.models may import from the package (body maths, the Pose type its
# tokenizer returns, errors).
MODELS_MAY_IMPORT = ("unipose_sdk.models", "unipose_sdk.errors", "unipose_sdk.body.rotations",
                     "unipose_sdk.body.skeleton", "unipose_sdk.body.pose")


def _package_roots() -> dict[str, Path]:
    """Import name -> source directory of every package that is not inside its parent's directory (export/ and
    kernels/ install as unipose_sdk.export and unipose_sdk.kernels from the top of the repository)."""
    roots = {}
    for name in (PACKAGE, f"{PACKAGE}.export", f"{PACKAGE}.kernels"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
        roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package)."""
    roots = _package_roots()
    modules: dict[str, tuple[Path, bool]] = {}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            nested_root = any(other != prefix and other.startswith(prefix + ".") and name.startswith(other)
                              for other in roots)
            if not nested_root:
                modules[name] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth (functions and classes included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    yield submodule, node.lineno
                if source in modules and source != name:
                    yield source, node.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and arg.value in modules:
                    yield arg.value, node.lineno
        elif isinstance(node, ast.Dict):
            for value in node.values:
                if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    continue
                if value.value in modules and "." in value.value:
                    yield value.value, node.lineno
                elif is_package and f"{name}.{value.value}" in modules:  # a table of submodule names
                    yield f"{name}.{value.value}", node.lineno
        elif isinstance(node, ast.Attribute) and node.attr == "iter_modules" and is_package:
            # plugin discovery over the package's own directory imports every direct submodule
            for module in modules:
                if module.rsplit(".", 1)[0] == name:
                    yield module, node.lineno


def _file_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: first line}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(name, path, is_package, modules):
            if target != name:
                edges.setdefault(target, line)
    return graph


def _package_of(module: str) -> str:
    """The unit of the package graph: unipose_sdk.<first level> (a subpackage with everything under it, or a
    top-level module such as unipose_sdk.session), and unipose_sdk itself for its __init__."""
    return ".".join(module.split(".")[:2])


def _package_graph(files: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
    """Package -> {imported package: one file-level import that makes the edge, for the failure message}."""
    graph: dict[str, dict[str, str]] = {}
    for source, targets in files.items():
        edges = graph.setdefault(_package_of(source), {})
        for target, line in targets.items():
            if _package_of(target) != _package_of(source):
                edges.setdefault(_package_of(target), f"{source}:{line} imports {target}")
    return graph


def _cycles(graph: dict[str, dict]) -> list[list[str]]:
    """One cycle (a path that returns to its start) per strongly connected component with more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graphs are a few hundred nodes deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # a shortest way back to the smallest member, inside the component
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in [t for n in frontier for t in graph.get(n, {})]:
            following = []
            for node in frontier:
                for target in sorted(graph.get(node, {})):
                    if target in component and target not in paths:
                        paths[target] = paths[node] + [target]
                        following.append(target)
            frontier = following
        last = next(n for n in frontier if start in graph.get(n, {}))
        cycles.append(paths[last] + [start])
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict]) -> str:
    def where(a: str, b: str) -> str:
        return f"line {graph[a][b]}" if isinstance(graph[a][b], int) else graph[a][b]

    return "\n  ".join(f"{a} -> {b} ({where(a, b)})" for a, b in zip(cycle, cycle[1:]))


@pytest.fixture(scope="module")
def file_graph() -> dict[str, dict[str, int]]:
    return _file_graph()


def test_the_walk_sees_every_installed_package(file_graph: dict[str, dict[str, int]]) -> None:
    names = set(file_graph)
    for expected in ("unipose_sdk.session", "unipose_sdk.models.llm", "unipose_sdk.export.onnx",
                     "unipose_sdk.kernels.ops", "unipose_sdk.kernels.triton.mixed_attention", "unipose_sdk.cli"):
        assert expected in names
    # function-level imports are edges: the evaluation runner imports the task classes inside `evaluate`
    assert "unipose_sdk.tasks.describer" in file_graph["unipose_sdk.evaluation.runner"]
    # a PEP 562 lazy table is an edge: `unipose_sdk.Generator` imports unipose_sdk.tasks on first use, and the
    # bench package's table of short names imports its harness
    assert "unipose_sdk.tasks" in file_graph["unipose_sdk"]
    assert "unipose_sdk.bench.harness" in file_graph["unipose_sdk.bench"]
    # the CLI discovers its commands: every command module is an edge of the package
    assert "unipose_sdk.cli.tasks" in file_graph["unipose_sdk.cli"]


def test_the_cycle_finder_reports_a_path() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_between_files(file_graph: dict[str, dict[str, int]]) -> None:
    cycles = _cycles(file_graph)
    assert not cycles, "import cycles between files:\n  " + "\n\n  ".join(_describe(c, file_graph) for c in cycles)


def test_no_import_cycle_between_packages(file_graph: dict[str, dict[str, int]]) -> None:
    packages = _package_graph(file_graph)
    cycles = _cycles(packages)
    assert not cycles, "import cycles between packages:\n  " + "\n\n  ".join(_describe(c, packages) for c in cycles)


def test_models_is_a_leaf(file_graph: dict[str, dict[str, int]]) -> None:
    outside = sorted(f"{source}:{line} imports {target}"
                     for source, targets in file_graph.items() if source.startswith("unipose_sdk.models")
                     for target, line in targets.items()
                     if not any(target == allowed or target.startswith(allowed + ".") for allowed in MODELS_MAY_IMPORT))
    assert not outside, "unipose_sdk.models imports outside models, body maths and errors:\n  " + "\n  ".join(outside)


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, unipose_sdk.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
