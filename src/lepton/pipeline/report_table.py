"""The side-by-side table of every variant and the smoke-run note, shared by report.md, the
terminal table (``lepton.pipeline.report``) and report.html (``lepton.pipeline.report_html``)."""

from __future__ import annotations

from lepton.evaluation.scorecard import Report, Scorecard


def metric_cell(card: Scorecard) -> str:
    m = card.quality.metrics[card.quality.headline]
    return f"{m.value:.4f} [{m.ci95_low:.4f}, {m.ci95_high:.4f}]"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table of every variant."""
    headline = report.variants[0].quality.headline if report.variants else "metric"
    header = ["variant", f"{headline} [95% CI]", "Δ vs baseline [95% CI]", "b1 p50 ms", "b1 p95 ms",
              "throughput", "size MB", "params", "speed-up", "smaller", "verdict"]
    rows = []
    for card in report.variants:
        eff = card.efficiency
        lat = eff.latency_ms.get("b1_real")
        thr = ", ".join(f"{v:.1f}/s@{k}" for k, v in eff.throughput.items()) or "-"
        delta = speed = smaller = "-"
        verdict = "baseline" if card.name == report.baseline else "-"
        c = card.comparison
        if c is not None:
            mark = "*" if c.significant else ""
            delta = f"{c.delta:+.4f}{mark} [{c.ci95_low:+.4f}, {c.ci95_high:+.4f}]"
            speed = f"{c.speedup_b1:.2f}x" if c.speedup_b1 else "-"
            smaller = f"{c.smaller:.2f}x" if c.smaller else "-"
            verdict = f"{c.verdict}; {c.label}"
        slices = card.slices  # whom the errors fall on (lepton.evaluation.slices)
        if slices is not None and slices.worst:
            worse = f"; worse on {', '.join(slices.dropped)}" if slices.dropped else ""
            verdict += f"{worse}; worst slice {slices.worst}"
        rows.append([card.name, metric_cell(card), delta,
                     f"{lat.p50:.2f}" if lat else "-", f"{lat.p95:.2f}" if lat else "-", thr,
                     f"{eff.size_mb:.1f}", f"{eff.params / 1e6:.2f}M", speed, smaller, verdict])
    return header, rows


def smoke_note(report: Report) -> str | None:
    """The warning a smoke run's report carries (None for a real run)."""
    from lepton.core.config import SMOKE_NOTE

    return SMOKE_NOTE if isinstance(report.recipe, dict) and report.recipe.get("smoke") else None
