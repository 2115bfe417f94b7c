"""Why a model decides, in the reports: faithfulness of each variant's token attributions, their
agreement with the baseline's, the examples whose reasons diverge most, and (report.html) a
sample of evaluation examples with their tokens shaded."""

from __future__ import annotations

import html

from lepton.evaluation.explanation import Explanation, TokenScores
from lepton.evaluation.scorecard import Scorecard
from lepton.tasks.quality import Metric

Section = tuple[str, list[str], list[list[str]]]  # (paragraph, table header, table rows)
_METHOD = {"occlusion": "occlusion (leave one token out)", "ig": "integrated gradients"}
_TARGET = {"baseline prediction": "the class the baseline predicted", "own prediction": "the class it predicted"}


def _ci(m: Metric, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(m.value)} [{f.format(m.ci95_low)}, {f.format(m.ci95_high)}]"


def faithfulness_section(e: Explanation) -> Section:
    f = e.faithfulness
    shares = ", ".join(f"{x:.0%}" for x in f.fractions)
    text = (f"Why: token attributions by {_METHOD.get(e.method, e.method)} on {e.items} examples, explaining "
            f"{_TARGET.get(e.target, e.target)} ({e.seconds:.1f} s). Faithfulness: the explained class's "
            f"probability drop when the top {shares} of the tokens are removed (comprehensiveness, higher is "
            "better) or kept alone (sufficiency, lower is better), averaged; against a seeded random "
            "ranking of the same tokens (the gain is paired per example; > 0 means better than random).")
    rows = [["comprehensiveness", _ci(f.comprehensiveness), _ci(f.random_comprehensiveness),
             _ci(f.comprehensiveness_gain, signed=True)],
            ["sufficiency", _ci(f.sufficiency), _ci(f.random_sufficiency), _ci(f.sufficiency_gain, signed=True)]]
    return text, ["measure", "attributions [95% CI]", "random ranking [95% CI]", "gain over random [95% CI]"], rows


def agreement_section(e: Explanation) -> Section | None:
    a = e.agreement
    if a is None:
        return None
    text = (f"Does compression change why? Against `{a.baseline}` on {a.n} examples tokenized alike: "
            f"top-{a.top_fraction:.0%} token overlap {_ci(a.top_k_overlap)}, Spearman rank correlation "
            f"{_ci(a.spearman)} (1: the same reasons).")
    if a.divergent:
        text += " The examples whose reasons diverge most:"
    rows = [[f"#{d.index}", f"{d.spearman:+.3f}", " ".join(d.tokens), " · ".join(d.baseline_top), " · ".join(d.top)]
            for d in a.divergent]
    return text, ["example", "Spearman", "tokens", f"{a.baseline}'s top tokens", "this variant's"], rows


def sections(card: Scorecard) -> list[Section]:
    e = card.explanation
    if e is None:
        return []
    agree = agreement_section(e)
    return [faithfulness_section(e)] + ([agree] if agree is not None else [])


def markdown(card: Scorecard) -> list[str]:
    lines: list[str] = []
    for text, header, rows in sections(card):
        lines += ["", text]
        if rows:
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return lines


def _shaded(sample: TokenScores) -> str:
    """One example as HTML: each token on a background green (for the class) or red (against),
    stronger with the share of the example's largest absolute score."""
    scale = max((abs(s) for s in sample.scores), default=0.0) or 1.0
    spans = []
    for token, score in zip(sample.tokens, sample.scores):
        alpha = min(abs(score) / scale, 1.0) * 0.8
        colour = f"rgba(46,160,67,{alpha:.2f})" if score >= 0 else f"rgba(218,54,51,{alpha:.2f})"
        spans.append(f'<span style="background:{colour};padding:0 2px;border-radius:3px" '
                     f'title="{score:+.4f}">{html.escape(token)}</span>')
    return (f'<p class="tokens">#{sample.index} → <strong>{html.escape(sample.label)}</strong> '
            f"({sample.probability:.3f}): " + " ".join(spans) + "</p>")


def samples_html(card: Scorecard) -> str:
    """The variant's rendered sample of evaluation examples, or '' without one."""
    e = card.explanation
    if e is None or not e.samples:
        return ""
    return ('<p class="meta">Sample of explained examples (green: for the class shown, red: against it; '
            "hover for the score):</p>" + "".join(_shaded(s) for s in e.samples))
