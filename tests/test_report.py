"""report.json schema stays in sync; report.md and the table render every variant."""

from __future__ import annotations

from pathlib import Path

from lepton.evaluation.environment import fingerprint
from lepton.evaluation.scorecard import Comparison, Efficiency, LatencyStats, Report, Scorecard
from lepton.pipeline.report import table_rows, to_markdown
from lepton.pipeline.schema import render
from lepton.tasks.quality import sequence_quality

ROOT = Path(__file__).resolve().parents[1]


def test_committed_json_schema_matches_the_code() -> None:
    committed = (ROOT / "docs" / "report.schema.json").read_text()
    assert committed == render(), "regenerate: python -m lepton.pipeline.schema > docs/report.schema.json"


def _card(name: str, acc_pred: list[int], p50: float, path: list[str]) -> Scorecard:
    quality = sequence_quality([0, 1, 1, 0, 1, 0, 1, 1], acc_pred, ["neg", "pos"], resamples=100)
    lat = LatencyStats(p50=p50, p95=p50 * 1.2, p99=p50 * 1.3, mean=p50, min=p50 * 0.9, max=p50 * 1.5,
                       n=10, tokens_mean=12.0)
    eff = Efficiency(runtime="torch", device="cpu", threads=2, warmup=1, latency_ms={"b1_real": lat},
                     throughput={"b32": 100.0}, peak_rss_mb=500.0, peak_rss_note="test", size_mb=90.0,
                     params=22_000_000, nonzero_params=22_000_000, sparsity=0.0, flops_per_item=1e9,
                     seconds=1.0)
    return Scorecard(name=name, stage_path=path, split="dev", n_examples=8, quality=quality, efficiency=eff)


def test_markdown_and_table_show_every_variant_with_deltas() -> None:
    base = _card("finetune", [0, 1, 1, 0, 1, 0, 1, 1], 10.0, ["finetune"])
    other = _card("drop", [0, 1, 1, 0, 1, 0, 0, 0], 5.0, ["finetune", "drop"])
    other.comparison = Comparison(baseline="finetune", metric="accuracy", delta=-0.25, ci95_low=-0.5,
                                  ci95_high=-0.125, p_bootstrap=0.01, p_mcnemar=0.5, significant=True,
                                  verdict="significantly worse", speedup_b1=2.0, speedup_throughput=1.9,
                                  smaller=1.0, label="faster")
    report = Report(lepton_version="0", created="now", recipe={}, baseline="finetune",
                    variants=[base, other], environment=fingerprint(0))
    header, rows = table_rows(report)
    assert [r[0] for r in rows] == ["finetune", "drop"]
    assert rows[1][header.index("Δ vs baseline [95% CI]")] == "-0.2500* [-0.5000, -0.1250]"
    assert rows[1][header.index("speed-up")] == "2.00x"
    assert rows[0][header.index("verdict")] == "baseline"
    assert rows[1][header.index("verdict")] == "significantly worse; faster"
    md = to_markdown(report)
    assert "| finetune | 1.0000 [1.0000, 1.0000] |" in md
    assert "## drop" in md and "Confusion matrix" in md
    # report.json round-trips through its typed schema
    assert Report.model_validate_json(report.model_dump_json()) == report
