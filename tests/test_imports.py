"""The package's import graph, read from its source (ast): arrows run one way.

No import cycle between modules (a package's ``__init__`` importing its own
children is its face, not a tie), no module importing another's ``_private``
name, and an import inside a function only where it keeps a heavy or optional
dependency off the import path, with a ``# lazy:`` comment saying so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tertulia"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _targets(mod: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(module imported, name imported or None) for each alias of an import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    base = mod.split(".")
    if node.level:
        if MODULES[mod].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for a in node.names:
        candidate = f"{target}.{a.name}"
        out.append((candidate if candidate in MODULES else target, a.name))
    return out


def _owner(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module → the package's modules it imports; and the cross-module private imports."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    private = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in _targets(mod, node):
                owner = _owner(target)
                if owner is None or owner == mod or not owner.startswith(PACKAGE):
                    continue
                if path.name == "__init__.py" and owner.startswith(mod + "."):
                    continue  # a package re-exporting its children
                edges[mod].add(owner)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append(f"{mod} imports {owner}.{name}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    edges, _ = import_graph()
    assert cycles(edges) == []


def test_no_module_imports_a_private_name_of_another():
    _, private = import_graph()
    assert private == []


@pytest.mark.parametrize("layer", ["nn", "data", "filters", "train", "compress", "report"])
def test_lower_rooms_never_import_the_jobs_or_the_cli(layer):
    edges, _ = import_graph()
    upper = ("tertulia.jobs", "tertulia.cli", "tertulia.sweep")
    for mod, targets in edges.items():
        if mod == f"{PACKAGE}.{layer}" or mod.startswith(f"{PACKAGE}.{layer}."):
            bad = [t for t in targets if t.startswith(upper)]
            assert not bad, f"{mod} imports {bad}"


def test_jobs_import_no_other_job():
    edges, _ = import_graph()
    jobs = {m for m in MODULES if m.startswith("tertulia.jobs.") and m != "tertulia.jobs.base"}
    for mod in jobs:
        assert not (edges[mod] & jobs), f"{mod} imports {edges[mod] & jobs}"
        assert "tertulia.jobs" not in edges[mod], f"{mod} imports the registry"


def test_imports_inside_functions_say_why():
    """Every import in a function body carries a ``# lazy:`` comment: on its line, on
    another line of its block of imports, or on the line above the block (a heavy or
    optional dependency kept off the import path)."""
    missing = []
    for mod, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if not isinstance(inner, (ast.Import, ast.ImportFrom)):
                    continue
                k = inner.lineno - 1
                top = k
                while top > 0 and lines[top - 1].strip().startswith(("from ", "import ", "#")):
                    top -= 1
                bottom = inner.end_lineno or inner.lineno
                starts = ("from ", "import ")
                while bottom < len(lines) and lines[bottom].strip().startswith(starts):
                    bottom += 1
                block = lines[max(top - 1, 0) : bottom]
                if not any("# lazy" in x for x in block):
                    missing.append(f"{mod}:{inner.lineno}: {lines[k].strip()}")
    assert missing == []
