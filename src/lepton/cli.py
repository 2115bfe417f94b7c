"""``lepton`` command line: builds arguments and calls the Python API, nothing more.

Every user error prints one line and exits with 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from lepton.core import __version__
from lepton.core.errors import LeptonError

EXIT_USER_ERROR = 2

EPILOG = {
    "run": "example: lepton run examples/sst2-minilm.yaml --set data.train.limit=64 --set stages.0.epochs=1",
    "validate": "example: lepton validate examples/sst2-minilm.yaml",
    "evaluate": "example: lepton evaluate runs/sst2-minilm/model --data builtin:sst2/dev",
    "info": "example: lepton info runs/sst2-minilm/model",
    "compare": "example: lepton compare runs/sst2-minilm/model runs/sst2-minilm-drop/model "
               "--max-drop accuracy=1.0 --min-speedup 1.5",
    "serve": "example: lepton serve runs/sst2-minilm/model --port 8000 --max-batch 32 --max-wait-ms 5",
    "data": "example: lepton data   (then in a recipe: data: {train: {path: builtin:sst2/train}})",
    "keygen": "example: lepton keygen ~/.lepton/signing-key   (writes signing-key and signing-key.pub)",
    "sign": "example: lepton sign runs/sst2-minilm/model --key ~/.lepton/signing-key",
    "monitor": "example: lepton monitor runs/monitor-news/model --config examples/monitor-news-monitor.yaml "
               "--source replay:runs/monitor-news-stream/stream.jsonl --speed 600",
    "generate": "example: lepton generate builtin:smollm2-135m \"The capital of France is\" --max-new-tokens 16",
    "explain": "example: lepton explain runs/sst2-minilm/model \"a charming and affecting film\"   (--json, "
               "--method ig)",
    "drift": "example: lepton drift runs/sst2-minilm/model --data new-reviews.tsv   (--fail-on-drift for a CI gate)",
    "update": "example: lepton update runs/sst2-minilm-finetune/model --data new/train.csv --dev new/dev.csv "
              "--method replay --recipe examples/sst2-minilm.yaml -o runs/sst2-update",
    "gguf": "example: lepton gguf builtin:smollm2-135m smollm2-q8_0.gguf --type q8_0   (for llama.cpp / Ollama)",
    "search": "example: lepton search examples/sst2-minilm-search.yaml --trials 40 --max-drop accuracy=1.0 "
              "--timeout 2h   (run it again to continue; more workers: the same command in more shells)",
}
SIGNATURE_HELP = ("refuse the model unless its manifest is signed by the holder of this Ed25519 public "
                  "key (lepton keygen / lepton sign)")
EXIT_GATE_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lepton", description="Fine-tune, compress, measure and ship a Transformer.")
    p.add_argument("--version", action="version", version=f"lepton {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_validate(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_info(sub)
    _add_keygen(sub)
    _add_sign(sub)
    _add_serve(sub)
    _add_command(sub, "data", "list the data sets built into Lepton (builtin:<set>/<split> in a recipe)")
    _add_monitor(sub)
    from lepton.pipeline import generate_command

    generate_command.add_parser(_add_command(sub, "generate", "generate text with a saved generative model or "
                                                              "a model spec"))
    from lepton.pipeline import drift_command

    drift_command.add_parser(_add_command(sub, "drift", "test whether new data drifted from the data the model "
                                                        "was evaluated on; say whether an update is advised"))
    from lepton.pipeline import explain_command

    explain_command.add_parser(_add_command(sub, "explain", "classify a text with a saved model and show which "
                                                            "tokens the prediction rests on"))
    from lepton.pipeline import update_command

    update_command.add_parser(_add_command(sub, "update", "train a saved model further on new labelled data, "
                                                          "re-apply its recipe's later stages, measure gain and "
                                                          "forgetting"))
    from lepton.pipeline import gguf_command

    gguf_command.add_parser(_add_command(sub, "gguf", "write a PyTorch decoder as one GGUF file for llama.cpp "
                                                      "and Ollama"))
    _search_parser(_add_command(sub, "search", "search the recipe's searchable settings for the fastest, "
                                               "smallest model within an accuracy budget (Optuna; Pareto "
                                               "front, best model, its recipe)"))
    return p


def _add_command(sub: Any, name: str, help_: str) -> argparse.ArgumentParser:
    """A subcommand whose help and description are ``help_``, with its example as the epilog."""
    return sub.add_parser(name, help=help_, description=help_, epilog=EPILOG[name])


def _add_run(sub: Any) -> None:
    r = _add_command(sub, "run", "run a recipe: fine-tune, compress, evaluate, save")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. stages.0.epochs=1 (repeatable)")
    r.add_argument("-o", "--output", help="output folder (default: the recipe's output.dir)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in the same output folder")
    r.add_argument("--smoke", action="store_true",
                   help="a quick check that the recipe works: caps every data source at 64 examples, every "
                        "training stage at 1 epoch, and the measurements (same as --set smoke=true)")
    r.add_argument("--force", action="store_true",
                   help="replace a previous Lepton run in the output folder (a folder Lepton did not "
                        "create is never written to)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel in N local processes (DDP: gloo on CPU, nccl on GPU); "
                        "under torchrun (torchrun --nproc_per_node N -m lepton run ...) leave it out")


def _add_validate(sub: Any) -> None:
    v = _add_command(sub, "validate", "check a recipe without running it; print the resolved recipe")
    v.add_argument("recipe")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _add_evaluate(sub: Any) -> None:
    e = _add_command(sub, "evaluate", "evaluate a saved model on labelled data")
    e.add_argument("model", help="a Lepton model folder (OUT/model)")
    e.add_argument("--data", help="data file or folder (default: the model recipe's dev split)")
    e.add_argument("--format", choices=["tsv", "csv", "jsonl", "conll", "folder"])
    e.add_argument("--text", help="text column (default: as in the training recipe)")
    e.add_argument("--text-pair", help="second text column for sentence pairs")
    e.add_argument("--label", help="label column")
    e.add_argument("--limit", type=int)
    e.add_argument("--no-header", action="store_true", help="tsv/csv file without a header row")
    e.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes to time")
    e.add_argument("--task", help="a multi-task model's task to measure (default: the main one)")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)


def _add_compare(sub: Any) -> None:
    c = _add_command(sub, "compare", "measure saved models side by side (the first is the baseline); gate on "
                                     "the result")
    c.add_argument("models", nargs="+", help="Lepton model folders")
    c.add_argument("--data", help="data file or folder (default: the first model recipe's dev split)")
    c.add_argument("--limit", type=int, help="evaluate on the first N examples only")
    c.add_argument("--max-drop", action="append", default=[], metavar="METRIC=POINTS",
                   help="fail when a variant's METRIC is more than POINTS (percentage points) below "
                        "the baseline, e.g. accuracy=1.0 (repeatable)")
    c.add_argument("--min-speedup", type=float, help="fail when a variant's batch-1 speed-up is below this")
    c.add_argument("--task", help="the task of multi-task models to measure (default: the main one)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)


def _add_info(sub: Any) -> None:
    i = _add_command(sub, "info", "show a saved model's task, stages, scorecards and file checks")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)


def _add_keygen(sub: Any) -> None:
    k = _add_command(sub, "keygen", "make an Ed25519 key pair for signing models (KEY private, KEY.pub public)")
    k.add_argument("key", help="path of the private key to create (never overwritten)")


def _add_sign(sub: Any) -> None:
    g = _add_command(sub, "sign", "sign a saved model's manifest with your private key (lepton.json.sig)")
    g.add_argument("model")
    g.add_argument("--key", required=True, help="the private key from lepton keygen")


def _add_serve(sub: Any) -> None:
    s = _add_command(sub, "serve", "serve a saved model over HTTP (POST /v1/predict), batching concurrent "
                                   "requests")
    s.add_argument("model", help="a Lepton model folder (OUT/model); its checksums are verified first")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes; each loads its own copy of the model (default: %(default)s)")
    _add_serve_limits(s)
    s.add_argument("--name", help="model name in /v1/model and responses (default: the run folder's name)")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)
    s.add_argument("--admin-token", metavar="TOKEN",
                   help="turn on POST /v1/admin/swap (hot swap to an updated model), for requests with "
                        "'Authorization: Bearer TOKEN'; better from the environment: LEPTON_ADMIN_TOKEN")
    _add_serve_timeouts(s)


def _add_serve_limits(s: argparse.ArgumentParser) -> None:
    """``lepton serve``'s batching, queue and request-size options."""
    s.add_argument("--max-batch", type=int, default=32, help="most inputs per model call (default: %(default)s)")
    s.add_argument("--model-batch", type=int, default=None,
                   help="inputs per model call within a gathered batch (default: the fastest per input, "
                        "measured at start-up)")
    s.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests (default: %(default)s)")
    s.add_argument("--max-queue", type=int, default=256,
                   help="most requests waiting; beyond it 503 with Retry-After (default: %(default)s)")
    s.add_argument("--max-inputs", type=int, default=64, help="most inputs per request (default: %(default)s)")
    s.add_argument("--max-chars", type=int, default=10_000, help="most characters per input (default: %(default)s)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body; beyond it 413 (default: %(default)s)")


