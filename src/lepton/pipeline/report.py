"""report.json (one typed schema), report.md and the terminal table, all from scorecards."""

from __future__ import annotations

import logging  # report.html
import os
from pathlib import Path
from typing import Any

from lepton.core import atomic
from lepton.core.errors import ArtifactError, MissingExtraError
from lepton.evaluation.scorecard import Report, Scorecard
from lepton.pipeline.report_table import smoke_note, table_rows

__all__ = ["json_schema", "load_report", "print_table", "smoke_note", "table_rows", "to_markdown",
           "write_report"]

log = logging.getLogger(__name__)  # report.html
_warned_no_html = False  # report.html: warn once per process that matplotlib is missing


def json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, derived from the one typed definition."""
    return Report.model_json_schema()


def to_markdown(report: Report) -> str:
    lines = _markdown_intro(report)
    if report.update:  # lepton update: gain and forgetting first, the per-variant detail after
        from lepton.pipeline.update_report import to_markdown as update_markdown

        lines += update_markdown(report.update)
    for card in report.variants:
        lines += _markdown_variant(card)
    if report.stages:
        lines += _markdown_stages(report.stages)
    return "\n".join(lines)


def _markdown_intro(report: Report) -> list[str]:
    """The title, the machine, the smoke warning and the side-by-side table."""
    from lepton.evaluation.environment import describe

    header, rows = table_rows(report)
    lines = ["# Lepton report", "",
             f"Created {report.created} by Lepton {report.lepton_version}. "
             f"Machine: {describe(report.environment)}.", ""]
    if smoke_note(report):
        lines += [f"**{smoke_note(report).capitalize()}.**", ""]
    if report.selection:
        lines += [selection_note(report.selection), ""]
    if report.baseline:
        lines += [f"Baseline for deltas: `{report.baseline}`. Δ marked * when its paired 95% CI excludes 0. "
                  "Timings interleave all variants over the same inputs; ratios under 5% are noise.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    return lines


def selection_note(sel: dict[str, Any]) -> str:
    """One sentence: which split chose and which scored, and whether they are the same data."""
    chose = f"data.{sel['chose_on']}" + (" (carved from data.train)" if sel.get("carved_from_train") else "")
    text = (f"Chosen on {chose}, {sel.get('chose_examples', '?')} examples; scored on data.{sel['scored_on']}, "
            f"{sel.get('scored_examples', '?')} examples")
    if sel["chose_on"] == sel["scored_on"]:
        return text + (": **the same split chose and scored** (keep-best checkpoints, early stopping, layer "
                       "importance, quantize's max_drop read it), so its scores may lean optimistic; give "
                       "data.validation or set data.select_on: validation.")
    return text + ": the split that scored chose nothing."


def _markdown_variant(card: Scorecard) -> list[str]:
    """One variant's section: its quality, efficiency, comparison, robustness, calibration, notes."""
    e = card.efficiency
    lines = [f"## {card.name}", "",
             f"Stages: {' → '.join(card.stage_path) or '(none)'}; evaluated on `{card.split}` "
             f"({card.n_examples} examples); runtime {e.runtime} on {e.device}, {e.threads} threads.", ""]
    lines += _markdown_quality(card)
    lines += _markdown_efficiency(card)
    if card.comparison is not None:
        c = card.comparison
        p_mc = f", McNemar p {c.p_mcnemar:.3g}" if c.p_mcnemar is not None else ""
        lines += ["", f"Against `{c.baseline}`: {c.metric} {c.delta:+.4f} "
                  f"[{c.ci95_low:+.4f}, {c.ci95_high:+.4f}] (paired bootstrap p {c.p_bootstrap:.3g}{p_mc}): "
                  f"**{c.verdict}**; {c.label}."]
    if card.robustness is not None:
        r = card.robustness
        lines += ["", f"Robustness (seed {r.seed}, rate {r.rate}): clean {r.metric} {r.clean:.4f}; "
                  + ", ".join(f"{k} {v:.4f} (drop {r.drop[k]:+.4f})" for k, v in r.perturbed.items()) + "."]
    if card.calibration is not None:
        lines += ["", f"Calibration: expected calibration error {card.calibration.ece:.4f} "
                  f"({len(card.calibration.bins)} equal-width confidence bins)."]
    from lepton.pipeline.report_whom import markdown as whom_markdown

    lines += whom_markdown(card)  # slices and counterfactual fairness
    from lepton.pipeline.report_why import markdown as why_markdown

    lines += why_markdown(card)  # token attributions: faithfulness, agreement with the baseline
    for note in card.notes:
        lines.append(f"\nNote: {note}")
    lines.append("")
    return lines


def _markdown_quality(card: Scorecard) -> list[str]:
    """A variant's metrics with their CIs, signatures, per-class table and confusion matrix."""
    q = card.quality
    lines = ["| metric | value | 95% CI |", "|---|---|---|"]
    for name, m in q.metrics.items():
        lines.append(f"| {name} | {m.value:.4f} | [{m.ci95_low:.4f}, {m.ci95_high:.4f}] |")
    lines += ["", *(f"{name} signature: `{sig}`" for name, sig in q.signatures.items())]
    if q.per_class:
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for row in q.per_class:
        lines.append(f"| {row.label} | {row.precision:.4f} | {row.recall:.4f} | {row.f1:.4f} | {row.support} |")
    if q.confusion is not None:
        lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
                  "| | " + " | ".join(q.labels) + " |", "|---|" + "---|" * len(q.labels)]
        for label, counts in zip(q.labels, q.confusion):
            lines.append(f"| **{label}** | " + " | ".join(str(c) for c in counts) + " |")
    return lines


