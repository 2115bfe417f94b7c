"""Print Lepton's package-level import graph and fail on any cycle.

Every ``import`` / ``from ... import`` in ``src/lepton`` counts, the ones made inside functions
(deferred) included, and so do ``TYPE_CHECKING`` imports: a cycle hidden behind either is still a
cycle. A unit is a package directly under ``lepton`` (``lepton.stages``) or, with ``--depth 2``,
one level further down (``lepton.stages.quantize``); a module directly under ``lepton`` is a unit
of its own.

    python scripts/import_graph.py            # graph, statistics, exit 1 on a cycle
    python scripts/import_graph.py --depth 2  # the same one level down
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, deferred?) for every import of lepton in one file."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, deferred) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = resolve(module, path.name == "__init__.py", child)
                for alias in child.names:
                    # "from lepton.x import y" may import a submodule y: count the deepest module.
                    found.append((f"{target}.{alias.name}", deferred))
            visit(child, inner)

    visit(tree, False)
    return [(name, deferred) for name, deferred in found if name.split(".")[0] == "lepton"]


def unit(name: str, modules: set[str], depth: int) -> str:
    while name not in modules and "." in name:  # "lepton.x.y" where y is a name, not a module
        name = name.rsplit(".", 1)[0]
    return ".".join(name.split(".")[: depth + 1])


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=1, help="package depth of a unit (default 1)")
    parser.add_argument("--quiet", action="store_true", help="statistics and cycles only")
    args = parser.parse_args()
    files = sorted((ROOT / "lepton").rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = defaultdict(set)
    total = deferred_total = 0
    for f in files:
        src = unit(module_name(f), modules, args.depth)
        graph.setdefault(src, set())
        for name, deferred in imports(f):
            total += 1
            deferred_total += deferred
            dst = unit(name, modules, args.depth)
            if dst != src and dst != "lepton":
                graph[src].add(dst)
    top = [m for m in modules if m.count(".") == 1 and not (ROOT / m.replace(".", "/")).is_dir()]
    if not args.quiet:
        print("package-level import graph (deferred imports included):")
        for src in sorted(graph):
            print(f"  {src} -> {', '.join(sorted(graph[src])) or '(nothing)'}")
    print(f"{len(files)} files, {len(top)} modules at the top level, {total} internal imports, "
          f"{deferred_total} deferred ({100 * deferred_total / max(total, 1):.0f}%)")
    cycles = sccs(graph)
    for comp in cycles:
        print(f"CYCLE ({len(comp)} units): {' <-> '.join(comp)}")
    print("no cycle" if not cycles else f"{len(cycles)} cycle(s)")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
