"""The bad-input kit: many kinds of bad input against the `lepton` CLI and `lepton serve`, counted.

    python benchmarks/bad_inputs.py [--only cli|server] [--timeout 90]

Builds its own fixtures in a temp folder (a 2-layer random-weight BERT with the MiniLM tokenizer,
toy data, one finished and one interrupted run, signing keys), then:

- CLI: each case calls ``lepton.cli.main(argv)`` in one long-lived worker process (so torch is
  imported once); the parent gives every case a time limit and restarts the worker after a hang.
  A few cases need a real process (signals) or a real file system fault (a full or read-only
  tmpfs, mounted when this runs as root; skipped otherwise).
- Server: one ``lepton serve`` process with small limits and short timeouts gets malformed,
  oversized, stalled and out-of-place requests over httpx and raw sockets.

Each case is classified: **clean** (CLI: exit 2 and exactly one ``lepton: error:`` line, or an
argparse usage error; server: a 4xx answer, or a stalled connection closed on time), **traceback**
(an exception escaped, or a 5xx), **hang** (over the time limit), **accepted** (exit 0 / 2xx) and
**data lost** (a protected file changed: the fixtures, a user's folder, a previous run). Accepted
cases are listed with the reason they are deliberate. Writes ``benchmarks/results/bad_inputs.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUTCOMES = ("clean", "traceback", "hang", "accepted", "data lost")
# The surfaces beyond the core, each a module beside this one (benchmarks/kit_<surface>.py) with
# ``build(fix)`` (its own fixtures under fix/<surface>), ``cases()`` (CLI cases), optionally
# ``servers(fix, scratch)`` (rows for an HTTP surface) and ``SHARED`` (fixture paths no case may change).
SURFACES = ("search", "monitor", "generate", "artifacts")


def surface_modules(only: str | None = None) -> list[Any]:
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    names = [s for s in SURFACES if only in (None, "all", s)]
    return [importlib.import_module(f"kit_{name}") for name in names
            if (Path(__file__).resolve().parent / f"kit_{name}.py").is_file()]


# ============================================================================ fixtures


def build_fixtures(fix: Path) -> None:
    """Everything the cases use, made once (the worker processes only read it)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lepton.models import resolve_model

    model = fix / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(model, safe_serialization=True)
    tokenizer.save_pretrained(model)
    words = {1: ["good", "great", "fine", "lovely"], 0: ["bad", "awful", "dull", "weak"]}
    for name, n in (("train", 32), ("dev", 16)):
        rows = ["sentence\tlabel"] + [f"a {words[i % 2][i % 4]} film number {i}\t{i % 2}" for i in range(n)]
        (fix / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    (fix / "recipe.yaml").write_text(yaml.safe_dump(recipe_tree(fix)))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    lepton = [sys.executable, "-m", "lepton", "-q"]
    subprocess.run([*lepton, "run", str(fix / "recipe.yaml"), "-o", str(fix / "finished"), "--no-progress"],
                   check=True, env=env)
    killed = subprocess.run([*lepton, "run", str(fix / "recipe.yaml"), "-o", str(fix / "interrupted"),
                             "--no-progress", "--set", "stages.0.checkpoint_every=1"],
                            env={**env, "LEPTON_TEST_KILL_AT_STEP": "2"})
    assert killed.returncode == -9, killed
    for key in ("key", "other-key"):
        subprocess.run([*lepton, "keygen", str(fix / key)], check=True, env=env, stdout=subprocess.DEVNULL)
    shutil.copytree(fix / "finished" / "model", fix / "signed")
    subprocess.run([*lepton, "sign", str(fix / "signed"), "--key", str(fix / "key")], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    victim = fix / "victim"
    (victim / "work").mkdir(parents=True)
    (victim / "work" / "thesis.tex").write_text("years of work")
    (victim / "model").mkdir()
    (victim / "model" / "photo.bin").write_bytes(os.urandom(64))
    (victim / "recipe.yaml").write_text("my own file")


def recipe_tree(fix: Path) -> dict[str, Any]:
    return {
        "schema_version": 1, "model": str(fix / "tiny-bert"),
        "task": {"kind": "sequence_classification", "text": "sentence", "label": "label"},
        "data": {"train": {"path": str(fix / "train.tsv")}, "dev": {"path": str(fix / "dev.tsv")}},
        "stages": [{"kind": "finetune", "epochs": 1, "lr": 1e-3, "batch_size": 8}],
        "evaluate": {"batch_sizes": [1, 4], "latency_items": 5, "warmup": 1, "throughput_batches": 1,
                     "bootstrap": 100, "fixed_length": 16, "memory": False, "robustness": False},
        "output": {"dir": "unused"},
    }


def digest_tree(folder: Path) -> dict[str, str]:
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.log"}


# ============================================================================ CLI cases


@dataclass
class Ctx:
    fix: Path
    d: Path  # this case's own scratch folder

    @property
    def recipe(self) -> str:
        return str(self.fix / "recipe.yaml")

    @property
    def model(self) -> str:
        return str(self.fix / "finished" / "model")

    def write(self, name: str, text: str | bytes) -> str:
        path = self.d / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def recipe_with(self, edit: Callable[[dict], Any]) -> str:
        tree = recipe_tree(self.fix)
        edit(tree)
        return self.write("recipe.yaml", yaml.safe_dump(tree))

    def copy_model(self) -> Path:
        return Path(shutil.copytree(self.fix / "finished" / "model", self.d / "model"))

    def copy_run(self, which: str = "finished") -> Path:
        return Path(shutil.copytree(self.fix / which, self.d / which))


@dataclass
class Case:
    kind: str
    group: str
    argv: Callable[[Ctx], list[str]]
    expect: str = "error"  # or "accept": a deliberate acceptance, explained in `why`
    why: str = ""
    protect: Callable[[Ctx], list[Path]] = field(default=lambda c: [])  # beyond the shared fixtures
    special: str = ""  # "subprocess-sigint", "tmpfs-full", "tmpfs-ro": run differently


def set_value(path: str, value: Any) -> Callable[[dict], None]:
    def edit(tree: dict) -> None:
        node: Any = tree
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def delete(path: str) -> Callable[[dict], None]:
    def edit(tree: dict) -> None:
        node: Any = tree
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[parts[-1]]
    return edit


# Recipe values that are wrong, each validated by `lepton validate` from a recipe file.
BAD_VALUES: list[tuple[str, Any]] = [
    ("schema_version", 2), ("schema_version", "one"), ("model", 12), ("model", "builtin:nope"),
    ("model", "./no/such/folder"), ("task", "classify"), ("task.kind", "regression"), ("task.text", None),
    ("task.max_length", 0), ("task.max_length", -5), ("data", []), ("data.train", "x"),
    ("data.train.path", ""), ("data.train.limit", 0), ("data.train.limit", -3), ("data.train.format", "xlsx"),
    ("stages", "finetune"), ("stages", {"kind": "finetune"}), ("stages.0", "finetune"),
    ("stages.0.kind", "finetuen"), ("stages.0.kind", None), ("stages.0.epochs", 0), ("stages.0.epochs", -1),
    ("stages.0.epochs", True), ("stages.0.epochs", "two"), ("stages.0.epochs", 1.5), ("stages.0.lr", -1e-3),
    ("stages.0.lr", False), ("stages.0.batch_size", 0), ("stages.0.method", "qlora"),
    ("stages.0.name", "../../victim"), ("stages.0.name", "/abs/path"), ("stages.0.name", ""),
    ("stages.0.name", "a b"), ("stages.0.name", "x" * 65), ("stages.0.name", ".hidden"),
    ("stages.0.checkpoint_every", 0), ("evaluate.split", "validation"), ("evaluate.batch_sizes", []),
    ("evaluate.batch_sizes", [0]), ("evaluate.batch_sizes", [-4]), ("evaluate.bootstrap", 10),
    ("evaluate.latency_items", 1), ("evaluate.rounds", 0), ("evaluate.perturb_rate", 2),
    ("output", "runs/x"), ("output.dir", ""), ("output.dir", "   "), ("seed", "abc"), ("seed", True),
    ("device", "tpu"), ("trust_remote_code", "maybe"), ("unknown_key", 1), ("stages.0.lrr", 0.1),
    ("evaluate.bootstap", 1000),
]

ACCEPTED_VALUES = {
    ("model", "'./no/such/folder'"): ("accept", "validate checks the recipe, not the files it names (data "
                                                "files neither); `run` refuses the missing folder in one line "
                                                "before anything trains (see 'model folder without weights')"),
    ("task.text", "None"): ("accept", "null is the same as leaving the key out: the default text column "
                                      "('text', or 'sentence' as in this data) is used"),
}

BAD_STAGES: list[tuple[str, list[dict]]] = [
    ("no stages", []),
    ("prune only (random head)", [{"kind": "prune", "method": "magnitude", "sparsity": 0.5}]),
    ("quantize before export", [{"kind": "finetune"}, {"kind": "quantize", "method": "dynamic_int8"},
                                {"kind": "export"}]),
    ("quantize twice on torch", [{"kind": "finetune"}, {"kind": "quantize", "method": "dynamic_int8"},
                                 {"kind": "quantize", "method": "dynamic_int8"}]),
    ("static int8 on torch", [{"kind": "finetune"}, {"kind": "quantize", "method": "static_int8"}]),
    ("weight_only on torch", [{"kind": "finetune"}, {"kind": "quantize", "method": "weight_only"}]),
    ("bf16 on onnx", [{"kind": "finetune"}, {"kind": "export"}, {"kind": "quantize", "method": "bf16"}]),
    ("finetune after export", [{"kind": "finetune"}, {"kind": "export"}, {"kind": "finetune"}]),
    ("drop_layers keep out of range", [{"kind": "finetune"}, {"kind": "drop_layers", "keep": [0, 9]}]),
    ("drop_layers more layers than there are", [{"kind": "finetune"},
                                                {"kind": "drop_layers", "strategy": "top", "layers": 5}]),
    ("drop_layers keep empty", [{"kind": "finetune"}, {"kind": "drop_layers", "keep": []}]),
    ("drop_layers keep negative", [{"kind": "finetune"}, {"kind": "drop_layers", "keep": [-1]}]),
    ("drop_layers keep twice", [{"kind": "finetune"}, {"kind": "drop_layers", "keep": [0, 0]}]),
    ("drop_layers two ways", [{"kind": "finetune"},
                              {"kind": "drop_layers", "keep": [0], "strategy": "top", "layers": 1}]),
    ("drop_layers after drop_layers out of range", [
        {"kind": "finetune"}, {"kind": "drop_layers", "keep": [0]}, {"kind": "drop_layers", "keep": [1]}]),
    ("prune sparsity 1.5", [{"kind": "finetune"}, {"kind": "prune", "method": "magnitude", "sparsity": 1.5}]),
    ("prune unknown method", [{"kind": "finetune"}, {"kind": "prune", "method": "random", "sparsity": 0.5}]),
    ("gradual pruning with no training after", [{"kind": "finetune"},
                                                {"kind": "prune", "method": "magnitude", "sparsity": 0.5,
                                                 "schedule": "gradual"}]),
    ("distill from a later stage", [{"kind": "distill", "teacher": "big"}, {"kind": "finetune", "name": "big"}]),
    ("distill from nothing", [{"kind": "finetune"}, {"kind": "distill", "teacher": "nope"}]),
    ("lora r 0", [{"kind": "finetune", "method": "lora", "lora": {"r": 0}}]),
    ("lora settings on full", [{"kind": "finetune", "lora": {"r": 4}}]),
    ("qat with lora", [{"kind": "finetune", "method": "lora", "qat": True}]),
    ("adalora target above init", [{"kind": "finetune", "method": "adalora",
                                    "adalora": {"init_r": 4, "target_r": 8}}]),
    ("multitask with no tasks", [{"kind": "multitask", "tasks": {}}]),
    ("multitask task name with a path", [{"kind": "multitask", "tasks": {"../up": {
        "task": {"kind": "sequence_classification"}, "data": {"train": {"path": "x.tsv"}}}}}]),
    ("quantize static settings on dynamic", [{"kind": "finetune"},
                                             {"kind": "quantize", "method": "dynamic_int8",
                                              "calibration": "entropy"}]),
    ("unknown stage kind", [{"kind": "compress"}]),
    ("stage without kind", [{"epochs": 1}]),
]


def cli_cases() -> list[Case]:
    c: list[Case] = []

    def add(kind: str, group: str, argv: Callable[[Ctx], list[str]], **kw: Any) -> None:
        c.append(Case(kind, group, argv, **kw))

    # --- the recipe file itself
    add("recipe file missing", "recipe", lambda x: ["validate", str(x.d / "none.yaml")])
    add("recipe is a folder", "recipe", lambda x: ["validate", str(x.d)])
    add("recipe is empty", "recipe", lambda x: ["validate", x.write("r.yaml", "")])
    add("recipe is binary", "recipe", lambda x: ["validate", x.write("r.yaml", os.urandom(256))])
    add("recipe not UTF-8", "recipe", lambda x: ["validate", x.write("r.yaml", b"model: caf\xe9\n")])
    add("recipe with a tab indent", "recipe", lambda x: ["validate", x.write("r.yaml", "task:\n\tkind: x\n")])
    add("recipe unclosed bracket", "recipe", lambda x: ["validate", x.write("r.yaml", "stages: [\n")])
    add("recipe is a list", "recipe", lambda x: ["validate", x.write("r.yaml", "- a\n- b\n")])
    add("recipe is a number", "recipe", lambda x: ["validate", x.write("r.yaml", "42\n")])
    add("recipe is null", "recipe", lambda x: ["validate", x.write("r.yaml", "null\n")])
    add("YAML alias bomb (1 KB -> 10^9)", "recipe", lambda x: ["validate", x.write("r.yaml", alias_bomb())])
    add("recursive YAML alias", "recipe", lambda x: ["validate", x.write("r.yaml", "a: &a [*a]\ntask: {kind: x}\n")])
    add("YAML nested 5000 deep", "recipe", lambda x: ["validate", x.write("r.yaml", "a: " + "[" * 5000 + "]" * 5000)])
    add("YAML python object tag", "recipe",
        lambda x: ["validate", x.write("r.yaml", "model: !!python/object/apply:os.system ['true']\n")])
    add("duplicate top-level key", "recipe", lambda x: ["validate", x.write("r.yaml", "seed: 1\nseed: [\n")])
    add("unset ${VAR} without default", "recipe",
        lambda x: ["validate", x.recipe_with(set_value("model", "${LEPTON_KIT_UNSET_VAR}"))])
    add("recipe missing task", "recipe", lambda x: ["validate", x.recipe_with(delete("task"))])
    add("recipe missing data", "recipe", lambda x: ["validate", x.recipe_with(delete("data"))])
    add("recipe missing dev split", "recipe", lambda x: ["validate", x.recipe_with(delete("data.dev"))])
    for path, value in BAD_VALUES:
        expect, why = ACCEPTED_VALUES.get((path, repr(value)), ("error", ""))
        add(f"{path}: {value!r}"[:70], "recipe values",
            lambda x, p=path, v=value: ["validate", x.recipe_with(set_value(p, v))],
            expect=expect, why=why)
    for what, stages in BAD_STAGES:
        add(what, "stage orders and settings", lambda x, s=stages: ["validate", x.recipe_with(set_value("stages", s))])

    # --- --set overrides
    for what, override in [("no =", "stages.0.epochs"), ("empty key", "=1"), ("empty part", "stages..epochs=1"),
                           ("index out of range", "stages.7.epochs=1"),
                           ("word index on a list", "stages.first.epochs=1"),
                           ("key below a value", "seed.x=1"), ("bad YAML value", "stages.0.epochs=[1"),
                           ("deep YAML value", "x=" + "[" * 3000 + "]" * 3000),
                           ("negative index out", "stages.-9.lr=1"),
                           ("alias bomb value", "x=" + "&a [1,1,1,1,1,1,1,1,1,1]"), ("unknown key", "modle=x"),
                           ("stage name path", "stages.0.name=../../victim")]:
        add(f"--set {what}", "overrides", lambda x, o=override: ["validate", x.recipe, "--set", o])

    # --- the output folder
    add("-o a folder that is not a run", "output", lambda x: ["run", x.recipe, "-o", str(x.fix / "victim")],
        protect=lambda x: [x.fix / "victim"])
    add("--force on a folder that is not a run", "output",
        lambda x: ["run", x.recipe, "-o", str(x.fix / "victim"), "--force"], protect=lambda x: [x.fix / "victim"])
    add("--resume on a folder that is not a run", "output",
        lambda x: ["run", x.recipe, "-o", str(x.fix / "victim"), "--resume"], protect=lambda x: [x.fix / "victim"])
    add("-o ''", "output", lambda x: ["run", x.recipe, "-o", ""])
    add("-o whitespace", "output", lambda x: ["run", x.recipe, "-o", "   "])
    add("output.dir ''", "output", lambda x: ["run", x.recipe, "--set", "output.dir="])
    add("-o an existing file", "output", lambda x: ["run", x.recipe, "-o", x.write("f.txt", "keep")],
        protect=lambda x: [x.d / "f.txt"])
    add("-o below a file", "output", lambda x: ["run", x.recipe, "-o", x.write("g.txt", "keep") + "/sub"],
        protect=lambda x: [x.d / "g.txt"])
    add("-o /dev/null", "output", lambda x: ["run", x.recipe, "-o", "/dev/null"])
    add("-o inside /proc", "output", lambda x: ["run", x.recipe, "-o", "/proc/lepton-kit-run"])
    add("-o a finished run without --force", "output",
        lambda x: ["run", x.recipe, "-o", str(x.copy_run())], protect=lambda x: [x.d / "finished"])
    add("--resume a finished run", "output",
        lambda x: ["run", x.recipe, "-o", str(x.copy_run()), "--resume"], protect=lambda x: [x.d / "finished"])
    add("-o an interrupted run without --resume", "output",
        lambda x: ["run", x.recipe, "-o", str(x.copy_run("interrupted"))], protect=lambda x: [x.d / "interrupted"])
    add("--resume with a changed recipe", "output",
        lambda x: ["run", x.recipe, "-o", str(x.copy_run("interrupted")), "--resume", "--set", "stages.0.lr=0.5"],
        protect=lambda x: [x.d / "interrupted"])

    # --- damaged checkpoints on --resume
    for damage in ("truncated weights", "garbage state.json", "binary pointer", "pointer leaving the folder",
                   "garbage trainer.pt", "deleted state.json", "binary recipe marker"):
        add(f"--resume, {damage}", "resume", lambda x, dmg=damage: resume_damaged(x, dmg),
            protect=lambda x: [x.d / "interrupted"])

    # --- data
    for what, text in [("empty", ""), ("header only", "sentence\tlabel\n"), ("binary", os.urandom(300)),
                       ("not UTF-8", b"sentence\tlabel\ncaf\xe9 good\t1\n"), ("wrong columns", "text\ty\na\t1\n"),
                       ("label outside the set", None), ("row with too few fields", "sentence\tlabel\njust text\n"),
                       ("one class only", "sentence\tlabel\n" + "".join(f"film {i}\t1\n" for i in range(12)))]:
        expect, why = ("accept", "one-class training data is legal (a warning says the model can only learn "
                       "that class); the run trains and ships") if what == "one class only" else ("error", "")
        add(f"train data: {what}", "data", lambda x, t=text, w=what: data_case(x, t, w), expect=expect, why=why)
    add("train data path is a folder", "data", lambda x: ["run", x.recipe_with(set_value("data.train.path", str(x.d))),
                                                          "-o", str(x.d / "o")])
    add("train data missing", "data", lambda x: ["run", x.recipe_with(set_value("data.train.path", "/no/such.tsv")),
                                                 "-o", str(x.d / "o")])
    add("dev data 0 labelled rows", "data", lambda x: ["run", x.recipe_with(set_value("data.dev.path", x.write(
        "dev.tsv", "sentence\tlabel\n"))), "-o", str(x.d / "o")])
    add("model folder without weights", "model", lambda x: ["run", x.recipe_with(set_value("model", str(x.d))),
                                                            "-o", str(x.d / "o")])
    add("model is a file", "model", lambda x: ["run", x.recipe_with(set_value("model", x.write("m.bin", "x"))),
                                               "-o", str(x.d / "o")])
    add("model config.json garbage", "model", lambda x: ["run", x.recipe_with(set_value("model", bad_model(x))),
                                                         "-o", str(x.d / "o")])
    add("model hub id (offline)", "model", lambda x: ["run", x.recipe_with(set_value("model", "nobody/nothing-here")),
                                                      "-o", str(x.d / "o")])
    add("trust_remote_code: true", "model",
        lambda x: ["validate", x.recipe_with(set_value("trust_remote_code", True))], expect="accept",
        why="the user asked for it in the recipe; validate passes and run logs a warning that code from the "
            "model folder will run")

    # --- saved models: evaluate / info / compare / serve / sign
    for what in ("missing folder", "not a Lepton folder", "flipped weight", "deleted entry + flipped weight",
                 "deleted entry, manifest re-digested", "manifest not JSON", "manifest is a list",
                 "manifest schema 99", "unlisted added_tokens.json", "deleted tokenizer.json", "md5 entry",
                 "entry path ../x", "swapped labels", "manifest not UTF-8", "weights file truncated + re-digested",
                 "head file path escapes"):
        for command in ("info", "evaluate"):
            expect, why = "error", ""
            if command == "info" and what == "weights file truncated + re-digested":
                expect, why = "accept", (
                    "a manifest rewritten consistently by someone who can edit the folder is, by design, "
                    "undetectable without a key: info checks manifest and checksums and does not load "
                    "weights (evaluate refuses the truncated file; with --require-signature info refuses "
                    "it too, see 'info on a tampered signed model')")
            add(f"{command}: {what}", "saved model", lambda x, w=what, cmd=command: [cmd, damaged_model(x, w)]
                + (["--batch-sizes", "1"] if cmd == "evaluate" else []), expect=expect, why=why)
    for what, args in [("--batch-sizes 0", ["--batch-sizes", "0"]), ("--batch-sizes=-1", ["--batch-sizes=-1"]),
                       ("--batch-sizes a", ["--batch-sizes", "a"]), ("--batch-sizes ''", ["--batch-sizes", ""]),
                       ("--limit 0", ["--limit", "0"]), ("--limit=-5", ["--limit=-5"]), ("--limit x", ["--limit", "x"]),
                       ("--data missing", ["--data", "/no/such.tsv"]), ("--data empty", None),
                       ("--format wrong for the file", ["--data", "DEV", "--format", "conll"]),
                       ("--text unknown column", ["--data", "DEV", "--text", "nope"]),
                       ("--label unknown column", ["--data", "DEV", "--label", "nope"]),
                       ("--task unknown", ["--task", "nope"]), ("--format unknown", ["--format", "xlsx"]),
                       ("--require-signature missing key", ["--require-signature", "/no/key.pub"]),
                       ("--require-signature on an unsigned model", ["--require-signature", "KEY"]),
                       ("--require-signature with a private key", ["--require-signature", "PRIV"])]:
        add(f"evaluate {what}", "evaluate", lambda x, a=args: ["evaluate", x.model, "--batch-sizes", "1"] + fill(x, a))
    add("evaluate a model signed by another key", "evaluate",
        lambda x: ["evaluate", str(x.fix / "signed"), "--require-signature", str(x.fix / "other-key.pub")])
    for what, args in [("--max-drop accuracy=lots", ["--max-drop", "accuracy=lots"]),
                       ("--max-drop accuracy", ["--max-drop", "accuracy"]), ("--max-drop =1", ["--max-drop", "=1"]),
                       ("--max-drop accuracy=-1", ["--max-drop", "accuracy=-1"]),
                       ("--max-drop accuracy=nan", ["--max-drop", "accuracy=nan"]),
                       ("--max-drop unknown metric", ["--max-drop", "acuracy=1"]),
                       ("--min-speedup -1", ["--min-speedup", "-1"]), ("--min-speedup 0", ["--min-speedup", "0"]),
                       ("--min-speedup inf", ["--min-speedup", "inf"]), ("--min-speedup x", ["--min-speedup", "x"]),
                       ("--limit 0", ["--limit", "0"])]:
        add(f"compare {what}", "compare", lambda x, a=args: ["compare", x.model, x.model] + a)
    add("compare a missing second model", "compare", lambda x: ["compare", x.model, "/no/model"])
    add("compare a damaged second model", "compare", lambda x: ["compare", x.model, damaged_model(x, "flipped weight")])
    for what, args in [("--port -1", ["--port", "-1"]), ("--port 70000", ["--port", "70000"]),
                       ("--workers 0", ["--workers", "0"]), ("--max-batch 0", ["--max-batch", "0"]),
                       ("--max-queue 0", ["--max-queue", "0"]), ("--max-inputs 0", ["--max-inputs", "0"]),
                       ("--max-chars 0", ["--max-chars", "0"]), ("--max-body-bytes 0", ["--max-body-bytes", "0"]),
                       ("--max-wait-ms -1", ["--max-wait-ms", "-1"]), ("--drain-timeout -1", ["--drain-timeout", "-1"]),
                       ("--header-timeout 0", ["--header-timeout", "0"]), ("--body-timeout 0", ["--body-timeout", "0"]),
                       ("--host not an address", ["--host", "999.1.1.1"]), ("busy port", ["--port", "BUSY"]),
                       ("--require-signature unsigned", ["--require-signature", "KEY"])]:
        add(f"serve {what}", "serve", lambda x, a=args: ["serve", x.model, "--port", "0"] + fill(x, a))
    add("serve a damaged model", "serve", lambda x: ["serve", damaged_model(x, "flipped weight"), "--port", "0"])
    add("serve a missing model", "serve", lambda x: ["serve", "/no/model", "--port", "0"])
    add("keygen over an existing key", "keys", lambda x: ["keygen", str(x.fix / "key")],
        protect=lambda x: [x.fix / "key"])
    add("keygen into a missing folder", "keys", lambda x: ["keygen", str(x.d / "no" / "k")])
    add("keygen into /proc", "keys", lambda x: ["keygen", "/proc/lepton-kit-key"])
    add("sign with a public key", "keys", lambda x: ["sign", str(x.copy_model()), "--key", str(x.fix / "key.pub")])
    add("sign with a missing key", "keys", lambda x: ["sign", str(x.copy_model()), "--key", "/no/key"])
    add("sign with a garbage key", "keys", lambda x: ["sign", str(x.copy_model()), "--key", x.write("k", "garbage")])
    add("sign a damaged model", "keys",
        lambda x: ["sign", damaged_model(x, "flipped weight"), "--key", str(x.fix / "key")])
    add("sign a folder that is not a model", "keys", lambda x: ["sign", str(x.d), "--key", str(x.fix / "key")])
    add("info on a tampered signed model", "keys", lambda x: ["info", signed_tampered(x), "--require-signature",
                                                              str(x.fix / "key.pub")])
    add("unknown command", "usage", lambda x: ["frobnicate"])
    add("run without a recipe", "usage", lambda x: ["run"])
    add("--nproc 0", "usage", lambda x: ["run", x.recipe, "--nproc", "0"])
    add("--nproc -3", "usage", lambda x: ["run", x.recipe, "--nproc", "-3"])

    # --- real processes and real file systems
    add("SIGINT during a run", "signals", lambda x: ["run", x.recipe, "-o", str(x.d / "o")],
        special="subprocess-sigint")
    add("disk full during a --force run (tmpfs)", "file system",
        lambda x: ["run", x.recipe], special="tmpfs-full")
    add("read-only file system (tmpfs ro)", "file system", lambda x: ["run", x.recipe], special="tmpfs-ro")
    return c


def alias_bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\ntask: {kind: sequence_classification}\n"


def fill(x: Ctx, args: list[str] | None) -> list[str]:
    if args is None:  # --data pointing at an empty file
        return ["--data", x.write("empty.tsv", "")]
    out = []
    for a in args:
        if a == "DEV":
            a = str(x.fix / "dev.tsv")
        elif a == "KEY":
            a = str(x.fix / "key.pub")
        elif a == "PRIV":
            a = str(x.fix / "key")
        elif a == "BUSY":
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            x.__dict__.setdefault("_keep", []).append(sock)  # held until the case ends
            a = str(sock.getsockname()[1])
        out.append(a)
    return out


def data_case(x: Ctx, text: str | bytes | None, what: str) -> list[str]:
    if text is None:
        text = "sentence\tlabel\na good film\t1\na bad film\t7\n"
    train = x.write("train.tsv", text)
    return ["run", x.recipe_with(set_value("data.train.path", train)), "-o", str(x.d / "o"), "--no-progress"]


def bad_model(x: Ctx) -> str:
    folder = Path(shutil.copytree(x.fix / "tiny-bert", x.d / "m"))
    (folder / "config.json").write_text("{ not json")
    return str(folder)


def _edit_manifest(folder: Path, change: Callable[[dict], Any], redigest: bool) -> None:
    from lepton.pipeline.artifact import DIGEST_KEY, manifest_digest

    manifest = json.loads((folder / "lepton.json").read_text())
    change(manifest)
    if redigest:
        manifest[DIGEST_KEY] = manifest_digest(manifest)
    (folder / "lepton.json").write_text(json.dumps(manifest))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def damaged_model(x: Ctx, what: str) -> str:
    if what == "missing folder":
        return str(x.d / "absent")
    if what == "not a Lepton folder":
        return str(x.fix / "tiny-bert")
    m = x.copy_model() if not (x.d / "model").exists() else x.d / "model"
    if what == "flipped weight":
        _flip(m / "model.safetensors")
    elif what == "deleted entry + flipped weight":
        _edit_manifest(m, lambda d: d["files"].pop("model.safetensors"), redigest=False)
        _flip(m / "model.safetensors")
    elif what == "deleted entry, manifest re-digested":
        _edit_manifest(m, lambda d: d["files"].pop("model.safetensors"), redigest=True)
        _flip(m / "model.safetensors")
    elif what == "manifest not JSON":
        (m / "lepton.json").write_text("{ nope")
    elif what == "manifest is a list":
        (m / "lepton.json").write_text("[1, 2]")
    elif what == "manifest schema 99":
        _edit_manifest(m, lambda d: d.update(schema_version=99), redigest=True)
    elif what == "unlisted added_tokens.json":
        (m / "added_tokens.json").write_text('{"evil": 30000}')
    elif what == "deleted tokenizer.json":
        (m / "tokenizer.json").unlink()
    elif what == "md5 entry":
        _edit_manifest(m, lambda d: d["files"].update({"config.json": {"md5": "0" * 32}}), redigest=True)
    elif what == "entry path ../x":
        _edit_manifest(m, lambda d: d["files"].update({"../x": {"sha256": "0" * 64}}), redigest=True)
    elif what == "swapped labels":
        _edit_manifest(m, lambda d: d["task"].update(labels=list(reversed(d["task"]["labels"]))), redigest=False)
    elif what == "manifest not UTF-8":
        (m / "lepton.json").write_bytes(b"\xff\xfe{}")
    elif what == "weights file truncated + re-digested":
        data = (m / "model.safetensors").read_bytes()
        (m / "model.safetensors").write_bytes(data[:100])
        digest = hashlib.sha256(data[:100]).hexdigest()
        _edit_manifest(m, lambda d: d["files"].update({"model.safetensors": {"sha256": digest}}), redigest=True)
    elif what == "head file path escapes":
        _edit_manifest(m, lambda d: d.update(heads={"x": {"task": d["task"], "file": "../../etc/passwd"}}),
                       redigest=True)
    return str(m)


def signed_tampered(x: Ctx) -> str:
    m = Path(shutil.copytree(x.fix / "signed", x.d / "signed"))
    _flip(m / "model.safetensors")
    digest = hashlib.sha256((m / "model.safetensors").read_bytes()).hexdigest()
    _edit_manifest(m, lambda d: d["files"].update({"model.safetensors": {"sha256": digest}}), redigest=True)
    return str(m)


def resume_damaged(x: Ctx, damage: str) -> list[str]:
    run = x.copy_run("interrupted")
    stage = run / "work" / "stage-0-finetune"
    ckpt = stage / (stage / "latest").read_text().strip()
    if damage == "truncated weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "garbage state.json":
        (ckpt / "state.json").write_bytes(b"\xff\xfe garbage")
    elif damage == "binary pointer":
        (stage / "latest").write_bytes(b"\xff\x00\x9c")
    elif damage == "pointer leaving the folder":
        (stage / "latest").write_text("../../../../etc")
    elif damage == "garbage trainer.pt":
        (ckpt / "trainer.pt").write_bytes(b"not a torch file")
    elif damage == "deleted state.json":
        (ckpt / "state.json").unlink()
    elif damage == "binary recipe marker":
        (run / "work" / "recipe.json").write_bytes(b"\xff\xfe\x00garbage")
    # The same recipe as the interrupted run (it checkpointed every step), so resume gets that far.
    return ["run", x.recipe, "-o", str(run), "--resume", "--no-progress", "--set", "stages.0.checkpoint_every=1"]


# ============================================================================ running CLI cases


def classify_cli(code: Any, err: str, raised: str | None) -> tuple[str, str]:
    """(outcome, what it said) for one in-process CLI call."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if raised is not None or "Traceback" in err:
        return "traceback", (raised or err).strip().splitlines()[-1][:200]
    if code == 0:
        return "accepted", (lines[-1] if lines else "")[:200]
    errors = [ln for ln in lines if ln.startswith("lepton: error:")]
    usage = code == 2 and any(ln.startswith("usage:") for ln in lines) and ": error:" in lines[-1]
    if code == 2 and (len(errors) == 1 and lines[-1] == errors[0] or usage):
        return "clean", lines[-1][:300]
    if code == 130 and lines and lines[-1].startswith("lepton: interrupted"):
        return "clean", lines[-1]
    return "traceback", f"exit {code}: " + " | ".join(lines[-3:])[:300]


def run_inprocess(argv: list[str]) -> tuple[str, str]:
    import logging

    from lepton.cli import main

    out, err = io.StringIO(), io.StringIO()
    logging.root.handlers.clear()  # main() configures logging again, onto this case's stderr
    raised = None
    code: Any = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # noqa: BLE001 - what escaped main() is what this kit counts
            raised = traceback.format_exc()
    return classify_cli(code, err.getvalue(), raised)


def run_subprocess_sigint(argv: list[str]) -> tuple[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lepton", *argv, "--no-progress",
                             "--set", "stages.0.epochs=400"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env=env, text=True)
    time.sleep(12)  # into training
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "hang", "did not stop within 60 s of SIGINT"
    return classify_cli(proc.returncode, err, None)


def run_tmpfs(case: Case, x: Ctx) -> tuple[str, str] | None:
    """A previous run on a small tmpfs, then a --force run there that the disk cannot hold
    (full), or a file system remounted read-only. None when tmpfs cannot be mounted here."""
    mnt = x.d / "mnt"
    mnt.mkdir()
    size = sum(p.stat().st_size for p in (x.fix / "finished").rglob("*") if p.is_file())
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + 200_000}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        return None
    try:
        run = Path(shutil.copytree(x.fix / "finished", mnt / "run"))
        before = digest_tree(run / "model")
        if case.special == "tmpfs-ro":
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        outcome = run_inprocess(["run", x.recipe, "-o", str(run), "--force", "--no-progress"])
        if digest_tree(run / "model") != before:
            return "data lost", f"the previous model changed ({outcome[1]})"
        return outcome
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def selected_cases(surface: str) -> list[tuple[str, Case]]:
    """(surface, case) for the chosen surface: "core" (this file's), one kit module's, or "all"."""
    out = [("core", c) for c in cli_cases()] if surface in ("all", "core") else []
    for module in surface_modules(surface):
        out += [(module.__name__.removeprefix("kit_"), c) for c in module.cases()]
    return out


def worker(fix: Path, scratch: Path, start: int) -> None:
    """Run CLI cases from ``start``; one JSON line per event on stdout."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    surface = os.environ.get("LEPTON_KIT_SURFACE", "all")
    cases = selected_cases(surface)
    modules = {m.__name__.removeprefix("kit_"): m for m in surface_modules(surface)}
    shared = [fix / "finished", fix / "interrupted", fix / "victim", fix / "signed", fix / "key",
              fix / "train.tsv", fix / "dev.tsv", fix / "recipe.yaml", fix / "tiny-bert"]
    shared += [fix / rel for m in modules.values() for rel in getattr(m, "SHARED", [])]
    report = sys.__stdout__
    for i in range(start, len(cases)):
        where, case = cases[i]
        print(json.dumps({"start": i}), file=report, flush=True)
        x = Ctx(fix=fix, d=scratch / f"case-{i:03d}")
        x.d.mkdir(parents=True, exist_ok=True)
        cwd = os.getcwd()
        os.chdir(x.d)  # a case that writes into "the current folder" writes here, where it is seen
        try:
            before = {str(p): digest_tree(p) for p in shared}
            argv = case.argv(x)
            extra = {str(p): digest_tree(p) for p in case.protect(x) if p.exists()}
            if case.special == "subprocess-sigint":
                outcome = run_subprocess_sigint(argv)
            elif case.special.startswith("tmpfs"):
                outcome = run_tmpfs(case, x) or ("skipped", "tmpfs cannot be mounted here (not root?)")
            elif case.special:
                outcome = modules[where].run_special(case, x) or ("skipped", f"{case.special}: not possible here")
            else:
                outcome = run_inprocess(argv)
            after = {str(p): digest_tree(p) for p in shared}
            changed = [k for k in before if before[k] != after[k]]
            changed += [k for k, v in extra.items() if digest_tree(Path(k)) != v]
            if changed:
                outcome = ("data lost", f"changed: {', '.join(changed)} ({outcome[1]})")
        except BaseException:  # noqa: BLE001 - a broken case set-up is a traceback too
            outcome = ("traceback", "kit set-up: " + traceback.format_exc().strip().splitlines()[-1])
        finally:
            os.chdir(cwd)
            for sock in x.__dict__.get("_keep", []):
                sock.close()
        print(json.dumps({"done": i, "outcome": outcome[0], "said": outcome[1]}), file=report, flush=True)


def run_cli(fix: Path, scratch: Path, timeout: float, surface: str = "all") -> list[dict[str, Any]]:
    cases = [c for _, c in selected_cases(surface)]
    where = [w for w, _ in selected_cases(surface)]
    results: dict[int, dict[str, Any]] = {}
    start = 0
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", LEPTON_KIT_SURFACE=surface)
    while start < len(cases):
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(fix), str(scratch), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, deadline = start, time.monotonic() + timeout
        while True:
            if not sel.select(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() < deadline:
                    continue
                proc.kill()
                proc.wait()
                results[current] = {"outcome": "hang", "said": f"no answer within {timeout:.0f} s"}
                start = current + 1
                break
            line = proc.stdout.readline()
            if not line:  # the worker died (a crash outside any case's handling)
                proc.wait()
                if current not in results:
                    results[current] = {"outcome": "traceback", "said": f"worker died (exit {proc.returncode})"}
                start = current + 1
                break
            event = json.loads(line)
            if "start" in event:
                current, deadline = event["start"], time.monotonic() + timeout
                print(f"  cli {current + 1:3d}/{len(cases)} {cases[current].kind}", file=sys.stderr, flush=True)
            else:
                results[event["done"]] = {"outcome": event["outcome"], "said": event["said"]}
                if event["done"] == len(cases) - 1:
                    proc.wait()
                    start = len(cases)
                    break
    return [{"surface": where[i], "kind": c.kind, "group": c.group, "expect": c.expect, "why": c.why, **results[i]}
            for i, c in enumerate(cases)]


# ============================================================================ server cases


def server_cases() -> list[tuple[str, Any]]:
    """(kind, request): a request is (method, path, headers, body) for httpx, or ("raw", bytes,
    expect) for a raw socket where expect is "close" (a stall the server must cut off)."""
    j = {"Content-Type": "application/json"}
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    long_int = b'{"inputs": [' + b"1" * 5000 + b"]}"
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return [
        ("GET /v1/predict", ("GET", "/v1/predict", {}, None)),
        ("PUT /v1/predict", ("PUT", "/v1/predict", j, b"{}")),
        ("DELETE /v1/predict", ("DELETE", "/v1/predict", {}, None)),
        ("PATCH /v1/predict", ("PATCH", "/v1/predict", j, b"{}")),
        ("HEAD /v1/predict", ("HEAD", "/v1/predict", {}, None)),
        ("OPTIONS /v1/predict", ("OPTIONS", "/v1/predict", {}, None)),
        ("POST /readyz", ("POST", "/readyz", j, b"{}")),
        ("POST /metrics", ("POST", "/metrics", j, b"{}")),
        ("unknown path", ("GET", "/v2/everything", {}, None)),
        ("path traversal", ("GET", "/v1/../../etc/passwd", {}, None)),
        ("docs asset traversal", ("GET", "/docs-assets/..%2f..%2f..%2fetc%2fpasswd", {}, None)),
        ("unknown task route", ("POST", "/v1/tasks/nope/predict", j, b'{"inputs": ["a"]}')),
        ("no Content-Type", ("POST", "/v1/predict", {}, b'{"inputs": ["a"]}')),
        ("text/plain", ("POST", "/v1/predict", {"Content-Type": "text/plain"}, b'{"inputs": ["a"]}')),
        ("form encoded", ("POST", "/v1/predict", {"Content-Type": "application/x-www-form-urlencoded"}, b"inputs=a")),
        ("multipart", ("POST", "/v1/predict", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--")),
        ("empty body", ("POST", "/v1/predict", j, b"")),
        ("null", ("POST", "/v1/predict", j, b"null")),
        ("a list", ("POST", "/v1/predict", j, b"[]")),
        ("a string", ("POST", "/v1/predict", j, b'"text"')),
        ("a number", ("POST", "/v1/predict", j, b"123")),
        ("empty object", ("POST", "/v1/predict", j, b"{}")),
        ("inputs empty", ("POST", "/v1/predict", j, b'{"inputs": []}')),
        ("inputs null", ("POST", "/v1/predict", j, b'{"inputs": null}')),
        ("inputs a string", ("POST", "/v1/predict", j, b'{"inputs": "text"}')),
        ("inputs numbers", ("POST", "/v1/predict", j, b'{"inputs": [1, 2]}')),
        ("inputs nulls", ("POST", "/v1/predict", j, b'{"inputs": [null]}')),
        ("pairs to a single-text model", ("POST", "/v1/predict", j, b'{"inputs": [["a", "b"]]}')),
        ("objects as inputs", ("POST", "/v1/predict", j, b'{"inputs": [{"text": "a"}]}')),
        ("too many inputs", ("POST", "/v1/predict", j, json.dumps({"inputs": ["a"] * 9}).encode())),
        ("text too long", ("POST", "/v1/predict", j, json.dumps({"inputs": ["a" * 201]}).encode())),
        ("extra field", ("POST", "/v1/predict", j, b'{"inputs": ["a"], "x": 1}')),
        ("body over the limit (Content-Length)", ("POST", "/v1/predict", j, b'{"inputs": ["' + b"a" * 5000 + b'"]}')),
        ("body over the limit (chunked)", ("POST", "/v1/predict", j, iter([b'{"inputs": ["', b"a" * 5000, b'"]}']))),
        ("invalid JSON", ("POST", "/v1/predict", j, b'{"inputs": [')),
        ("trailing garbage", ("POST", "/v1/predict", j, b'{"inputs": ["a"]} xx')),
        ("invalid UTF-8 in a text", ("POST", "/v1/predict", j, b'{"inputs": ["caf\xe9"]}')),
        ("invalid UTF-8 in a key", ("POST", "/v1/predict", j, b'{"inp\xffuts": ["a"]}')),
        ("UTF-16 body", ("POST", "/v1/predict", j, '{"inputs": ["a"]}'.encode("utf-16"))),
        ("UTF-8 BOM", ("POST", "/v1/predict", j, b'\xef\xbb\xbf{"inputs": ["a"]}')),
        ("latin-1 declared charset", ("POST", "/v1/predict", {"Content-Type": "application/json; charset=latin-1"},
                                      b'{"inputs": ["caf\xe9"]}')),
        ("JSON nested 100k deep", ("POST", "/v1/predict", j, deep)),
        ("JSON nested 50 deep", ("POST", "/v1/predict", j, b'{"inputs": ' + b"[" * 50 + b"]" * 50 + b"}")),
        ("NaN", ("POST", "/v1/predict", j, b'{"inputs": [NaN]}')),
        ("1e999999", ("POST", "/v1/predict", j, b'{"inputs": [1e999999]}')),
        ("5000-digit integer", ("POST", "/v1/predict", j, long_int)),
        ("lone surrogate escape", ("POST", "/v1/predict", j, b'{"inputs": ["\\ud800"]}')),
        ("duplicate keys", ("POST", "/v1/predict", j, b'{"inputs": ["a"], "inputs": [1]}')),
        ("Content-Length not a number", ("raw", head + b"Content-Length: abc\r\n\r\n{}", "status")),
        ("Content-Length and chunked",
         ("raw", head + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "status")),
        ("bad chunk size", ("raw", head + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nab\r\n0\r\n\r\n", "status")),
        ("garbage request line", ("raw", b"HELLO THERE\r\n\r\n", "status")),
        ("HTTP/9.9", ("raw", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", "status")),
        ("header line without colon", ("raw", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", "status")),
        ("100 KB header",
         ("raw", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", "status")),
        ("NUL in the path", ("raw", b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n", "status")),
        ("headers that never end", ("raw", head, "close")),
        ("connect and send nothing", ("raw", b"", "close")),
        ("body shorter than Content-Length", ("raw", head + b"Content-Length: 100\r\n\r\n{\"inputs\": ", "close")),
        ("Expect: 100-continue over the limit",
         ("raw", head + b"Content-Length: 999999\r\nExpect: 100-continue\r\n\r\n", "status")),
        ("empty text", ("POST", "/v1/predict", j, b'{"inputs": [""]}')),
        ("whitespace-only text", ("POST", "/v1/predict", j, b'{"inputs": ["   \\t  "]}')),
        ("control characters", ("POST", "/v1/predict", j, b'{"inputs": ["\\u0000\\u0007\\u001b[31m"]}')),
    ]


SERVER_ACCEPTED = {
    "empty text": "an empty string is a valid text (the tokenizer gives [CLS] [SEP]); it gets a prediction",
    "whitespace-only text": "as an empty text after tokenization; a valid input",
    "control characters": "valid JSON strings; the tokenizer drops control characters; a prediction comes back",
}


def run_server(fix: Path, scratch: Path) -> list[dict[str, Any]]:
    import httpx

    port = _free_port()
    log_path = scratch / "server.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lepton", "serve", str(fix / "finished" / "model"),
                                 "--port", str(port), "--max-inputs", "8", "--max-chars", "200",
                                 "--max-body-bytes", "4096", "--header-timeout", "2", "--body-timeout", "2",
                                 "--model-batch", "4"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    results = []
    try:
        for kind, req in server_cases():
            outcome, said = _server_case(url, port, req)
            results.append({"surface": "core", "kind": kind, "group": "server",
                            "expect": "accept" if kind in SERVER_ACCEPTED else "error",
                            "why": SERVER_ACCEPTED.get(kind, ""), "outcome": outcome, "said": said})
            print(f"  server {len(results):3d} {kind}: {outcome}", file=sys.stderr, flush=True)
        alive = httpx.get(url + "/healthz", timeout=5).status_code == 200
        good = httpx.post(url + "/v1/predict", json={"inputs": ["a good film"]}, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    log_text = log_path.read_text(errors="replace")
    results.append({"surface": "core", "kind": "server still healthy and exits 0 after all of the above",
                    "group": "check",
                    "expect": "accept", "why": "a check after the bad inputs, not a bad input itself",
                    "outcome": "accepted" if alive and good and code == 0 and "Traceback" not in log_text
                    else "traceback", "said": f"healthz {alive}, predict {good}, exit {code}, "
                                              f"tracebacks in log: {log_text.count('Traceback')}"})
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_case(url: str, port: int, req: tuple) -> tuple[str, str]:
    import httpx

    if req[0] == "raw":
        _, data, expect = req
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                if data:
                    sock.sendall(data)
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if expect == "status" and b"\r\n\r\n" in b"".join(chunks):
                        break
        except TimeoutError:
            return "hang", "connection kept open for 15 s"
        except ConnectionResetError:
            chunks = [b"(reset)"]
        got = b"".join(chunks)
        took = time.monotonic() - start
        status = got[9:12].decode(errors="replace") if got.startswith(b"HTTP/") else ""
        if status.startswith("5"):
            return "traceback", got.split(b"\r\n")[0].decode(errors="replace")
        if status.startswith("2"):
            return "accepted", got.split(b"\r\n")[0].decode(errors="replace")
        return "clean", f"{got.split(chr(13).encode())[0].decode(errors='replace') or 'closed'} after {took:.1f} s"
    method, path, headers, body = req
    try:
        r = httpx.request(method, url + path, headers=headers, content=body, timeout=30)
    except httpx.TimeoutException:
        return "hang", "no answer in 30 s"
    except httpx.HTTPError as err:
        return "clean", f"connection closed by the server ({type(err).__name__})"
    said = f"{r.status_code} {r.text[:160]}"
    if r.status_code >= 500:
        return "traceback", said
    if r.status_code < 400:
        return "accepted", said
    return "clean", said


# ============================================================================ report


def summarize(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Outcome counts over the bad inputs (the closing health check is listed, not counted)."""
    counts = {k: 0 for k in (*OUTCOMES, "skipped")}
    for r in rows:
        if r["group"] != "check":
            counts[r["outcome"]] += 1
    return counts


SECTION_TITLES = {"core": "The core: recipes, data, run, evaluate, serve, info", "search": "lepton search",
                  "monitor": "lepton monitor and its HTTP app", "generate": "lepton generate and the generative server",
                  "artifacts": "Signing, artifacts and paths"}


def _counts_row(title: str, rows: list[dict[str, Any]]) -> str:
    counts = summarize(rows)
    kinds = sum(1 for r in rows if r["outcome"] != "skipped" and r["group"] != "check")
    return (f"| {title} | {kinds} | {counts['clean']} | {counts['traceback']} | {counts['hang']} | "
            f"{counts['accepted']} | {counts['data lost']} | {counts['skipped']} |")


def write_report(rows: list[dict[str, Any]], seconds: float, cpu: str) -> str:
    surfaces = [s for s in ("core", *SURFACES) if any(r["surface"] == s for r in rows)]
    header = ["| surface | kinds | clean errors | tracebacks | hangs | accepted | data lost | skipped |",
              "|---|---|---|---|---|---|---|---|"]
    newer = [r for r in rows if r["surface"] != "core"]
    lines = ["# Bad inputs against the CLI and the servers", "",
             f"`python benchmarks/bad_inputs.py` on {cpu}, {seconds:.0f} s. Each case is one kind of bad input; "
             "outcomes as defined in the script's docstring (clean: one `lepton: error:` line and exit 2, or an "
             "answer of 4xx; accepted: exit 0 or 2xx, each with its reason).", "", *header]
    lines += [_counts_row(SECTION_TITLES[s], [r for r in rows if r["surface"] == s]) for s in surfaces]
    if newer:
        lines.append(_counts_row("**the newer surfaces together**", newer))
    lines.append("")
    for surface in surfaces:
        part = [r for r in rows if r["surface"] == surface]
        lines += [f"## {SECTION_TITLES[surface]}", ""]
        accepted = [r for r in part if r["outcome"] == "accepted" and r["group"] != "check"]
        if accepted:
            lines += ["Accepted, and why that is deliberate:", ""]
            lines += [f"- **{r['kind']}**: {r['why'] or 'NOT EXPLAINED: a defect'}" for r in accepted]
            lines.append("")
        lines += ["| group | kind | outcome | what it said |", "|---|---|---|---|"]
        for r in part:
            said = str(r["said"]).replace("|", "\\|").replace("\n", " ")[:220]
            lines.append(f"| {r['group']} | {r['kind'].replace('|', '/')} | {r['outcome']} | {said} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["cli", "server"])
    parser.add_argument("--surface", choices=["all", "core", *SURFACES], default="all",
                        help="run one surface's cases (the report file is written only for all of them)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds one CLI case may take")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="lepton-bad-inputs-"))
    rows: list[dict[str, Any]] = []
    try:
        fix, scratch = tmp / "fixtures", tmp / "scratch"
        fix.mkdir()
        scratch.mkdir()
        print("building fixtures ...", file=sys.stderr, flush=True)
        build_fixtures(fix)
        modules = surface_modules(args.surface)
        for module in modules:
            print(f"building fixtures for {module.__name__} ...", file=sys.stderr, flush=True)
            module.build(fix)
        if args.only != "server":
            rows += run_cli(fix, scratch, args.timeout, args.surface)
        if args.only != "cli":
            if args.surface in ("all", "core"):
                rows += run_server(fix, scratch)
            for module in modules:
                if hasattr(module, "servers"):
                    surface = module.__name__.removeprefix("kit_")
                    rows += [{"surface": surface, **r} for r in module.servers(fix, scratch)]
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    text = write_report(rows, time.monotonic() - started, f"{cpu} ({os.cpu_count()} cores)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only is None and args.surface == "all":
        (RESULTS / "bad_inputs.md").write_text(text)
    for surface in ("core", *SURFACES):
        part = [r for r in rows if r["surface"] == surface]
        if part:
            counts = summarize(part)
            unexplained = sum(1 for r in part if r["outcome"] == "accepted" and not r["why"] and r["group"] != "check")
            kinds = sum(counts[k] for k in OUTCOMES)
            print(f"{surface}: {kinds} kinds: " + ", ".join(f"{counts[k]} {k}" for k in OUTCOMES)
                  + f" ({unexplained} accepted without a reason); {counts['skipped']} skipped")
            for r in part:
                if r["group"] == "check" or r["outcome"] in ("traceback", "hang", "data lost"):
                    print(f"  {r['group']}: {r['kind']}: {r['outcome']} ({r['said']})")


if __name__ == "__main__":
    main()