def _add_serve_timeouts(s: argparse.ArgumentParser) -> None:
    """``lepton serve``'s drain, header and body timeouts."""
    s.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight requests may take; those that cannot finish in "
                        "time are answered 503 with Retry-After (default: %(default)s)")
    s.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a connection whose request headers are not complete in time (default: %(default)s)")
    s.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="answer 408 when a request body stalls this long (default: %(default)s)")


def _add_monitor(sub: Any) -> None:
    m = _add_command(sub, "monitor", "watch a text stream: topic and sentiment per item, surge alerts, a live "
                                     "dashboard")
    m.add_argument("models", nargs="+", metavar="MODEL", help="a multi-task model (sentiment + topic), "
                   "or two models (MODEL MODEL2; the config says which gives which)")
    m.add_argument("--config", help="monitor config YAML (default: every default)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. window.width_s=60 (repeatable)")
    m.add_argument("--source", dest="sources", action="append", default=[], metavar="SOURCE",
                   help="http (POST /v1/ingest; the default), replay:FILE.jsonl, follow:FILE.jsonl, stdin "
                        "(repeatable)")
    m.add_argument("--speed", type=float, default=0.0,
                   help="replay this many times faster than the timestamps (0: as fast as possible)")
    m.add_argument("--exit-when-done", action="store_true", help="stop once every file source has ended")
    m.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)


