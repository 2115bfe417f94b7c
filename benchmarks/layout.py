"""Issue 23 (the house in layers), measured side by side in one run: a base revision and this tree.

For each tree:
- structure: files directly in ``src/lepton``, package-level import cycles (deferred and
  TYPE_CHECKING imports counted), imports that run up the layers of ``pyproject.toml``, deferred
  internal imports, functions over 60 lines and the ten longest, runtime-name comparisons outside
  ``runtimes/``, private names imported across packages, README lines;
- import time of the entry points, each in a fresh process, both trees interleaved (A B A B ...),
  median of ``--rounds``;
- with ``--main-job``: the main job (``examples/sst2-minilm.yaml``, in full) of each tree, one after
  the other, and whether the quality sections of the two report.json files are identical.

The base tree is checked out with ``git worktree`` into a temporary folder. A module of the base
is placed in a layer through git's rename detection (base path -> path here).

    python benchmarks/layout.py --base 8ac356b --main-job
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "scripts"))
import import_graph as graph  # noqa: E402

# Entry points: (name in the base tree, name here)
ENTRY_POINTS = [("lepton.cli", "lepton.cli"), ("lepton.recipe", "lepton.pipeline.recipe"),
                ("lepton.artifact", "lepton.pipeline.artifact"), ("lepton.api", "lepton.pipeline.api"),
                ("lepton.stages", "lepton.stages"), ("lepton.runtimes", "lepton.runtimes"),
                ("lepton.serve.app", "lepton.serve.app"), ("lepton.monitor.app", "lepton.monitor.app"),
                ("lepton.search", "lepton.search")]
RUNTIME_NAME = re.compile(r'runtime ?(==|!=) ?"|runtime (not )?in |== ?"(torch|onnxruntime)"')


def git(*args: str, cwd: Path = HERE) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def layers() -> dict[str, int]:
    config = tomllib.loads((HERE / "pyproject.toml").read_text())
    order = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    return {n.strip(): i for i, names in enumerate(reversed(order)) for n in names.split("|")}


def renamed(base: str) -> dict[str, str]:
    """Module of the base tree -> its module here (git's rename detection; unchanged paths as is)."""
    out = {}
    for line in git("diff", "--find-renames=40%", "--name-status", base, "HEAD", "--", "src/lepton").splitlines():
        parts = line.split("\t")
        if parts[0].startswith("R") and parts[1].endswith(".py") and parts[2].endswith(".py"):
            out[_module(parts[1])] = _module(parts[2])
    return out


def _module(path: str) -> str:
    parts = list(Path(path).relative_to("src").with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def structure(root: Path, moved: dict[str, str]) -> dict:
    graph.ROOT = root / "src"
    files = sorted((root / "src" / "lepton").rglob("*.py"))
    modules = {graph.module_name(f) for f in files}
    rank = layers()
    edges: dict[str, set[str]] = {}
    total = deferred = upward = 0
    for f in files:
        src_mod = graph.module_name(f)
        src = graph.unit(src_mod, modules, 1)
        here = ".".join(moved.get(src_mod, src_mod).split(".")[:2])
        edges.setdefault(src, set())
        for name, late in graph.imports(f):
            total += 1
            deferred += late
            dst_mod = name
            while dst_mod not in modules and "." in dst_mod:
                dst_mod = dst_mod.rsplit(".", 1)[0]
            dst = graph.unit(dst_mod, modules, 1)
            if dst not in (src, "lepton"):
                edges[src].add(dst)
            there = ".".join(moved.get(dst_mod, dst_mod).split(".")[:2])
            if here in rank and there in rank and rank[there] > rank[here]:
                upward += 1
    lengths = sorted(((n.end_lineno - n.lineno + 1, n.name) for f in files for n in ast.walk(ast.parse(f.read_text()))
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), reverse=True)
    runtime_names = private = 0
    for f in files:
        mod = graph.module_name(f)
        text = f.read_text()
        if not mod.startswith("lepton.runtimes"):
            runtime_names += sum(1 for line in text.splitlines() if RUNTIME_NAME.search(line))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lepton."):
                private += sum(1 for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
                               and node.module.split(".")[:2] != mod.split(".")[:2])
    return {
        "top_level_files": sum(1 for f in files if f.parent == root / "src" / "lepton"),
        "package_cycles": [len(c) for c in graph.sccs(edges)],
        "internal_imports": total, "deferred_imports": deferred, "upward_imports": upward,
        "functions_over_60": sum(1 for n, _ in lengths if n > 60),
        "longest": [f"{name} {n}" for n, name in lengths[:10]],
        "runtime_name_comparisons": runtime_names, "private_cross_package_imports": private,
        "readme_lines": len((root / "README.md").read_text().splitlines()),
    }


def import_times(trees: list[Path], rounds: int) -> list[dict[str, float]]:
    samples: list[dict[str, list[float]]] = [{} for _ in trees]
    for _ in range(rounds):
        for pair in ENTRY_POINTS:
            for k, tree in enumerate(trees):  # interleaved: drift hits both trees alike
                module = pair[k]
                code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(tree / "src")})
                samples[k].setdefault(pair[1], []).append(float(done.stdout.strip()))
    return [{m: statistics.median(v) for m, v in s.items()} for s in samples]


