"""The Hugging Face model card (README.md) saved inside the model folder.

YAML front matter (library_name, tags, pipeline_tag, base_model, model-index) that the Hub reads,
then a body that says what the model is, how it was made and measured, and how to load it. Built
from the report and the manifest (or a dict with its ``history``, ``source_model`` and ``recipe``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path, PurePath
from typing import Any

import yaml

from lepton.evaluation.scorecard import Report, Scorecard
from lepton.tasks import TaskKind, kind_of, task_kinds

# builtin model -> the hub id its weights come from
BUILTIN_HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}

# Lepton metric -> (model-index metric type, display name, args)
_METRICS: dict[str, tuple[str, str, dict[str, str] | None]] = {
    "accuracy": ("accuracy", "Accuracy", None),
    "macro_precision": ("precision", "Macro precision", {"average": "macro"}),
    "macro_recall": ("recall", "Macro recall", {"average": "macro"}),
    "macro_f1": ("f1", "Macro F1", {"average": "macro"}),
    "f1": ("f1", "F1 (positive class)", {"average": "binary"}),
    "entity_precision": ("precision", "Entity precision", {"average": "micro"}),
    "entity_recall": ("recall", "Entity recall", {"average": "micro"}),
    "entity_f1": ("f1", "Entity F1", {"average": "micro"}),
    "macro_entity_f1": ("f1", "Macro entity F1", {"average": "macro"}),
    "token_accuracy": ("accuracy", "Token accuracy", None),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_GENERIC_STEMS = {"train", "dev", "test", "valid", "validation", "val", "eval", "data", "dataset"}


def hub_id(source: str) -> str | None:
    """The hub id a model spec refers to; None for local paths and unknown builtins."""
    if source.startswith("builtin:"):
        return BUILTIN_HUB_IDS.get(source.removeprefix("builtin:"))
    if (not _HUB_ID.match(source) or source.endswith((".", "-")) or ".." in source
            or Path(source).expanduser().exists()):
        return None
    return source


def _dataset_name(recipe: dict[str, Any], split: str) -> str:
    """The evaluated data file's stem, or its folder's name when the stem is a split name
    (``sst2/dev.tsv`` -> ``sst2``); else the recipe's name."""
    path = (((recipe.get("data") or {}).get(split)) or {}).get("path")
    if path:
        pure = PurePath(str(path))
        stem = re.sub(r"(\.tar)?\.(gz|tgz|zip|bz2|xz)$", "", pure.name)
        stem = PurePath(stem).stem if "." in stem else stem
        if stem.lower() in _GENERIC_STEMS and pure.parent.name not in ("", "."):
            stem = pure.parent.name
        if stem:
            return stem
    return str(recipe.get("name") or "custom")


def _model_name(report: Report, manifest: dict[str, Any], final: Scorecard | None) -> str:
    name = (report.recipe or {}).get("name") or (manifest.get("recipe") or {}).get("name")
    if name:
        return str(name)
    source = str(manifest.get("source_model") or "model")
    base = source.removeprefix("builtin:").rstrip("/").split("/")[-1] or "model"
    return f"{base}-{final.name}" if final else base


