"""report.html: one self-contained page with the side-by-side table, plots and per-variant details.

Nothing is fetched when the page opens: CSS is inline and every plot is an inline ``<svg>`` drawn
with matplotlib (the optional ``lepton[report]`` extra, imported only here). Glyphs are written as
SVG paths, so the page looks the same without any font installed. Every string that comes from the
report is HTML-escaped.
"""

from __future__ import annotations

import html
import importlib
import io
import math
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lepton.core.errors import MissingExtraError
from lepton.evaluation.scorecard import Report, Scorecard

LATENCY_KEY = "b1_real"  # batch 1 over real dev inputs: the latency the plots use

_MISSING = "matplotlib is needed for report.html: pip install 'lepton[report]'"
_FRONT, _DOMINATED, _GROW, _SHRINK, _NEUTRAL = "#d6604d", "#9e9e9e", "#d6604d", "#4393c3", "#5f6b7a"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1d2228; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #dde1e6; }
h3 { margin-top: 1.6rem; }
.meta { color: #5f6b7a; margin: .2rem 0; }
.smoke { background: #fff4ce; border-left: 4px solid #c19c00; padding: .4rem .8rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #dde1e6; padding: .3rem .6rem; text-align: right; }
th { background: #f3f5f7; } td:first-child, th:first-child { text-align: left; }
tr.front td:first-child::after { content: " ◆"; color: #d6604d; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 1rem; }
figure { margin: 0; } figcaption { color: #5f6b7a; font-size: .88rem; }
svg.lepton-plot { width: 100%; height: auto; display: block; }
.verdict { font-weight: 600; } .note { color: #8a5a00; }
code { background: #f3f5f7; padding: 0 .25rem; border-radius: 3px; }
"""


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> set[int]:
    """Indices of the non-dominated points among (cost, quality) pairs: lower cost and higher quality
    are better. A point is dominated when another is at least as good on both and strictly better on
    one; equal points do not dominate each other. Points with a missing or NaN coordinate are never
    on the front."""
    valid = [i for i, (c, q) in enumerate(points)
             if c is not None and q is not None and not (math.isnan(c) or math.isnan(q))]
    front = set()
    for i in valid:
        ci, qi = points[i]
        if not any(points[j][0] <= ci and points[j][1] >= qi
                   and (points[j][0] < ci or points[j][1] > qi) for j in valid if j != i):
            front.add(i)
    return front


def _require_matplotlib() -> ModuleType:
    try:
        # The package itself first: a cached submodule must not hide a missing (or blocked) package.
        matplotlib = importlib.import_module("matplotlib")
        importlib.import_module("matplotlib.figure")
    except ImportError as err:
        raise MissingExtraError(_MISSING) from err
    return matplotlib


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _latency(card: Scorecard) -> float | None:
    lat = card.efficiency.latency_ms.get(LATENCY_KEY)
    return lat.p50 if lat is not None else None


def _headline(report: Report) -> str:
    return report.variants[0].quality.headline if report.variants else "metric"


# ------------------------------------------------------------------------------------- plots


def _svg(fig: Any, plot: str, title: str) -> str:
    """The figure as an inline <svg>: no XML prolog, doctype or metadata; ids prefixed with the plot
    name so several plots can share one page; class, data-plot and a <title> added."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{plot}-\1"', text)
    text = re.sub(r'(\b(?:xlink:)?href)="#([^"]+)"', rf'\1="#{plot}-\2"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{plot}-\1)", text)
    root_end = text.index(">")
    root = re.sub(r'\s(?:width|height)="[^"]*"', "", text[:root_end])
    root += (f' class="lepton-plot" data-plot="{plot}" role="img" aria-labelledby="{plot}-title"'
             f'><title id="{plot}-title">{_e(title)}</title>')
    return root + text[root_end + 1:]


def _figure(mpl: ModuleType) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e6e9ed", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=_NEUTRAL)
    ax.set_xticks([])
    ax.set_yticks([])


def _scatter_plot(mpl: ModuleType, report: Report, cost: str, plot: str) -> tuple[str, set[int]]:
    """Headline metric (CI as error bars) against a cost; returns the SVG and the front's indices."""
    headline = _headline(report)
    label = "batch-1 p50 latency (ms)" if cost == "latency" else "size (MB)"
    title = f"{headline} against {label}, Pareto front marked"
    fig, ax = _figure(mpl)
    points = []
    for card in report.variants:
        metric = card.quality.metrics.get(headline)
        x = _latency(card) if cost == "latency" else card.efficiency.size_mb
        points.append((x, metric.value if metric else None))
    front = pareto_front(points)
    shown = [i for i, (x, y) in enumerate(points) if x is not None and y is not None]
    if not shown:
        _no_data(ax, f"no variant has both {headline} and {label}")
    for i in shown:
        card, (x, y) = report.variants[i], points[i]
        m = card.quality.metrics[headline]
        on = i in front
        ax.errorbar([x], [y], yerr=[[max(0.0, y - m.ci95_low)], [max(0.0, m.ci95_high - y)]],
                    fmt="D" if on else "o", color=_FRONT if on else _DOMINATED, markersize=7 if on else 6,
                    capsize=4, elinewidth=1.2, zorder=3)
        ax.annotate(card.name, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)
    if len(front) > 1:
        xs, ys = zip(*sorted(points[i] for i in front))
        ax.plot(xs, ys, linestyle="--", color=_FRONT, linewidth=1, zorder=2)
    if shown:
        ax.plot([], [], "D", color=_FRONT, label="Pareto front")
        if len(front) < len(shown):
            ax.plot([], [], "o", color=_DOMINATED, label="dominated")
        ax.legend(loc="best", fontsize=9, frameon=False)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{headline} (95% CI)")
        ax.margins(x=0.15, y=0.12)
    ax.set_title(title, fontsize=11)
    return _svg(fig, plot, title), front


def _waterfall_plot(mpl: ModuleType, report: Report, cost: str, plot: str) -> str:
    """The first variant's value as a bar, then each next variant's change from the one before as
    a floating bar (blue: smaller, red: larger), then the last variant's value."""
    label = "batch-1 p50 latency (ms)" if cost == "latency" else "size (MB)"
    title = f"{label}: change from one variant to the next"
    fig, ax = _figure(mpl)
    values = [(c.name, _latency(c) if cost == "latency" else c.efficiency.size_mb)
              for c in report.variants]
    values = [(name, v) for name, v in values if v is not None]
    if not values:
        _no_data(ax, f"no variant has {label}")
    else:
        # (tick label, bottom, height, colour, bar label) per bar
        bars = [(values[0][0], 0.0, values[0][1], _NEUTRAL, f"{values[0][1]:.4g}")]
        for (_, before), (name, after) in zip(values, values[1:]):
            bars.append((name, min(before, after), abs(after - before),
                         _SHRINK if after < before else _GROW, f"{after - before:+.3g}"))
        if len(values) > 1:
            last_name, last = values[-1]
            bars.append((f"{last_name} (final)", 0.0, last, _NEUTRAL, f"{last:.4g}"))
        names, lows, heights, colors, texts = (list(column) for column in zip(*bars))
        xs = list(range(len(names)))
        drawn = ax.bar(xs, heights, bottom=lows, color=colors, width=0.6, zorder=3)
        ax.bar_label(drawn, labels=texts, padding=2, fontsize=8)
        for i in range(1, len(bars)):  # connectors: each bar starts where the previous one ended
            level = values[min(i, len(values)) - 1][1]
            ax.plot([i - 0.7, i - 0.3], [level, level], color="#8a939c", linewidth=0.8, zorder=2)
        tilt = len(names) > 3
        ax.set_xticks(xs, names, rotation=20 if tilt else 0, ha="right" if tilt else "center", fontsize=9)
        ax.set_ylabel(label)
        ax.set_ylim(0, max(v for _, v in values) * 1.15 or 1.0)
        ax.margins(x=0.05)
    ax.set_title(title, fontsize=11)
    return _svg(fig, plot, title)


def _plots(mpl: ModuleType, report: Report) -> tuple[list[tuple[str, str]], set[int], set[int]]:
    rc = {"svg.fonttype": "path", "svg.hashsalt": "lepton", "text.parse_math": False,
          "text.usetex": False, "font.size": 10}
    with mpl.rc_context(rc):
        latency_svg, latency_front = _scatter_plot(mpl, report, "latency", "quality-vs-latency")
        size_svg, size_front = _scatter_plot(mpl, report, "size", "quality-vs-size")
        captions = [
            (latency_svg, "Headline metric with its 95% CI against batch-1 p50 latency on real inputs. "
                          "Diamonds: the Pareto front (no other variant is both faster and better)."),
            (size_svg, "Headline metric against size on disk. Diamonds: the Pareto front (no other "
                       "variant is both smaller and better)."),
            (_waterfall_plot(mpl, report, "size", "waterfall-size"),
             "Size in report order: each bar is the change from the previous variant."),
            (_waterfall_plot(mpl, report, "latency", "waterfall-latency"),
             "Batch-1 p50 latency in report order: each bar is the change from the previous variant."),
        ]
    return captions, latency_front, size_front


# -------------------------------------------------------------------------------------- page


def _table(header: list[str], rows: list[list[str]], classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _details(card: Scorecard) -> list[str]:
    q, e = card.quality, card.efficiency
    stages = " → ".join(card.stage_path) or "(none)"
    out = [f'<section class="variant"><h3>{_e(card.name)}</h3>',
           f'<p class="meta">Stages: {_e(stages)}; evaluated on <code>{_e(card.split)}</code> '
           f"({card.n_examples} examples); runtime {_e(e.runtime)} on {_e(e.device)}, "
           f"{e.threads} threads.</p>"]
    out.append(_table(["metric", "value", "95% CI"],
                      [[name, f"{m.value:.4f}", f"[{m.ci95_low:.4f}, {m.ci95_high:.4f}]"]
                       for name, m in q.metrics.items()]))
    if q.per_class:
        out.append(_table(["class", "precision", "recall", "F1", "support"],
                          [[r.label, f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.f1:.4f}", str(r.support)]
                           for r in q.per_class]))
    c = card.comparison
    if c is not None:
        p_mcnemar = f", McNemar p = {c.p_mcnemar:.3g}" if c.p_mcnemar is not None else ""
        gains = [f"{name} {v:.2f}x" for name, v in (("batch-1 speed-up", c.speedup_b1),
                 ("throughput speed-up", c.speedup_throughput), ("smaller by", c.smaller)) if v is not None]
        out.append(f'<p>Against <code>{_e(c.baseline)}</code>: <span class="verdict">{_e(c.verdict)}</span> '
                   f"({_e(c.metric)} Δ {c.delta:+.4f}, 95% CI [{c.ci95_low:+.4f}, {c.ci95_high:+.4f}], "
                   f"bootstrap p = {c.p_bootstrap:.3g}{p_mcnemar}); efficiency: "
                   f'<span class="verdict">{_e(c.label)}</span>'
                   + (f" ({_e(', '.join(gains))})" if gains else "") + ".</p>")
    r = card.robustness
    if r is not None:
        out.append(f"<p>Robustness ({_e(r.metric)}, perturbation rate {r.rate:.0%}, seed {r.seed}); "
                   f"clean {r.clean:.4f}:</p>")
        out.append(_table(["perturbation", r.metric, "drop"],
                          [[name, f"{value:.4f}", f"{r.drop.get(name, r.clean - value):+.4f}"]
                           for name, value in r.perturbed.items()]))
    if card.calibration is not None:
        out.append(f"<p>Calibration: expected calibration error (ECE) {card.calibration.ece:.4f} "
                   f"over {len(card.calibration.bins)} confidence bins.</p>")
    from lepton.pipeline.report_whom import sections  # slices and counterfactual fairness

    for text, header, rows in sections(card):
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))  # escaped first: only our tags
        out += [f"<p>{text}</p>", _table(header, rows)]
    from lepton.pipeline import report_why  # token attributions, a sample of examples shaded

    for text, header, rows in report_why.sections(card):
        out += [f"<p>{_e(text)}</p>"] + ([_table(header, rows)] if rows else [])
    out.append(report_why.samples_html(card))
    out += [f'<p class="note">Note: {_e(note)}</p>' for note in card.notes]
    out.append("</section>")
    return out


def to_html(report: Report) -> str:
    """The whole report as one self-contained HTML page (needs matplotlib: ``lepton[report]``)."""
    from lepton.evaluation.environment import describe
    from lepton.pipeline.report_table import smoke_note, table_rows

    mpl = _require_matplotlib()
    name = report.recipe.get("name") if isinstance(report.recipe, dict) else None
    title = f"Lepton report: {name}" if name else "Lepton report"
    plots, latency_front, size_front = _plots(mpl, report)
    header, rows = table_rows(report)
    names = [c.name for c in report.variants]
    classes = ["front" if i in latency_front else "" for i in range(len(rows))]

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f'<p class="meta">Created {_e(report.created)} by Lepton {_e(report.lepton_version)}.</p>',
             f'<p class="meta">Machine: {_e(describe(report.environment))}.</p>']
    if smoke_note(report):
        parts.append(f'<p class="smoke"><strong>{_e(smoke_note(report).capitalize())}.</strong></p>')
    if report.baseline:
        parts.append(f'<p class="meta">Baseline for deltas: <code>{_e(report.baseline)}</code>.</p>')
    parts += ["<h2>Variants side by side</h2>", _table(header, rows, classes),
              '<p class="meta">Brackets: 95% percentile-bootstrap confidence intervals. ◆: on the '
              "quality/latency Pareto front. Latency is specific to the machine above.</p>",
              "<h2>Trade-offs</h2>",
              '<p class="meta">Pareto front, quality against latency: '
              f"{_e(', '.join(names[i] for i in sorted(latency_front)) or '(none)')}; "
              f"quality against size: {_e(', '.join(names[i] for i in sorted(size_front)) or '(none)')}.</p>",
              '<div class="plots">']
    parts += [f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>" for svg, caption in plots]
    parts += ["</div>", "<h2>Variants in detail</h2>"]
    for card in report.variants:
        parts += _details(card)
    if report.stages:
        stage_rows = [[str(s.get("index", "")), str(s.get("name", "")), f"{s.get('seconds', 0):.1f}"]
                      for s in report.stages]
        parts += ["<h2>Stages</h2>", _table(["#", "stage", "seconds"], stage_rows)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
