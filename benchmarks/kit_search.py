"""The bad-input kit's cases for ``lepton search`` (see bad_inputs.py: ``build``, ``cases``, ``SHARED``).

Fixtures under fix/search: a search recipe over the core fixtures' tiny BERT and toy data (the
fine-tune baseline, then ``drop_layers`` searched), and a finished two-trial search made with it
(``finished``), whose copies the journal, output-folder and cache cases damage. Every bad input
fails before anything trains; the few accepted cases continue a search whose trials are done or
take about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bad_inputs import ROOT, Case, Ctx, alias_bomb, classify_cli, recipe_tree

SHARED = ["search/recipe.yaml", "search/finished"]


# ============================================================================ fixtures


def search_tree(fix: Path) -> dict[str, Any]:
    tree = recipe_tree(fix)
    tree["stages"].append({"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}})
    tree["search"] = {"trials": 2, "sampler": "random", "sampler_seed": 0}
    return tree


def build(fix: Path) -> None:
    """fix/search/recipe.yaml and fix/search/finished (a finished search; about 10 s on one core)."""
    folder = fix / "search"
    folder.mkdir(exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(search_tree(fix)))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "lepton", "-q", "search", str(folder / "recipe.yaml"), "-o",
                    str(folder / "finished"), "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)


# ============================================================================ helpers


def recipe(x: Ctx) -> str:
    return str(x.fix / "search" / "recipe.yaml")


def search_with(edit: Callable[[dict], Any]) -> Callable[[Ctx], str]:
    """A search recipe with ``edit`` applied, written into the case's folder."""
    def write(x: Ctx) -> str:
        tree = search_tree(x.fix)
        edit(tree)
        return x.write("search.yaml", yaml.safe_dump(tree))
    return write


def section(**values: Any) -> Callable[[dict], None]:
    def edit(tree: dict) -> None:
        tree["search"].update(values)
    return edit


def stage(value: Any, index: int = 1) -> Callable[[dict], None]:
    def edit(tree: dict) -> None:
        tree["stages"][index] = value
    return edit


def top(key: str, value: Any) -> Callable[[dict], None]:
    def edit(tree: dict) -> None:
        tree[key] = value
    return edit


def args_case(args: list[str]) -> Callable[[Ctx], list[str]]:
    return lambda x: ["search", recipe(x), "-o", str(x.d / "o"), "--no-progress", *args]


def recipe_case(edit: Callable[[dict], Any]) -> Callable[[Ctx], list[str]]:
    return lambda x: ["search", search_with(edit)(x), "-o", str(x.d / "o"), "--no-progress"]


def copy_finished(x: Ctx) -> Path:
    out = x.d / "out"
    if not out.exists():
        shutil.copytree(x.fix / "search" / "finished", out)
    return out


