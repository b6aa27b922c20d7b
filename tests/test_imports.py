"""The package's import graph, read from the source with ``ast``: no cycle (function-level imports included), and
the layer rule of docs/ARCHITECTURE.md (the core imports no method, capability, atlas, gallery or study).

An edge goes to the module an import names: ``from .zoo import load_model`` is an edge to the package ``zoo`` (its
``__init__``, which re-exports), ``from .zoo.loaders import load_model`` and ``from .zoo import loaders`` to the
module ``zoo.loaders``. Imports under ``if TYPE_CHECKING:`` run only in type checkers and are left out. A module
that imports by ``importlib.import_module`` (the PEP 562 lazy names) gets an edge to every module that one of its
string constants names, so the lazy names count too.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "vital_fv"
PACKAGE = "vital_fv"

# The core of docs/ARCHITECTURE.md: what these import must stay below the methods and everything built on them.
CORE_MODULES = ("version", "errors", "options", "device", "signals", "zoo", "features", "objectives", "targets",
                "matching", "metrics", "relevance", "params", "transforms", "cache", "result", "records", "db",
                "jobs", "references")
ABOVE_CORE = ("methods", "runspec", "concepts", "polysemantic", "circuits", "evaluate", "api", "cli", "atlas",
              "gallery", "study")


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions, classes, try blocks), except under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    walk_one(sub)
                continue
            walk_one(child)

    def walk_one(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        walk(node)

    walk(tree)
    return found


def _uses_import_module(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "import_module"
               for n in ast.walk(tree))


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # the package relative imports start in
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name
                    while target and target not in files:
                        target = target.rpartition(".")[0]
                    if target:
                        graph[name].add(target)
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base not in files:
                continue  # not ours (torch, zennit, ...)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                graph[name].add(sub if sub in files else base)  # a submodule, or a name of the module/package
        if _uses_import_module(tree):
            for const in ast.walk(tree):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    s = const.value
                    target = here + s if s.startswith(".") else s
                    if target in files and target != name:
                        graph[name].add(target)
    for deps in graph.values():
        deps.discard("")
    return {m: {d for d in deps if d != m} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))  # graphlib lists each module before the one that imports it
    return None


def _short(module: str) -> str:
    return module.removeprefix(PACKAGE + ".")


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    short = _short(module)
    return any(short == p or short.startswith(p + ".") for p in prefixes)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(_short(m) for m in cycle)


def test_the_core_imports_nothing_above_it():
    graph = import_graph()
    wrong = sorted(f"{_short(m)} -> {_short(d)}" for m, deps in graph.items() if _in(m, CORE_MODULES)
                   for d in deps if _in(d, ABOVE_CORE))
    assert not wrong, "the core imports above itself: " + ", ".join(wrong)


def test_nothing_outside_the_atlas_but_the_cli_imports_it():
    graph = import_graph()
    wrong = sorted(f"{_short(m)} -> {_short(d)}" for m, deps in graph.items()
                   if not _in(m, ("atlas", "cli")) for d in deps if _in(d, ("atlas",)))
    assert not wrong, "imports of atlas/ from outside: " + ", ".join(wrong)


def test_every_module_is_in_a_layer():
    """A new top-level module must be placed in the map (and so in one of the lists above)."""
    top = {_short(m).split(".")[0] for m in module_files()} - {PACKAGE, "__main__"}
    assert top <= set(CORE_MODULES) | set(ABOVE_CORE), sorted(top - set(CORE_MODULES) - set(ABOVE_CORE))


_IMPORT_EACH_FIRST = """
import importlib, sys
bad = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "vital_fv" or m.startswith("vital_fv.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad.append(f"{name}: {exc!r}")
print("\\n".join(bad))
"""


def test_every_module_imports_first_in_a_fresh_process():
    """The graph above leaves out that importing ``a.b.c`` first runs ``a/__init__`` and ``a/b/__init__``; a cycle
    through those shows only at run time, in the order modules happen to be imported. So each module is imported
    first, with nothing of the package loaded (torch stays loaded: one process for all)."""
    names = sorted(module_files())
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH_FIRST, *names], capture_output=True, text=True,
                          cwd=ROOT.parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", proc.stdout


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("how", ["top level", "inside a function", "package re-export", "lazy import_module"])
def test_the_graph_finds_cycles_however_they_are_written(tmp_path, how):
    a_imports = {
        "top level": "from .b import f\n",
        "inside a function": "def g():\n    from .b import f\n    return f\n",
        "package re-export": "from .sub import f\n",
        "lazy import_module": "import importlib\n_LAZY = {'f': '.b'}\n"
                              "def __getattr__(n):\n    return importlib.import_module(_LAZY[n], __name__)\n",
    }[how]
    files = {"__init__.py": "", "a.py": a_imports, "b.py": "from .a import g\n",
             "sub/__init__.py": "from ..b import f\n"}
    pkg = _write(tmp_path, files)
    cycle = find_cycle(import_graph(pkg, "pkg"))
    assert cycle is not None and "pkg.a" in cycle
    if how == "package re-export":
        assert "pkg.sub" in cycle


def test_type_checking_imports_and_other_packages_are_not_edges(tmp_path):
    files = {"__init__.py": "", "a.py": "from typing import TYPE_CHECKING\nimport torch\nif TYPE_CHECKING:\n"
                                        "    from .b import f\n",
             "b.py": "from . import a\nfrom .a import x\n"}
    graph = import_graph(_write(tmp_path, files), "pkg")
    assert graph["pkg.a"] == set() and graph["pkg.b"] == {"pkg.a"}
    assert find_cycle(graph) is None
