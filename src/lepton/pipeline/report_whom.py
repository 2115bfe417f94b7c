"""Whom the errors fall on, in the reports: quality per slice and counterfactual fairness.

One set of tables (``sections``) that report.md and report.html both render, and the model
card's "Bias, risks and limitations" lines with the final model's numbers.
"""

from __future__ import annotations

from typing import Any

from lepton.evaluation.fairness import Fairness
from lepton.evaluation.scorecard import Report, Scorecard
from lepton.evaluation.slices import Slices
from lepton.evaluation.stereotypes import StereotypePreference

Section = tuple[str, list[str], list[list[str]]]  # (paragraph, table header, table rows)


def _ci(value: float, low: float, high: float, signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def _delta(delta: Any, low: Any, high: Any, significant: bool | None) -> str:
    if delta is None:
        return "-"
    return _ci(delta, low, high, signed=True).replace(" [", "* [" if significant else " [", 1)


def slice_section(s: Slices) -> Section:
    against = (f"; Δ: this variant minus `{s.baseline}` on the same examples, * where its paired 95% CI "
               "excludes 0" if s.baseline else "")
    text = (f"Slices ({s.metric} per slice with 95% CIs{against}; slices under {s.min_examples} examples "
            f"are marked small and not ranked): {s.verdict}.")
    if s.notes:
        text += " Note: " + "; ".join(s.notes) + "."
    header = ["slice", "examples", f"{s.metric} [95% CI]"] + (["Δ vs baseline [95% CI]"] if s.baseline else [])
    rows = []
    for r in s.rows:
        row = [r.name + (" (small)" if r.small else ""), str(r.n), _ci(r.value, r.ci95_low, r.ci95_high)]
        if s.baseline:
            row.append(_delta(r.delta, r.delta_ci95_low, r.delta_ci95_high, r.significant))
        rows.append(row)
    return text, header, rows


def fairness_section(f: Fairness) -> Section:
    total = sum(g.n_rewritten for g in f.groups)
    text = (f"Counterfactual fairness ({f.lexicon} lexicon, {f.pairs} term pairs): each group's terms swapped "
            f"in the examples that hold one ({total} rewrites of {f.n_examples} examples; the others are "
            "not rewritten). Flip rate: share whose predicted label changes; probability shift: mean "
            "total-variation distance of the class probabilities.")
    if f.baseline:
        text += (f" Δ against `{f.baseline}` on the same rewrites (* where the paired 95% CI excludes 0; a "
                 f"shift increase counts only past {f.min_shift:g}; groups marked small are not flagged): "
                 + (f"significantly more sensitive to the swaps of {', '.join(f.increased)}." if f.increased
                    else "not significantly more sensitive to any group's swaps."))
    header = ["group", "rewritten", "flip rate [95% CI]", "probability shift [95% CI]"]
    header += ["Δ flip rate", "Δ shift"] if f.baseline else []
    rows = []
    for g in f.groups:
        if g.flip_rate is None or g.prob_shift is None:
            rows.append([g.group, "0", "-", "-"] + (["-", "-"] if f.baseline else []))
            continue
        flips = _ci(g.flip_rate.value, g.flip_rate.ci95_low, g.flip_rate.ci95_high)
        row = [g.group + (" (small)" if g.small else ""), str(g.n_rewritten), flips,
               _ci(g.prob_shift.value, g.prob_shift.ci95_low, g.prob_shift.ci95_high)]
        if f.baseline:
            for d in (g.flip_delta, g.shift_delta):
                row.append(_delta(d.delta, d.ci95_low, d.ci95_high, d.significant) if d else "-")
        rows.append(row)
    return text, header, rows


def stereotype_section(s: StereotypePreference) -> Section:
    m = s.prefers_stereotype
    text = (f"Stereotype preference (Lepton's {s.pairs} built-in sentence pairs, CrowS-Pairs style): the "
            f"model gives the stereotyped sentence the higher likelihood in {_ci(m.value, m.ci95_low, m.ci95_high)} "
            "of the pairs (0.5: no preference).")
    if s.delta is not None:
        d = s.delta
        text += (f" Against `{s.baseline}` on the same pairs: {_delta(d.delta, d.ci95_low, d.ci95_high, d.significant)}"
                 + (" (significant)." if d.significant else " (no significant change)."))
    rows = [[c.category, str(c.pairs), _ci(c.prefers_stereotype.value, c.prefers_stereotype.ci95_low,
                                           c.prefers_stereotype.ci95_high)] for c in s.categories]
    return text, ["category", "pairs", "prefers the stereotype [95% CI]"], rows


def sections(card: Scorecard) -> list[Section]:
    out = []
    if card.slices is not None:
        out.append(slice_section(card.slices))
    if card.fairness is not None:
        out.append(fairness_section(card.fairness))
    if card.stereotypes is not None:
        out.append(stereotype_section(card.stereotypes))
    return out


def markdown(card: Scorecard) -> list[str]:
    """report.md lines for one variant's slices and fairness (none when neither was measured)."""
    lines: list[str] = []
    for text, header, rows in sections(card):
        lines += ["", text, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def card_lines(report: Report, final: Scorecard | None) -> list[str]:
    """The model card's measured bias lines: the final model's worst slice and slice drops, and its
    counterfactual flip rates per group (with the baseline's beside them)."""
    if final is None:
        return []
    lines = []
    if final.slices is not None:
        lines.append(f"- Slices of `{final.split}` ({final.slices.metric}): {final.slices.verdict}.")
    if final.stereotypes is not None:
        m = final.stereotypes.prefers_stereotype
        lines.append(f"- Stereotype preference: the model finds the stereotyped sentence more likely in "
                     f"{m.value:.1%} [{m.ci95_low:.1%}, {m.ci95_high:.1%}] of {final.stereotypes.pairs} built-in "
                     "sentence pairs (50%: no preference).")
    f = final.fairness
    if f is not None:
        base = next((c for c in report.variants if c.name == f.baseline), None)
        base_groups = {g.group: g for g in base.fairness.groups} if base and base.fairness else {}
        for g in f.groups:
            if g.flip_rate is None:
                lines.append(f"- Counterfactual {g.group}: no evaluation example holds one of its terms.")
                continue
            was = base_groups.get(g.group)
            then = (f" (baseline `{f.baseline}`: {was.flip_rate.value:.1%})"
                    if was is not None and was.flip_rate is not None else "")
            lines.append(f"- Counterfactual {g.group} ({f.lexicon} lexicon): swapping its terms changes "
                         f"{g.flip_rate.value:.1%} [{g.flip_rate.ci95_low:.1%}, {g.flip_rate.ci95_high:.1%}] "
                         f"of the predictions on {g.n_rewritten} rewritten examples{then}; mean probability "
                         f"shift {g.prob_shift.value:.4f}" + (" (significantly more than the baseline)"
                                                             if g.increased else "") + ".")
    return lines