def journal_damaged(how: str) -> Callable[[Ctx], list[str]]:
    def argv(x: Ctx) -> list[str]:
        out = copy_finished(x)
        journal = out / "study.journal"
        data = journal.read_bytes()
        lines = data.split(b"\n")
        if how == "garbage appended":
            journal.write_bytes(data + b"garbage\n")
        elif how == "garbage appended, no line end":
            journal.write_bytes(data + b"garbage")
        elif how == "garbage inserted":
            journal.write_bytes(b"\n".join([*lines[:3], b"{not json", *lines[3:]]))
        elif how == "random bytes":
            journal.write_bytes(os.urandom(2000))
        elif how == "random bytes appended":
            journal.write_bytes(data + os.urandom(300))
        elif how == "a JSON list line":
            journal.write_bytes(data + b"[1, 2]\n")
        elif how == "a record without op_code":
            journal.write_bytes(data + b'{"worker_id": "x"}\n')
        elif how == "an unknown op_code":
            journal.write_bytes(data + b'{"op_code": 99, "worker_id": "x"}\n')
        elif how == "a record missing its keys":
            journal.write_bytes(data + b'{"op_code": 4, "worker_id": "x"}\n')
        elif how == "a first record missing its keys":
            journal.write_bytes(b'{"op_code": 0}\n')
        elif how == "not UTF-8 in a line":
            journal.write_bytes(b"\n".join([*lines[:2], b'{"op_code": "\xff\xfe"}', *lines[2:]]))
        elif how == "a line nested 100000 deep":
            journal.write_bytes(data + b"[" * 100_000 + b"]" * 100_000 + b"\n")
        elif how == "NUL bytes":
            journal.write_bytes(data[:200] + b"\0" * 500 + data[200:])
        elif how == "a blank line inserted":
            journal.write_bytes(b"\n".join([*lines[:3], b"", *lines[3:]]))
        elif how == "UTF-16 text":
            journal.write_bytes(data.decode().encode("utf-16"))
        elif how == "truncated mid-record":
            journal.write_bytes(data[: len(data) - 40])
        elif how == "truncated to half, mid-record":
            journal.write_bytes(data[: len(data) // 2 + 7])
        elif how == "cut at a record boundary":
            journal.write_bytes(b"\n".join(lines[:20]) + b"\n")
        elif how == "empty":
            journal.write_bytes(b"")
        elif how == "a folder":
            journal.unlink()
            journal.mkdir()
        return ["search", recipe(x), "-o", str(out), "--no-progress"]
    return argv


def storage_file(content: bytes | None) -> Callable[[Ctx], list[str]]:
    """--storage naming a file of the user's (None: a folder)."""
    def argv(x: Ctx) -> list[str]:
        if content is None:
            (x.d / "mine").mkdir()
            return ["search", recipe(x), "-o", str(x.d / "o"), "--storage", str(x.d / "mine")]
        return ["search", recipe(x), "-o", str(x.d / "o"), "--storage", x.write("notes.txt", content)]
    return argv


def users_folder(x: Ctx) -> Path:
    mine = x.d / "mine"
    (mine / "trials" / "3" / "model").mkdir(parents=True, exist_ok=True)
    (mine / "trials" / "3" / "model" / "weights.bin").write_bytes(b"years of work")
    (mine / "best").mkdir(exist_ok=True)
    (mine / "best" / "notes.txt").write_text("keep me")
    (mine / "cache").mkdir(exist_ok=True)
    (mine / "cache" / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    return mine


def cache_damaged(how: str) -> Callable[[Ctx], list[str]]:
    def argv(x: Ctx) -> list[str]:
        out = copy_finished(x)
        (entry,) = [p for p in (out / "cache" / "prefix").iterdir() if p.is_dir() and not p.name.startswith(".")]
        snap = entry / "snapshot"
        weights = snap / "model.safetensors"
        if how == "weights overwritten":
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF
            weights.write_bytes(bytes(data))
        elif how == "weights truncated":
            weights.write_bytes(weights.read_bytes()[:1000])
        elif how == "weights deleted":
            weights.unlink()
        elif how == "manifest deleted":
            (snap / "lepton.json").unlink()
        elif how == "manifest not JSON":
            (snap / "lepton.json").write_text("{ nope")
        elif how == "manifest checksum edited to match":
            manifest = json.loads((snap / "lepton.json").read_text())
            manifest["files"]["config.json"] = {"sha256": "0" * 64}
            (snap / "lepton.json").write_text(json.dumps(manifest))
        elif how == "an unlisted weights file added":
            (snap / "pytorch_model.bin").write_bytes(b"evil weights")
        elif how == "snapshot folder deleted":
            shutil.rmtree(snap)
        elif how == "entry replaced by a file":
            shutil.rmtree(entry)
            entry.write_text("not a folder")
        elif how == "cache/prefix is a file":
            shutil.rmtree(out / "cache" / "prefix")
            (out / "cache" / "prefix").write_text("not a folder")
        elif how == "best model weights overwritten":
            data = bytearray((out / "best" / "model" / "model.safetensors").read_bytes())
            data[len(data) // 2] ^= 0xFF
            (out / "best" / "model" / "model.safetensors").write_bytes(bytes(data))
        elif how == "best trial.json garbage":
            (out / "best" / "trial.json").write_bytes(b"\xff\xfe garbage")
        return ["search", recipe(x), "-o", str(out), "--no-progress"]
    return argv


# ============================================================================ cases


ARGS: list[tuple[str, list[str]]] = [
    ("--trials 0", ["--trials", "0"]),
    ("--trials -3", ["--trials=-3"]),
    ("--trials 2.5", ["--trials", "2.5"]),
    ("--trials abc", ["--trials", "abc"]),
    ("--trials ''", ["--trials", ""]),
    ("--trials 1e3", ["--trials", "1e3"]),
    ("--objectives ','", ["--objectives", ","]),
    ("--objectives ''", ["--objectives", ""]),
    ("--objectives accuracy,,size", ["--objectives", "accuracy,,size"]),
    ("--objectives twice the same", ["--objectives", "accuracy,accuracy"]),
    ("--objectives unknown (typo)", ["--objectives", "accuracy,latncy"]),
    ("--objectives unknown name", ["--objectives", "speed"]),
    ("--objectives loss (not reported)", ["--objectives", "loss"]),
    ("--max-drop accuracy=-1", ["--max-drop", "accuracy=-1"]),
    ("--max-drop accuracy=nan", ["--max-drop", "accuracy=nan"]),
    ("--max-drop accuracy=inf", ["--max-drop", "accuracy=inf"]),
    ("--max-drop accuracy=-inf", ["--max-drop", "accuracy=-inf"]),
    ("--max-drop without '='", ["--max-drop", "accuracy"]),
    ("--max-drop without a metric", ["--max-drop", "=1"]),
    ("--max-drop without points", ["--max-drop", "accuracy="]),
    ("--max-drop points not a number", ["--max-drop", "accuracy=one"]),
    ("--max-drop unknown metric", ["--max-drop", "nonsense=1"]),
    ("--max-drop metric typo", ["--max-drop", "acuracy=1"]),
    ("--max-drop the same metric twice", ["--max-drop", "accuracy=1", "--max-drop", "accuracy=2"]),
    ("--timeout 0", ["--timeout", "0"]),
    ("--timeout -5", ["--timeout=-5"]),
    ("--timeout soon", ["--timeout", "soon"]),
    ("--timeout ''", ["--timeout", ""]),
    ("--timeout 1h-30m", ["--timeout", "1h-30m"]),
    ("--timeout 1e999", ["--timeout", "1e999"]),
    ("--timeout 400 digits (inf)", ["--timeout", "9" * 400]),
    ("--timeout 0h0m", ["--timeout", "0h0m"]),
    ("--storage ''", ["--storage", ""]),
    ("--storage unknown database scheme", ["--storage", "nosuchdb://host/x"]),
    ("--storage sqlite in a missing folder", ["--storage", "sqlite:////nonexistent/folder/x.db"]),
    ("--study-name blank", ["--study-name", " "]),
    ("--sampler unknown", ["--sampler", "grid"]),
    ("--set without '='", ["--set", "search.trials"]),
    ("--set search.trials=0", ["--set", "search.trials=0"]),
    ("--set search=3", ["--set", "search=3"]),
    ("--set a recursive YAML alias", ["--set", "search.objectives=&a [*a]"]),
    ("unknown flag", ["--trails", "3"]),
]

RECIPES: list[tuple[str, Callable[[dict], Any]]] = [
    ("search: 3 (not a mapping)", top("search", 3)),
    ("search: a list", top("search", ["trials", 3])),
    ("search.trials 0", section(trials=0)),
    ("search.trials -1", section(trials=-1)),
    ("search.trials 'many'", section(trials="many")),
    ("search.trials true", section(trials=True)),
    ("search.trials 2.5", section(trials=2.5)),
    ("search.max_drop {accuracy: -1}", section(max_drop={"accuracy": -1})),
    ("search.max_drop {accuracy: .nan}", section(max_drop={"accuracy": float("nan")})),
    ("search.max_drop {}", section(max_drop={})),
    ("search.max_drop a number", section(max_drop=1.0)),
    ("search.max_drop unknown metric", section(max_drop={"nonsense": 1.0})),
    ("search.objectives []", section(objectives=[])),
    ("search.objectives twice", section(objectives=["accuracy", "accuracy"])),
    ("search.objectives unknown", section(objectives=["speed"])),
    ("search.objectives a string", section(objectives="accuracy")),
    ("search.timeout '-1'", section(timeout="-1")),
    ("search.timeout 0", section(timeout=0)),
    ("search.timeout '0s'", section(timeout="0s")),
    ("search.sampler grid", section(sampler="grid")),
    ("search.startup_trials 0", section(startup_trials=0)),
    ("search.sampler_seed -1", section(sampler_seed=-1)),
    ("search.sampler_seed 2**40", section(sampler_seed=2**40)),
    ("search.trails (typo)", section(trails=3)),
    ("search.storage ''", section(storage="")),
    ("search.study_name ''", section(study_name="")),
    ("space: choices []", stage({"kind": "drop_layers", "strategy": "top", "layers": {"choices": []}})),
    ("space: a choice twice", stage({"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 1]}})),
    ("space: choices not a list", stage({"kind": "drop_layers", "strategy": "top", "layers": {"choices": 2}})),
    ("space: low above high", stage({"kind": "prune", "method": "ffn", "sparsity": {"low": 0.6, "high": 0.2}})),
    ("space: low only", stage({"kind": "prune", "method": "ffn", "sparsity": {"low": 0.2}})),
    ("space: low a string", stage({"kind": "prune", "method": "ffn", "sparsity": {"low": "a", "high": 0.5}})),
    ("space: step 0", stage({"kind": "prune", "method": "ffn", "sparsity": {"low": 0.1, "high": 0.5, "step": 0}})),
    ("space: log range from 0", stage({"kind": "prune", "method": "ffn",
                                      "sparsity": {"low": 0, "high": 0.5, "log": True}})),
    ("space: log not a boolean", stage({"kind": "prune", "method": "ffn",
                                       "sparsity": {"low": 0.1, "high": 0.5, "log": "yes"}})),
    ("space: 'choises' typo", stage({"kind": "drop_layers", "strategy": "top", "layers": {"choises": [1, 2]}})),
    ("space: choices and low together", stage({"kind": "drop_layers", "strategy": "top",
                                               "layers": {"choices": [1], "low": 1}})),
    ("space: a stage kind searched", stage({"kind": {"choices": ["prune", "drop_layers"]}})),
    ("space: optional 'yes'", stage({"kind": "drop_layers", "strategy": "top", "layers": 1, "optional": "yes"})),
    ("space: a choice the stage refuses", stage({"kind": "prune", "method": "ffn",
                                                 "sparsity": {"choices": [0.5, 1.5]}})),
    ("space: a range the stage refuses", stage({"kind": "prune", "method": "ffn",
                                                "sparsity": {"low": 0.5, "high": 3.0}})),
    ("space outside the stages", top("seed", {"choices": [0, 1]})),
    ("space in the baseline stage", lambda t: t["stages"][0].update(epochs={"choices": [1, 2]})),
    ("no stages", top("stages", [])),
    ("stages not a list", top("stages", {"kind": "finetune"})),
    ("a stage not a mapping", stage("drop_layers")),
    ("unknown stage kind", stage({"kind": "compress", "layers": {"choices": [1, 2]}})),
    ("unset ${VAR} in a search recipe", top("model", "${LEPTON_KIT_UNSET_VAR}")),
    ("model folder missing", top("model", "./no/such/model")),
    ("output.dir ''", lambda t: t["output"].update(dir="")),
]


def cases() -> list[Case]:
    c: list[Case] = []

    def add(kind: str, group: str, argv: Callable[[Ctx], list[str]], **kw: Any) -> None:
        c.append(Case(kind, group, argv, **kw))

    # --- arguments: each refused before the output folder is touched or anything trains
    for what, args in ARGS:
        add(what, "search args", args_case(args))

    # --- the recipe file and its search section and spaces
    add("search recipe missing", "search recipe", lambda x: ["search", str(x.d / "none.yaml")])
    add("search recipe is a folder", "search recipe", lambda x: ["search", str(x.d)])
    add("search recipe binary", "search recipe", lambda x: ["search", x.write("s.yaml", os.urandom(256))])
    add("search recipe empty", "search recipe", lambda x: ["search", x.write("s.yaml", "")])
    add("search recipe a list", "search recipe", lambda x: ["search", x.write("s.yaml", "- a\n- b\n")])
    add("search recipe YAML alias bomb", "search recipe",
        lambda x: ["search", x.write("s.yaml", alias_bomb() + "stages: [{kind: finetune}]\n"), "-o", str(x.d / "o")])
    add("search recipe YAML alias bomb in the search section", "search recipe",
        lambda x: ["search", x.write("s.yaml", bomb_in_search(x)), "-o", str(x.d / "o")])
    add("search recipe recursive YAML alias", "search recipe",
        lambda x: ["search", x.write("s.yaml", "a: &a [*a]\nstages: [{kind: finetune}]\n")])
    add("search recipe nested 5000 deep", "search recipe",
        lambda x: ["search", x.write("s.yaml", "a: " + "[" * 5000 + "]" * 5000)])
    add("search recipe not UTF-8", "search recipe", lambda x: ["search", x.write("s.yaml", b"model: caf\xe9\n")])
    for what, edit in RECIPES:
        add(what, "search recipe", recipe_case(edit))

    # --- the output folder
    add("-o a folder of the user's (trials/, best/, cache/ in it)", "search output",
        lambda x: ["search", recipe(x), "-o", str(users_folder(x)), "--no-progress"],
        protect=lambda x: [x.d / "mine"])
    add("-o a folder holding only a hidden file", "search output",
        lambda x: ["search", recipe(x), "-o", str(_hidden_only(x))],
        protect=lambda x: [x.d / "mine"])
    add("-o the core victim folder", "search output", lambda x: ["search", recipe(x), "-o", str(x.fix / "victim")])
    add("-o a finished lepton run", "search output", lambda x: ["search", recipe(x), "-o", str(x.fix / "finished")])
    add("-o an interrupted lepton run", "search output",
        lambda x: ["search", recipe(x), "-o", str(x.fix / "interrupted")])
    add("-o a file", "search output", lambda x: ["search", recipe(x), "-o", x.write("f.txt", "mine")],
        protect=lambda x: [x.d / "f.txt"])
    add("-o the recipe itself", "search output", lambda x: ["search", recipe(x), "-o", recipe(x)])
    add("-o ''", "search output", lambda x: ["search", recipe(x), "-o", ""])
    add("-o under a file", "search output", lambda x: ["search", recipe(x), "-o", x.write("f.txt", "x") + "/sub"],
        protect=lambda x: [x.d / "f.txt"])
    add("-o a search folder whose marker is a folder", "search output",
        lambda x: ["search", recipe(x), "-o", str(_marker_folder(x))], protect=lambda x: [x.d / "mine"])
    add("--storage a folder", "search output", storage_file(None))
    add("--storage a text file of the user's", "search output", storage_file(b"my notes\nmore notes\n"),
        protect=lambda x: [x.d / "notes.txt"])
    add("--storage a binary file of the user's", "search output", storage_file(bytes(range(256)) * 4),
        protect=lambda x: [x.d / "notes.txt"])
    add("--storage a JSON file of the user's", "search output", storage_file(b'{"my": "settings"}\n'),
        protect=lambda x: [x.d / "notes.txt"])
    add("--storage sqlite:/// a text file of the user's", "search output",
        lambda x: ["search", recipe(x), "-o", str(x.d / "o"), "--storage",
                   "sqlite:///" + x.write("notes.txt", "my notes\n")],
        protect=lambda x: [x.d / "notes.txt"])
    add("a previous search folder, every trial done", "search output",
        lambda x: ["search", recipe(x), "-o", str(copy_finished(x)), "--no-progress"], expect="accept",
        why="running the same search again continues it: here nothing is left to run, and it reports the front")
    add("a previous search folder, a different space", "search output",
        lambda x: ["search", search_with(stage({"kind": "drop_layers", "strategy": "top",
                                                "layers": {"choices": [1]}}))(x),
                   "-o", str(copy_finished(x)), "--no-progress"])
    add("a previous search folder, other objectives", "search output",
        lambda x: ["search", recipe(x), "-o", str(copy_finished(x)), "--objectives", "accuracy,size"])

    # --- the study journal
    for how in ("garbage appended", "garbage appended, no line end", "garbage inserted", "random bytes",
                "random bytes appended", "a JSON list line", "a record without op_code", "an unknown op_code",
                "a record missing its keys", "a first record missing its keys", "not UTF-8 in a line",
                "a line nested 100000 deep", "NUL bytes", "a blank line inserted", "UTF-16 text", "a folder"):
        add(f"study.journal: {how}", "search journal", journal_damaged(how))
    for how in ("truncated mid-record", "truncated to half, mid-record"):
        add(f"study.journal: {how}", "search journal", journal_damaged(how), expect="accept",
            why="an unfinished last record is what a crash while writing leaves; Optuna never read it, so it is "
                "dropped (with a warning) and the search goes on from every complete record")
    add("study.journal: cut at a record boundary", "search journal", journal_damaged("cut at a record boundary"),
        expect="accept", why="a shorter journal is a consistent earlier state of the study: the search goes on")
    add("study.journal: empty", "search journal", journal_damaged("empty"), expect="accept",
        why="an empty journal is a study with no trials yet: the search starts it")
    add("--storage a damaged journal elsewhere", "search journal",
        lambda x: ["search", recipe(x), "-o", str(x.d / "o"), "--storage",
                   x.write("j.journal", (x.fix / "search" / "finished" / "study.journal").read_bytes() + b"xx\n")],
        protect=lambda x: [x.d / "j.journal"])

    # --- the prefix cache and the best model
    for how in ("weights overwritten", "weights truncated", "weights deleted", "manifest deleted",
                "manifest not JSON", "manifest checksum edited to match", "an unlisted weights file added",
                "snapshot folder deleted", "entry replaced by a file"):
        add(f"cached prefix: {how}", "search cache", cache_damaged(how), expect="accept",
            why="a cached snapshot is verified against its checksums like any model: a damaged one is discarded "
                "(with a warning) and built again, never used")
    add("cache/prefix is a file", "search cache", cache_damaged("cache/prefix is a file"))
    for how in ("best model weights overwritten", "best trial.json garbage"):
        add(how, "search cache", cache_damaged(how), expect="accept",
            why="OUT/best is verified before it counts as written; a damaged one is written again")

    # --- signals
    add("SIGINT during the baseline", "search signals", lambda x: ["search", recipe(x), "-o", str(x.d / "o")],
        special="subprocess-sigint")
    add("SIGINT during a trial", "search signals", lambda x: ["search", recipe(x), "-o", str(x.d / "o")],
        special="search-sigint-trial")
    return c


def bomb_in_search(x: Ctx) -> str:
    """The kit's search recipe with its search section's objectives an alias bomb (10^9 values)."""
    tree = search_tree(x.fix)
    tree["search"]["objectives"] = "BOMB"
    aliases = alias_bomb().rsplit("\ntask:", 1)[0]
    return "x-" + aliases.replace("\n", "\nx-") + "\n" + yaml.safe_dump(tree).replace("BOMB", "*a8")


def _hidden_only(x: Ctx) -> Path:
    mine = x.d / "mine"
    mine.mkdir()
    (mine / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return mine


def _marker_folder(x: Ctx) -> Path:
    mine = x.d / "mine"
    (mine / "lepton-search.json").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    return mine


# ============================================================================ specials


def run_special(case: Case, x: Ctx) -> tuple[str, str] | None:
    """``search-sigint-trial``: a real process, Ctrl-C once trials are running; clean when it
    exits 130 with one ``lepton: interrupted`` line and the study still reads with its trials."""
    if case.special != "search-sigint-trial":
        return None
    out = x.d / "o"
    tree = search_tree(x.fix)
    tree["stages"].append({"kind": "prune", "method": "ffn", "importance": "magnitude",
                           "sparsity": {"low": 0.2, "high": 0.6}})  # a float: every trial runs
    tree["search"]["trials"] = 500
    path = x.write("long.yaml", yaml.safe_dump(tree))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "search", path, "-o", str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 60
    while not (out / "pareto.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # into the next trial
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "hang", "did not stop within 60 s of SIGINT"
    outcome = classify_cli(proc.returncode, err, None)
    if outcome[0] == "clean":
        import optuna
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
            JournalFileBackend(str(out / "study.journal"))))
        if not any(t.state.name == "COMPLETE" for t in study.trials):
            return "data lost", "no finished trial kept in the study after Ctrl-C"
    return outcome