def _front_matter(report: Report, manifest: dict[str, Any], final: Scorecard | None,
                  task_kind: TaskKind, name: str) -> dict[str, Any]:
    pipeline = task_kind.pipeline_tag
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["lepton", pipeline],
                            "pipeline_tag": pipeline}
    base = hub_id(str(manifest.get("source_model") or ""))
    if base:
        meta["base_model"] = base
    if final is not None:
        recipe = report.recipe or manifest.get("recipe") or {}
        dataset = _dataset_name(recipe, final.split)
        metrics = []
        for key, m in final.quality.metrics.items():
            kind, display, args = _METRICS.get(key, (key, key.replace("_", " ").capitalize(), None))
            entry: dict[str, Any] = {"type": kind, "value": float(m.value), "name": display}
            if args:
                entry["args"] = args
            metrics.append(entry)
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": pipeline, "name": task_kind.hub_task_name},
            "dataset": {"name": dataset, "type": dataset, "split": final.split},
            "metrics": metrics,
        }]}]
    return meta


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell and free of raw HTML."""
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")


def _settings(values: dict[str, Any]) -> str:
    shown = []
    for key, value in values.items():
        if key in ("kind", "evals"):
            continue
        text = str(value)
        shown.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(shown)


def _labels(manifest: dict[str, Any], final: Scorecard | None) -> list[str]:
    task = manifest.get("task")
    if isinstance(task, dict) and task.get("labels"):
        return [str(label) for label in task["labels"]]
    return list(final.quality.labels) if final else []


def _why_lepton_only(manifest: dict[str, Any]) -> str:
    from lepton.runtimes.formats import find_format

    fmt = find_format(manifest.get("format")) if isinstance(manifest.get("format"), str) else None
    if fmt is not None and fmt.how_it_loads:
        return fmt.how_it_loads
    return ("Pruning left layers of different sizes, which a transformers config cannot describe: "
            "this model loads only through `lepton.load`.")


def model_card(report: Report, manifest: dict[str, Any]) -> str:
    """README.md for the saved model: Hub front matter and a human-readable body."""
    final = report.variants[-1] if report.variants else None
    recipe = report.recipe or manifest.get("recipe") or {}
    kind = (final.quality.task if final else None) or (recipe.get("task") or {}).get("kind")
    # A kind this Lepton does not know (a manifest from a newer one): the card stays generic.
    task_kind = kind_of(kind) if kind in task_kinds else TaskKind()
    labels = _labels(manifest, final)
    lines = _card_intro(report, manifest, final, task_kind, labels)
    if manifest.get("heads"):  # a multi-task model: one encoder, a head per task
        lines += _card_tasks(manifest, kind, labels)
    lines += _card_history(manifest)
    lines += _card_evaluation(report, final)
    lines += _card_usage(manifest, task_kind)
    lines += _card_limitations(report, final)
    return "\n".join(lines)


def _card_intro(report: Report, manifest: dict[str, Any], final: Scorecard | None, task_kind: TaskKind,
                labels: list[str]) -> list[str]:
    """The front matter, the title, what the model is and where from, and its labels."""
    from lepton.pipeline.report import smoke_note

    name = _model_name(report, manifest, final)
    source = str(manifest.get("source_model") or "an unknown model")
    base = hub_id(source)
    front = yaml.safe_dump(_front_matter(report, manifest, final, task_kind, name),
                           sort_keys=False, allow_unicode=True)

    what = task_kind.card_what
    origin = f"[{base}](https://huggingface.co/{base})" if base else f"`{_cell(source)}`"
    lines = [f"---\n{front}---", "", f"# {_cell(name)}", "",
             f"A {what} model made with Lepton {_cell(report.lepton_version)} "
             f"from {origin}" + (f" (`{_cell(source)}`)" if base and base != source else "") + ".", ""]
    if smoke_note(report):
        lines += [f"**{_cell(smoke_note(report).capitalize())}: do not deploy this model.**", ""]
    lines += task_kind.card_notes(source)  # e.g. how a builtin's weights were made
    if labels:
        lines += [f"Labels ({len(labels)}): " + ", ".join(f"`{_cell(label)}`" for label in labels) + ".", ""]
    return lines


def _card_tasks(manifest: dict[str, Any], kind: str | None, labels: list[str]) -> list[str]:
    """A multi-task model's tasks: kind, labels and dev score right after multi-task training."""
    from lepton.stages import declared

    heads = manifest.get("heads") or {}
    main = str(manifest.get("main_task") or "main")
    scores: dict[str, Any] = {}
    for record in manifest.get("history") or []:
        if declared(record.get("kind"), "adds_heads"):
            scores = (record.get("summary") or {}).get("dev") or {}
    lines = ["## Tasks", "", "One shared encoder with a head per task. Dev scores were measured right after "
             "multi-task training, each on the task's own dev set.", "",
             "| task | kind | labels | headline on its dev set [95% CI] |", "|---|---|---|---|"]
    for task_name, head_kind, task_labels in [(main, kind, labels), *(
            (n, (h.get("task") or {}).get("kind"), (h.get("task") or {}).get("labels") or [])
            for n, h in heads.items())]:
        got = scores.get(task_name) or {}
        head_metric = kind_of(head_kind).headline if head_kind in task_kinds else "-"
        m = got.get(head_metric)
        shown = f"{head_metric} {m['value']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]" if m else "-"
        lines.append(f"| `{_cell(task_name)}`{' (main)' if task_name == main else ''} | {_cell(head_kind)} | "
                     f"{_cell(', '.join(task_labels or []))} | {shown} |")
    lines.append("")
    return lines