def main_job(tree: Path, out: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lepton", "run", str(tree / "examples" / "sst2-minilm.yaml"), "-o",
                    str(out), "--no-progress"], check=True, cwd=tree, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(tree / "src")})
    report = json.loads((out / "report.json").read_text())
    return {"seconds": round(time.perf_counter() - start, 1),
            "quality": [v["quality"] for v in report["variants"]],
            "rows": [(v["name"], v["quality"]["metrics"][v["quality"]["headline"]]) for v in report["variants"]]}


def cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = re.search(r"model name\s*:\s*(.+)", text)
    flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name.group(1) if name else '?'} ({', '.join(wanted)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="8ac356b", help="the revision to compare with (default 8ac356b)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of import timing")
    parser.add_argument("--main-job", action="store_true", help="also run the main job in both trees")
    parser.add_argument("--out", default=str(HERE / "benchmarks" / "results" / "layout"))
    args = parser.parse_args()
    base_rev = git("rev-parse", "--short", args.base).strip()
    head_rev = git("rev-parse", "--short", "HEAD").strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        git("worktree", "add", "--detach", str(base), args.base)
        try:
            result = {"cpu": cpu(), "base": base_rev, "head": head_rev,
                      "structure": [structure(base, renamed(args.base)), structure(HERE, {})],
                      "import_seconds": import_times([base, HERE], args.rounds)}
            if args.main_job:
                result["main_job"] = [main_job(base, Path(tmp) / "run-base"), main_job(HERE, Path(tmp) / "run-head")]
                result["main_job_quality_identical"] = (json.dumps(result["main_job"][0]["quality"], sort_keys=True)
                                                        == json.dumps(result["main_job"][1]["quality"], sort_keys=True))
        finally:
            git("worktree", "remove", "--force", str(base))
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(result, args.rounds))
    print(markdown(result, args.rounds))


def markdown(r: dict, rounds: int) -> str:
    b, h = r["structure"]
    lines = [f"# The house in layers: {r['base']} against {r['head']}, one run", "",
             f"CPU: {r['cpu']}. Import times: a fresh process per import, the two trees interleaved, "
             f"median of {rounds} rounds.", "",
             f"| | {r['base']} | {r['head']} |", "|---|---|---|"]
    rows = [("files directly in src/lepton", "top_level_files"),
            ("package-level cycles (sizes)", "package_cycles"),
            ("imports running up the layers", "upward_imports"),
            ("internal imports / deferred", None),
            ("functions over 60 lines", "functions_over_60"),
            ("runtime-name comparisons outside runtimes/", "runtime_name_comparisons"),
            ("private names imported across packages", "private_cross_package_imports"),
            ("README lines", "readme_lines")]
    for label, key in rows:
        if key is None:
            cells = [f"{s['internal_imports']} / {s['deferred_imports']} "
                     f"({100 * s['deferred_imports'] / s['internal_imports']:.0f}%)" for s in (b, h)]
        else:
            cells = [str(s[key] if s[key] != [] else "none") for s in (b, h)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines += ["", f"Ten longest functions, {r['base']}: {', '.join(b['longest'])}.",
              f"Ten longest functions, {r['head']}: {', '.join(h['longest'])}.", "",
              f"| import (s) | {r['base']} | {r['head']} | ratio |", "|---|---|---|---|"]
    old, new = r["import_seconds"]
    for module in new:
        lines.append(f"| {module} | {old[module]:.2f} | {new[module]:.2f} | {new[module] / old[module]:.2f}x |")
    if "main_job" in r:
        lines += ["", "Main job (examples/sst2-minilm.yaml, full), each tree in turn: quality sections "
                  f"identical: **{r['main_job_quality_identical']}**.", "",
                  f"| variant | accuracy {r['base']} | accuracy {r['head']} |", "|---|---|---|"]
        for (name, m0), (_, m1) in zip(r["main_job"][0]["rows"], r["main_job"][1]["rows"]):
            lines.append(f"| {name} | {m0['value']:.4f} [{m0['ci95_low']:.4f}, {m0['ci95_high']:.4f}] | "
                         f"{m1['value']:.4f} [{m1['ci95_low']:.4f}, {m1['ci95_high']:.4f}] |")
        lines.append(f"| wall time (s) | {r['main_job'][0]['seconds']} | {r['main_job'][1]['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