def _markdown_efficiency(card: Scorecard) -> list[str]:
    """A variant's efficiency table: latency, throughput, memory, size, parameters, FLOPs."""
    e = card.efficiency
    lines = ["", "| efficiency | value |", "|---|---|"]
    for key, lat in e.latency_ms.items():
        rounds = (f"; round medians {min(lat.round_medians):.2f}-{max(lat.round_medians):.2f}"
                  if lat.round_medians else "")
        lines.append(f"| latency {key} (ms) | p50 {lat.p50:.2f}, p95 {lat.p95:.2f}, p99 {lat.p99:.2f} "
                     f"(min {lat.min:.2f}, max {lat.max:.2f}, n {lat.n}, {lat.tokens_mean:.1f} tokens{rounds}) |")
    for key, value in e.throughput.items():
        spread = e.throughput_spread.get(key)
        extra = f" (min {spread[0]:.1f}, max {spread[2]:.1f} over {e.rounds} rounds)" if spread else ""
        unit = "generated tokens/s" if e.generative else "items/s"
        lines.append(f"| throughput {key} ({unit}) | {value:.1f}{extra} |")
    lines += [(f"| peak RSS (MB) | {e.peak_rss_mb:.0f} ({e.peak_rss_note}) |" if e.peak_rss_mb
               else f"| peak RSS | {e.peak_rss_note} |"),
              f"| size (MB) | {e.size_mb:.1f}" + (f" ({e.size_compressed_mb:.1f} compressed with zlib)"
                                                if e.size_compressed_mb else "") + " |",
              f"| parameters | {e.params:,} ({e.nonzero_params:,} non-zero, sparsity {e.sparsity:.3f}) |",
              (f"| FLOPs per item (estimate) | {e.flops_per_item / 1e9:.3f} G |" if e.flops_per_item
               else "| FLOPs | n/a |"),
              f"| warm-up calls | {e.warmup} |"]
    return lines


def _markdown_stages(stages: list[dict[str, Any]]) -> list[str]:
    """The stages table, then the per-task dev scores of each stage that adds task heads."""
    lines = ["## Stages", "", "| # | stage | seconds | summary |", "|---|---|---|---|"]
    for s in stages:
        summary = {k: v for k, v in s.get("summary", {}).items() if k not in ("evals", "dev")}
        lines.append(f"| {s['index']} | {s['name']} | {s['seconds']:.1f} | "
                     + ", ".join(f"{k}={v}" for k, v in summary.items()) + " |")
    lines.append("")
    from lepton.stages import declared

    for s in stages:
        per_task = s.get("summary", {}).get("dev")
        if not declared(s.get("kind"), "adds_heads") or not isinstance(per_task, dict):
            continue
        lines += [f"### Tasks of stage {s['index']} ({s['name']}), each on its own dev set", "",
                  "| task | examples | metric | value | 95% CI |", "|---|---|---|---|---|"]
        for task, scores in per_task.items():
            for metric, m in scores.items():
                if isinstance(m, dict) and "value" in m:
                    low, high = m["ci95"]
                    lines.append(f"| {task} | {scores.get('dev_examples', '')} | {metric} | "
                                 f"{m['value']:.4f} | [{low:.4f}, {high:.4f}] |")
        lines += ["", "Measured right after the stage; later stages change the shared encoder, "
                  "and only the main task is measured again.", ""]
    return lines


def write_report(report: Report, out_dir: Path) -> None:
    """report.json, report.md and report.html, each written to a temp file and renamed."""
    outputs = [("report.json", report.model_dump_json(indent=2)), ("report.md", to_markdown(report))]
    # --- report.html (needs the optional matplotlib, lepton[report]); a run never fails without it
    global _warned_no_html
    try:
        from lepton.pipeline.report_html import to_html

        outputs.append(("report.html", to_html(report)))
    except MissingExtraError as err:
        if not _warned_no_html:
            log.warning("report.html skipped: %s", err)
            _warned_no_html = True
    # --- end report.html
    for name, text in outputs:
        atomic.write_text(out_dir / name, text)


def print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(title="Lepton: variants side by side")
    for h in header:
        table.add_column(h, justify="left" if h == "variant" else "right")
    for r in rows:
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or logged: do not squeeze the table to 80 columns
    console.print(table)
    from lepton.evaluation.environment import describe

    console.print(f"Machine: {describe(report.environment)}.", highlight=False)
    if smoke_note(report):
        console.print(f"[bold yellow]{smoke_note(report).capitalize()}.[/]", highlight=False)


def load_report(path: str | os.PathLike[str]) -> Report:
    """A run's report.json; a missing, malformed or foreign file is one ArtifactError naming it."""
    from pydantic import ValidationError

    try:
        return Report.model_validate(atomic.loads_json(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as err:
        reason = f"{err.error_count()} field errors" if isinstance(err, ValidationError) else atomic.describe(err)
        raise ArtifactError(f"{path}: not a readable Lepton report ({reason})") from None