def _card_history(manifest: dict[str, Any]) -> list[str]:
    """How it was made: one numbered line per stage with its settings."""
    history = manifest.get("history") or []
    lines = ["## How it was made", ""]
    if history:
        for record in history:
            settings = _settings(record.get("settings") or {})
            lines.append(f"{int(record.get('index', 0)) + 1}. **{_cell(record.get('name', '?'))}** "
                         f"(`{_cell(record.get('kind', '?'))}`, {float(record.get('seconds', 0)):.1f} s)"
                         + (f": {_cell(settings)}" if settings else ""))
    else:
        lines.append("No stages: this is the starting model with a new task head, evaluated as is.")
    lines.append("")
    return lines


def _card_evaluation(report: Report, final: Scorecard | None) -> list[str]:
    """The evaluation table with how to read it, the verdict against the baseline, and the machine."""
    from lepton.evaluation.environment import describe
    from lepton.pipeline.report import table_rows

    header, rows = table_rows(report)
    lines = ["## Evaluation", ""]
    if final is not None:
        lines += [f"Every variant was evaluated on the same `{_cell(final.split)}` split "
                  f"({final.n_examples} examples); the saved model is the last row, "
                  f"`{_cell(final.name)}`.", ""]
        lines += ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        boot = final.quality.bootstrap
        lines += ["", f"Brackets are 95% confidence intervals: percentile bootstrap over the "
                  f"{final.n_examples} evaluated examples ({boot.get('resamples', '?')} resamples, "
                  f"seed {boot.get('seed', '?')}). Δ is the difference from the baseline "
                  f"`{_cell(report.baseline)}`; only a difference whose paired CI excludes 0 is a "
                  "measured change.", ""]
        if final.comparison is not None:
            c = final.comparison
            lines += [f"Against `{_cell(c.baseline)}`: **{_cell(c.verdict)}** ({_cell(c.metric)} "
                      f"Δ {c.delta:+.4f}, 95% CI [{c.ci95_low:+.4f}, {c.ci95_high:+.4f}]); "
                      f"efficiency: {_cell(c.label)}.", ""]
    else:
        lines += ["No evaluation results.", ""]
    lines += ["## Machine", "", f"Measured on {_cell(describe(report.environment))}.", ""]
    return lines


def _card_usage(manifest: dict[str, Any], task_kind: TaskKind) -> list[str]:
    """How to use: with Lepton, another task of a multi-task model, and with plain transformers."""
    heads = manifest.get("heads") or {}
    lines = ["## How to use", "", "With Lepton (verifies every file's checksum first):", "",
             "```python", "import lepton", "", 'model = lepton.load("path/to/model")',
             f'print(model.predict("{task_kind.example_input}"))', "```", ""]
    if heads:
        first = next(iter(heads))
        lines += [f'Another task: `model.predict(texts, task="{_cell(first)}")`; `lepton serve` answers it at '
                  f"`POST /v1/tasks/{_cell(first)}/predict`. Plain transformers loads the main task only.", ""]
    if manifest.get("loads_in_transformers", True):
        lines += ["With plain transformers:", "", "```python", "from transformers import pipeline", "",
                  f'clf = pipeline("{task_kind.pipeline_tag}", model="path/to/model"{task_kind.pipeline_args})',
                  f'print(clf("{task_kind.example_input}"))', "```", ""]
    else:
        lines += [_why_lepton_only(manifest), ""]
    return lines


def _card_limitations(report: Report, final: Scorecard | None) -> list[str]:
    from lepton.pipeline.report_whom import card_lines  # measured: slices, counterfactual fairness

    return ["## Bias, risks and limitations", "", *card_lines(report, final),
            "- Quality was measured on one dev split" + (f" (`{_cell(final.split)}`)" if final else "")
            + "; it may differ on other data, domains or label distributions.",
            "- Latency, throughput and speed-ups are specific to the machine above, its thread count "
            "and runtime; measure on your own hardware before relying on them.",
            "- The model inherits the biases and limits of its base model and its training data.", ""]
