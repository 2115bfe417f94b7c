"""List functions in src/ longer than a limit (default 60 lines), longest first; exit 1 if any."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
limit = int(sys.argv[1]) if len(sys.argv) > 1 else 60
rows = []
for f in sorted(ROOT.rglob("*.py")):
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            rows.append((n, f"{f.relative_to(ROOT)}:{node.lineno}", node.name))
rows.sort(reverse=True)
over = [r for r in rows if r[0] > limit]
for n, where, name in (over or rows[:10]):
    print(f"{n:5d}  {name}  {where}")
print(f"{len(over)} functions over {limit} lines")
sys.exit(1 if over else 0)
