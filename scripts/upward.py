"""List the imports that run up the layers (file:line), deferred ones included; exit 1 if any.

The layer order is read from ``[tool.importlinter]`` in pyproject.toml (what ``lint-imports``
enforces); this script counts every offending import instead of one chain per pair.
"""

import ast
import sys
from pathlib import Path

import tomllib

sys.path.insert(0, str(Path(__file__).parent))
import import_graph as g

config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
rank = {}
for i, names in enumerate(reversed(layers)):  # pyproject lists the top layer first
    for n in names.split("|"):
        rank[n.strip()] = i
files = sorted((g.ROOT / "lepton").rglob("*.py"))
mods = {g.module_name(f) for f in files}
n = 0
for f in files:
    m = g.module_name(f)
    src = g.unit(m, mods, 1)
    tree = ast.parse(f.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = g.resolve(m, f.name == "__init__.py", node)
            names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if not name.startswith("lepton."):
                continue
            dst = g.unit(name, mods, 1)
            if src in rank and dst in rank and rank[dst] > rank[src]:
                n += 1
                print(f"{f.relative_to(g.ROOT)}:{node.lineno}: {src.split('.')[1]} -> {name}")
print(n, "upward imports")
sys.exit(1 if n else 0)