def _search_parser(s: argparse.ArgumentParser) -> None:
    s.add_argument("recipe", help="recipe YAML with searchable settings ({choices: [...]}, {low:, high:}, "
                                  "optional: true on a stage)")
    s.add_argument("--trials", type=_positive_int, help="finished trials the study should hold (default: the "
                                                        "recipe's search.trials, else 20)")
    s.add_argument("--max-drop", action="append", default=[], metavar="METRIC=POINTS",
                   help="the budget: at most POINTS below the fine-tuned baseline, e.g. accuracy=1.0 "
                        "(repeatable; default: the task's headline metric, e.g. accuracy, at 1.0)")
    s.add_argument("--objectives", help="comma-separated, from a quality metric (accuracy), latency, size, "
                                        "throughput (default: the headline metric,latency,size)")
    s.add_argument("--timeout", help="start no new trial after this long, e.g. 2h, 90m, 3600")
    s.add_argument("--storage", help="Optuna storage: a database URL (postgresql://user:pw@host/db) that several "
                                     "workers share, or a journal file (default: OUT/study.journal)")
    s.add_argument("--study-name", help="default: the recipe's name")
    s.add_argument("--sampler", choices=["tpe", "nsga2", "random"], help="default: tpe (multi-objective, "
                                                                         "with the budget as a constraint)")
    s.add_argument("-o", "--output", help="output folder (default: the recipe's output.dir)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. data.train.limit=2000 (repeatable)")
    s.add_argument("--smoke", action="store_true", help="cap data, training and measurements (smoke=true)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _model_folder(path: str) -> str:
    """A run folder (``OUT``) stands for the model inside it (``OUT/model``)."""
    from pathlib import Path

    from lepton.runtimes.saved import is_saved_model

    folder = Path(path)
    if not is_saved_model(folder) and is_saved_model(folder / "model"):
        return str(folder / "model")
    return path


def _column(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _child_argv(args: argparse.Namespace) -> list[str]:
    """``lepton run`` arguments for the processes ``--nproc`` starts (the same run, less --nproc)."""
    argv = (["--debug"] if args.debug else []) + (["-q"] if args.quiet else [])
    argv += ["run", args.recipe] + (["--smoke"] if args.smoke else [])
    for override in args.overrides:
        argv += ["--set", override]
    argv += (["-o", args.output] if args.output is not None else []) + (["--resume"] if args.resume else [])
    argv += ["--force"] if args.force else []
    return argv + (["--no-progress"] if args.no_progress else [])


def _cmd_run(args: argparse.Namespace) -> int:
    from lepton.core import distributed
    from lepton.core.errors import RecipeError
    from lepton.pipeline.api import run
    from lepton.pipeline.recipe import load_recipe
    from lepton.pipeline.report import print_table

    if args.nproc is not None:
        if args.nproc < 1:
            raise RecipeError(f"--nproc {args.nproc}: give a process count of 1 or more")
        if distributed.env_world_size() > 1:
            raise RecipeError(f"--nproc: this process is already one of {distributed.env_world_size()} "
                              "(WORLD_SIZE is set, e.g. by torchrun); leave --nproc out")
        if args.nproc > 1:
            load_recipe(args.recipe, args.overrides)  # a bad recipe fails here once, not N times
            return distributed.launch(_child_argv(args), args.nproc)
    overrides = [*args.overrides, *(["smoke=true"] if args.smoke else [])]
    report = run(args.recipe, overrides=overrides, out_dir=args.output, resume=args.resume,
                 force=args.force, progress=not args.no_progress)
    if report is None:
        return 0  # a rank other than 0 of a data-parallel run: rank 0 reports
    print_table(report)
    out = args.output if args.output is not None else report.recipe["output"]["dir"]
    print(f"\nmodel: {out}/model\nreport: {out}/report.md (also .html and .json)\n"
          f"serve it: lepton serve {out}/model\n"
          f"measure it again on this machine: lepton evaluate {out}/model")
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more (a usage error otherwise, before anything runs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _cmd_search(args: argparse.Namespace) -> int:
    from lepton.core.errors import RecipeError

    max_drop = None
    if args.max_drop:  # checked as lepton compare checks its gates, before anything is loaded
        max_drop = {}
        for metric, points in _parse_gates(args.max_drop, None):
            if metric in max_drop:
                raise RecipeError(f"--max-drop {metric}: given twice; give each metric once")
            max_drop[metric] = points
    objectives = None
    if args.objectives is not None:
        objectives = [o.strip() for o in args.objectives.split(",")]
        if not all(objectives):
            raise RecipeError(f"--objectives {args.objectives!r}: an empty name; give comma-separated "
                              "objectives, e.g. accuracy,latency,size")
    try:
        from lepton.search import search

        result = search(args.recipe, out_dir=args.output,
                        overrides=[*args.overrides, *(["smoke=true"] if args.smoke else [])],
                        trials=args.trials, max_drop=max_drop, objectives=objectives, timeout=args.timeout,
                        storage=args.storage, study_name=args.study_name, sampler=args.sampler,
                        progress=not args.no_progress)
    except KeyboardInterrupt:  # before the trials (the baseline) or after them (the best model)
        print("lepton: interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    print((result.out_dir / "pareto.md").read_text())
    print(f"front: {result.out_dir}/pareto.json (plot: pareto.html)")
    if result.best_dir is not None:
        print(f"best model within the budget: {result.best_dir}/model (report: {result.best_dir}/report.md)\n"
              f"reproduce it without search: lepton run {result.best_dir}/recipe.yaml")
    if result.interrupted:
        print("lepton: interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130
    return 0 if result.best_dir is not None else EXIT_GATE_FAILED


def _cmd_data(args: argparse.Namespace) -> int:
    from lepton.data.datasets import BUILTIN_DATA, PREFIX

    for d in BUILTIN_DATA.values():
        print(f"{d.name}: {d.title}")
        for split, (_, rows) in d.splits.items():
            print(f"  {PREFIX}{d.name}/{split}  {rows:,} rows")
        print(f"  {d.labels}\n  source: {d.source}\n  terms: {d.licence}\n  details: {d.readme()}")
    print("Other data: any local file or folder by path, e.g. ${LEPTON_DATA:-../shared/data}/...")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from lepton.pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    sys.stdout.write(recipe.to_yaml())
    print(f"# {args.recipe}: valid (schema_version {recipe.schema_version}, {len(recipe.stages)} stages)",
          file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lepton.core.errors import RecipeError
    from lepton.pipeline.api import evaluate
    from lepton.pipeline.recipe import EvaluateConfig
    from lepton.pipeline.report import print_table

    try:
        sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"--batch-sizes {args.batch_sizes!r}: expected integers like 1,32") from None
    if not sizes or any(b < 1 for b in sizes):
        raise RecipeError(f"--batch-sizes {args.batch_sizes!r}: give positive batch sizes, e.g. 1,32")
    _check_limit(args.limit)
    data = None
    if args.data:
        data = {"path": args.data, "format": args.format, "limit": args.limit, "header": not args.no_header}
        data = {k: v for k, v in data.items() if v is not None}
    elif args.limit:  # the model recipe's own evaluation data, cut to --limit
        data = _recipe_data(args.model, args.task, args.limit, args.require_signature)
    report = evaluate(args.model, data,
                      text=_column(args.text), text_pair=_column(args.text_pair), label=_column(args.label),
                      config=EvaluateConfig(batch_sizes=sizes), task=args.task,
                      public_key=args.require_signature)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print_table(report)
    return 0


def _check_limit(limit: int | None) -> None:
    from lepton.core.errors import RecipeError

    if limit is not None and limit < 1:
        raise RecipeError(f"--limit {limit}: give a positive number of examples")


def _recipe_data(model: str, task: str | None, limit: int, public_key: str | None) -> dict | None:
    """The evaluation split of ``model``'s own recipe, limited to ``limit`` examples."""
    from lepton.pipeline.artifact import read_manifest
    from lepton.pipeline.recipe import task_recipe

    recipe = read_manifest(model, public_key=public_key).get("recipe") or {}
    split = (recipe.get("evaluate") or {}).get("split", "dev")
    data = task_recipe(recipe, task)[1]
    chosen = data.get(split) or data.get("dev")
    return dict(chosen, limit=limit) if chosen else None


def _parse_gates(max_drop: list[str], min_speedup: float | None) -> list[tuple[str, float]]:
    """Check the gate options before anything is measured; returns (metric, points) pairs."""
    import math

    from lepton.core.errors import RecipeError

    gates = []
    for spec in max_drop:
        metric, sep, points = spec.partition("=")
        try:
            limit = float(points)
        except ValueError:
            limit = math.nan
        if not sep or not metric.strip() or not math.isfinite(limit) or limit < 0:
            raise RecipeError(f"--max-drop {spec!r}: expected METRIC=POINTS with POINTS >= 0, "
                              "e.g. accuracy=1.0")
        gates.append((metric.strip(), limit))
    if min_speedup is not None and not (math.isfinite(min_speedup) and min_speedup > 0):
        raise RecipeError(f"--min-speedup {min_speedup}: give a speed-up above 0, e.g. 1.5")
    return gates


def _gates(report, max_drop: list[str], min_speedup: float | None) -> list[str]:
    from lepton.core.errors import RecipeError

    failures = []
    base = next(v for v in report.variants if v.name == report.baseline)
    for metric, limit in _parse_gates(max_drop, min_speedup):
        if metric not in base.quality.metrics:
            raise RecipeError(f"--max-drop: unknown metric {metric!r} "
                              f"(known: {', '.join(base.quality.metrics)})")
        for v in report.variants:
            drop = (base.quality.metrics[metric].value - v.quality.metrics[metric].value) * 100
            if v is not base and drop > limit:
                failures.append(f"{v.name}: {metric} dropped {drop:.2f} points (limit {limit})")
    if min_speedup is not None:
        for v in report.variants:
            if v is base or v.comparison is None:
                continue
            s = v.comparison.speedup_b1
            if s is None or s < min_speedup:
                failures.append(f"{v.name}: speed-up {s if s is None else round(s, 2)}x < {min_speedup}x")
    return failures


def _cmd_compare(args: argparse.Namespace) -> int:
    from lepton.pipeline.api import compare
    from lepton.pipeline.report import print_table

    _parse_gates(args.max_drop, args.min_speedup)  # a bad gate fails now, not after measuring
    _check_limit(args.limit)
    _check_gate_metrics(args.models[0], args.max_drop, args.task)
    data = {"path": args.data, "limit": args.limit} if args.data else None
    if data is None and args.limit:
        data = _recipe_data(args.models[0], args.task, args.limit, args.require_signature)
    report = compare(args.models, {k: v for k, v in data.items() if v is not None} if data else None,
                     task=args.task, public_key=args.require_signature)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print_table(report)
    failures = _gates(report, args.max_drop, args.min_speedup)
    for f in failures:
        print(f"lepton: gate failed: {f}", file=sys.stderr)
    return EXIT_GATE_FAILED if failures else 0


def _check_gate_metrics(model: str, max_drop: list[str], task: str | None) -> None:
    """Unknown --max-drop metrics fail before measuring, where the model's scorecards name them."""
    from lepton.core.errors import RecipeError
    from lepton.pipeline.artifact import read_manifest

    if not max_drop:
        return
    manifest = read_manifest(model, verify=False)
    cards = manifest.get("scorecards") or []
    known = set()
    if task is None or task == manifest.get("main_task", "main"):
        for card in cards:
            known |= set(((card.get("quality") or {}).get("metrics") or {}) if isinstance(card, dict) else {})
    if not known:
        return  # no scorecard to go by (or another task's): checked after measuring
    for metric, _ in _parse_gates(max_drop, None):
        if metric not in known:
            raise RecipeError(f"--max-drop: unknown metric {metric!r} (known: {', '.join(sorted(known))})")


def _cmd_info(args: argparse.Namespace) -> int:
    from lepton.pipeline.artifact import read_manifest, unlisted_files
    from lepton.pipeline.signing import read_signature

    manifest = read_manifest(args.model, public_key=args.require_signature)  # verifies checksums
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    task = manifest["task"]
    print(f"{args.model}: Lepton model (lepton {manifest['lepton_version']}, created {manifest['created']})")
    print(f"  task: {task['kind']}, labels {task['labels']}, max_length {task['max_length']}")
    print(f"  from: {manifest.get('source_model')}; runtime {manifest.get('runtime')}")
    for r in manifest.get("history", []):
        print(f"  stage {r['index']}: {r['name']} ({r['seconds']:.1f} s)")
    for c in manifest.get("scorecards", []):
        q = c["quality"]
        m = q["metrics"][q["headline"]]
        lat = c["efficiency"]["latency_ms"].get("b1_real", {})
        print(f"  {c['name']}: {q['headline']} {m['value']:.4f} [{m['ci95_low']:.4f}, {m['ci95_high']:.4f}]"
              f", b1 p50 {lat.get('p50', float('nan')):.2f} ms, {c['efficiency']['size_mb']:.1f} MB")
    from pathlib import Path

    print(f"  files: {len(manifest['files'])} verified (sha256)")
    extra = unlisted_files(Path(args.model), manifest)
    if extra:
        print(f"  not covered by the manifest (not loaded): {', '.join(extra)}")
    signature = read_signature(Path(args.model))
    if args.require_signature:
        print(f"  signature: valid, key {signature['key_id']}")
    elif signature is not None:
        print(f"  signature: present (key {signature.get('key_id')}), not checked: "
              "pass --require-signature PUBLIC_KEY")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from lepton.pipeline.signing import keygen

    private, public, kid = keygen(args.key)
    print(f"private key: {private} (keep it secret)\npublic key:  {public}\nkey id:      {kid}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from lepton.pipeline.artifact import sign_model

    path, kid = sign_model(args.model, args.key)
    print(f"{path}: signed with key {kid}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from lepton.serve import ServeSettings, serve

    log_level = "debug" if args.debug else "warning" if args.quiet else "info"
    settings = ServeSettings.build(
        host=args.host, port=args.port, workers=args.workers, max_batch=args.max_batch,
        model_batch=args.model_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_inputs=args.max_inputs,
        max_chars=args.max_chars, max_body_bytes=args.max_body_bytes, name=args.name,
        access_log=args.access_log, log_level=log_level, require_signature=args.require_signature,
        drain_timeout_s=args.drain_timeout, header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        admin_token=args.admin_token or os.environ.get("LEPTON_ADMIN_TOKEN") or None)
    try:
        return serve(args.model, settings)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it caught once it has shut down cleanly
        return 130


def _cmd_monitor(args: argparse.Namespace) -> int:
    from lepton.monitor.runner import run_monitor

    if len(args.models) > 2:
        raise LeptonError(f"monitor: give one multi-task model or two models (got {len(args.models)})")
    log_level = "debug" if args.debug else "warning" if args.quiet else "info"
    return run_monitor([_model_folder(m) for m in args.models], args.config, sources=args.sources,
                       speed=args.speed, overrides=args.overrides, exit_when_done=args.exit_when_done,
                       log_level=log_level, public_key=args.require_signature)


def _cmd_generate(args: argparse.Namespace) -> int:
    from lepton.pipeline import generate_command as command

    return command.run(args)


def _cmd_update(args: argparse.Namespace) -> int:
    from lepton.pipeline import update_command

    return update_command.run(args)


def _cmd_explain(args: argparse.Namespace) -> int:
    from lepton.pipeline import explain_command

    return explain_command.run(args)


def _cmd_gguf(args: argparse.Namespace) -> int:
    from lepton.pipeline import gguf_command

    return gguf_command.run(args)


def _cmd_drift(args: argparse.Namespace) -> int:
    from lepton.pipeline import drift_command

    return drift_command.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    from lepton.core.distributed import env_rank

    args = _parser().parse_args(argv)
    if getattr(args, "model", None):
        args.model = _model_folder(args.model)
    if args.command == "compare":
        args.models = [_model_folder(m) for m in args.models]
    quiet = args.quiet or (args.command == "run" and env_rank() > 0)  # rank 0 speaks for a DDP run
    level = logging.DEBUG if args.debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s" if args.debug else "%(message)s",
                        stream=sys.stderr)
    if not args.debug:
        import os
        import warnings

        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handlers = {"run": _cmd_run, "validate": _cmd_validate, "evaluate": _cmd_evaluate, "info": _cmd_info,
                "compare": _cmd_compare, "serve": _cmd_serve, "data": _cmd_data, "keygen": _cmd_keygen,
                "sign": _cmd_sign, "monitor": _cmd_monitor, "search": _cmd_search, "generate": _cmd_generate,
                "drift": _cmd_drift, "update": _cmd_update, "explain": _cmd_explain,
                "gguf": _cmd_gguf}
    try:
        return handlers[args.command](args)
    except LeptonError as err:
        if args.debug:
            raise
        print(f"lepton: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:  # an I/O failure no narrower handler named: still one line, exit 2
        if args.debug:
            raise
        from lepton.core.atomic import describe

        print(f"lepton: error: {getattr(err, 'filename', None) or 'file system'}: {describe(err)}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lepton: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
