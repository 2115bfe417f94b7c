"""report.json (one typed schema), report.md and the terminal table, all from scorecards."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lepton.evaluation.scorecard import Report, Scorecard


def json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, derived from the one typed definition."""
    return Report.model_json_schema()


def _metric_cell(card: Scorecard) -> str:
    m = card.quality.metrics[card.quality.headline]
    return f"{m.value:.4f} [{m.ci95_low:.4f}, {m.ci95_high:.4f}]"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table of every variant."""
    base = next((v for v in report.variants if v.name == report.baseline), None)
    headline = report.variants[0].quality.headline if report.variants else "metric"
    header = ["variant", f"{headline} [95% CI]", "Δ vs baseline", "b1 p50 ms", "b1 p95 ms",
              "throughput", "size MB", "params", "speed-up"]
    rows = []
    for card in report.variants:
        eff = card.efficiency
        lat = eff.latency_ms.get("b1_real")
        thr = ", ".join(f"{v:.1f}/s@{k}" for k, v in eff.throughput.items()) or "-"
        delta = speed = "-"
        if base is not None and card is not base:
            d = card.quality.metrics[headline].value - base.quality.metrics[headline].value
            delta = f"{d:+.4f}"
            base_lat = base.efficiency.latency_ms.get("b1_real")
            if lat and base_lat:
                speed = f"{base_lat.p50 / lat.p50:.2f}x"
        rows.append([card.name, _metric_cell(card), delta,
                     f"{lat.p50:.2f}" if lat else "-", f"{lat.p95:.2f}" if lat else "-", thr,
                     f"{eff.size_mb:.1f}", f"{eff.params / 1e6:.2f}M", speed])
    return header, rows


def to_markdown(report: Report) -> str:
    from lepton.evaluation.environment import describe

    header, rows = table_rows(report)
    lines = [f"# Lepton report", "",
             f"Created {report.created} by Lepton {report.lepton_version}. "
             f"Machine: {describe(report.environment)}.", ""]
    if report.baseline:
        lines += [f"Baseline for deltas: `{report.baseline}`.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    for card in report.variants:
        q, e = card.quality, card.efficiency
        lines += [f"## {card.name}", "",
                  f"Stages: {' → '.join(card.stage_path) or '(none)'}; evaluated on `{card.split}` "
                  f"({card.n_examples} examples); runtime {e.runtime} on {e.device}, {e.threads} threads.", "",
                  "| metric | value | 95% CI |", "|---|---|---|"]
        for name, m in q.metrics.items():
            lines.append(f"| {name} | {m.value:.4f} | [{m.ci95_low:.4f}, {m.ci95_high:.4f}] |")
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for row in q.per_class:
            lines.append(f"| {row.label} | {row.precision:.4f} | {row.recall:.4f} | {row.f1:.4f} | {row.support} |")
        if q.confusion is not None:
            lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
                      "| | " + " | ".join(q.labels) + " |", "|---|" + "---|" * len(q.labels)]
            for label, counts in zip(q.labels, q.confusion):
                lines.append(f"| **{label}** | " + " | ".join(str(c) for c in counts) + " |")
        lines += ["", "| efficiency | value |", "|---|---|"]
        for key, lat in e.latency_ms.items():
            lines.append(f"| latency {key} (ms) | p50 {lat.p50:.2f}, p95 {lat.p95:.2f}, p99 {lat.p99:.2f} "
                         f"(min {lat.min:.2f}, max {lat.max:.2f}, n {lat.n}, {lat.tokens_mean:.1f} tokens) |")
        for key, value in e.throughput.items():
            lines.append(f"| throughput {key} (items/s) | {value:.1f} |")
        lines += [f"| peak RSS (MB) | {e.peak_rss_mb:.0f} ({e.peak_rss_note}) |" if e.peak_rss_mb else "| peak RSS | n/a |",
                  f"| size (MB) | {e.size_mb:.1f} |",
                  f"| parameters | {e.params:,} ({e.nonzero_params:,} non-zero, sparsity {e.sparsity:.3f}) |",
                  f"| FLOPs per item (estimate) | {e.flops_per_item / 1e9:.3f} G |" if e.flops_per_item else "| FLOPs | n/a |",
                  f"| warm-up calls | {e.warmup} |"]
        for note in card.notes:
            lines.append(f"\nNote: {note}")
        lines.append("")
    if report.stages:
        lines += ["## Stages", "", "| # | stage | seconds | summary |", "|---|---|---|---|"]
        for s in report.stages:
            summary = {k: v for k, v in s.get("summary", {}).items() if k != "evals"}
            lines.append(f"| {s['index']} | {s['name']} | {s['seconds']:.1f} | "
                         + ", ".join(f"{k}={v}" for k, v in summary.items()) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(report: Report, out_dir: Path) -> None:
    """report.json and report.md, each written to a temp file and renamed."""
    for name, text in (("report.json", report.model_dump_json(indent=2)),
                       ("report.md", to_markdown(report))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_dir / name)


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


def load_report(path: str | os.PathLike[str]) -> Report:
    return Report.model_validate(json.loads(Path(path).read_text()))
