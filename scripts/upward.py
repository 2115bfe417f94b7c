"""List imports that run up the layers (file:line, deferred or not)."""
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import import_graph as g

ORDER = ["core", "data", "models", "tasks", "runtimes", "evaluation", "stages", "pipeline", "serve", "search|monitor",
         "cli"]
rank = {}
for i, names in enumerate(ORDER):
    for n in names.split("|"):
        rank["lepton." + n] = i
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
