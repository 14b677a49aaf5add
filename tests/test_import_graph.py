"""The shape of ``src/pgshift``: no import cycles, no module over ``MAX_LINES`` lines.

The import graph is read from the source (every ``import``, at module level,
inside functions and under ``TYPE_CHECKING``: an import moved into a function
to dodge a cycle is still the cycle). Importing ``a.b.c`` also runs the
``__init__`` of ``a.b``: that edge counts too, except from inside ``a.b``
itself (a package importing its own modules is how packages work), because a
package whose ``__init__`` re-exports a module that imports back into the
importer fails at import time depending on which side is imported first.

Known offenders are listed with the reason; a new cycle or a new long module
fails the test. Remove an entry when its fix lands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "pgshift"
MAX_LINES = 650

# The sync modules import each other in a circle (issue 12, "The seam"); the
# branch `sync-seam` splits them. Each entry is a set of modules allowed to form
# (part of) one cycle.
KNOWN_CYCLES: list[frozenset[str]] = []

# Modules over MAX_LINES today, and why they are tolerated for now.
KNOWN_LONG: dict[str, str] = {}


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/package``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The deepest known module ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules its imports run (see the module doc)."""
    known = modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    origin = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                # `from a import b` may name the module a.b or a name inside a.
                names += [origin] + [f"{origin}.{a.name}" for a in node.names]
        for name in names:
            target = _resolve(name, known)
            if target is None:
                continue
            # The target and every package __init__ above it that mod is not inside.
            while target:
                if target in known and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
                target = target.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.add(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        found.append(comp)
    return found


def test_no_new_import_cycles() -> None:
    new = [sorted(c) for c in cycles(import_graph(SRC, PACKAGE))
           if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"import cycles in src/{PACKAGE}: {new}"


def test_no_new_long_modules() -> None:
    long = {str(p.relative_to(SRC)): n for p in modules(SRC, PACKAGE).values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    new = {p: n for p, n in long.items() if p not in KNOWN_LONG}
    assert not new, (f"modules over {MAX_LINES} lines (split them by concept): "
                     f"{dict(sorted(new.items()))}")


def _package(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp


@pytest.mark.parametrize(("files", "expected"), [
    # a function-level import closes the circle
    ({"__init__.py": "", "a.py": "from pkg import b\n",
      "b.py": "def f():\n    from pkg.a import x\n"}, [{"pkg.a", "pkg.b"}]),
    # relative imports, and one under TYPE_CHECKING
    ({"__init__.py": "", "a.py": "from .b import y\n",
      "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"},
     [{"pkg.a", "pkg.b"}]),
    # through a package __init__ that re-exports: importing sub.m runs sub/__init__
    ({"__init__.py": "", "x.py": "from pkg.sub.m import f\n",
      "sub/__init__.py": "from pkg.sub.run import go\n", "sub/m.py": "",
      "sub/run.py": "import pkg.x\n"}, [{"pkg.x", "pkg.sub", "pkg.sub.run"}]),
    # a package's modules importing each other through its own __init__: no cycle
    ({"__init__.py": "", "sub/__init__.py": "from pkg.sub.run import go\n",
      "sub/run.py": "from pkg.sub.steps import S\n", "sub/steps.py": "import pkg.sub\n"}, []),
    # a directory without __init__ (namespace package) in the circle
    ({"__init__.py": "", "a.py": "from pkg.ns.m import x\n", "ns/m.py": "import pkg.a\n"},
     [{"pkg.a", "pkg.ns.m"}]),
    # a one-way chain: no cycle
    ({"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "import json\n"}, []),
])
def test_the_check_finds_cycles(tmp_path: Path, files: dict[str, str],
                                expected: list[set[str]]) -> None:
    root = _package(tmp_path, files)
    assert sorted(map(sorted, cycles(import_graph(root, "pkg")))) == sorted(map(sorted, expected))
