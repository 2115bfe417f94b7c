"""report.html: self-contained, escaped, four plots with the Pareto front; renders in Chromium."""

from __future__ import annotations

import logging
import re
import struct
import sys
from pathlib import Path

import pytest

from lepton.core.errors import MissingExtraError
from lepton.evaluation.environment import fingerprint
from lepton.evaluation.scorecard import Calibration, Comparison, Efficiency, LatencyStats, Report, Robustness, Scorecard
from lepton.pipeline import report as report_module
from lepton.pipeline.report_html import pareto_front, to_html
from lepton.tasks.quality import sequence_quality
from tests.conftest import chromium, needs_chromium

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False
# Only drawing needs the extra; the Pareto function and the missing-extra path do not.
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB,
                                      reason="report.html needs matplotlib: pip install 'lepton[report]'")

PLOTS = {"quality-vs-latency", "quality-vs-size", "waterfall-size", "waterfall-latency"}
EVIL = '<script>alert("x")</script>'
TRUE = [0, 1, 1, 0, 1, 0, 1, 1, 0, 1]


def card(name: str, pred: list[int], p50: float | None, size_mb: float, path: list[str]) -> Scorecard:
    quality = sequence_quality(TRUE, pred, ["neg", "pos"], resamples=100)
    latency = {} if p50 is None else {"b1_real": LatencyStats(
        p50=p50, p95=p50 * 1.2, p99=p50 * 1.3, mean=p50, min=p50 * 0.9, max=p50 * 1.5, n=10,
        tokens_mean=12.0)}
    eff = Efficiency(runtime="torch", device="cpu", threads=2, warmup=1, latency_ms=latency,
                     throughput={"b32": 100.0}, peak_rss_mb=500.0, peak_rss_note="test", size_mb=size_mb,
                     params=22_000_000, nonzero_params=22_000_000, sparsity=0.0, flops_per_item=1e9,
                     seconds=1.0)
    return Scorecard(name=name, stage_path=path, split="dev", n_examples=len(TRUE), quality=quality,
                     efficiency=eff)


def comparison(delta: float, verdict: str, label: str) -> Comparison:
    return Comparison(baseline="finetune", metric="accuracy", delta=delta, ci95_low=delta - 0.2,
                      ci95_high=delta + 0.25, p_bootstrap=0.3, p_mcnemar=0.5, significant=False,
                      verdict=verdict, speedup_b1=2.0, speedup_throughput=1.8, smaller=1.5, label=label)


def build_report(last_name: str = "quantize") -> Report:
    """finetune (the baseline) -> drop_layers -> quantize, the last two with comparisons."""
    base = card("finetune", TRUE, 10.0, 90.0, ["finetune"])
    base.robustness = Robustness(seed=0, rate=0.1, metric="accuracy", clean=1.0,
                                 perturbed={"typos": 0.9, "drop_words": 0.8},
                                 drop={"typos": 0.1, "drop_words": 0.2})
    base.calibration = Calibration(ece=0.0421, bins=[{"lower": 0.0, "upper": 1.0, "count": 10,
                                                      "mean_confidence": 0.9, "accuracy": 1.0}])
    drop = card("drop_layers", [0, 1, 1, 0, 1, 0, 1, 0, 0, 1], 5.0, 60.0, ["finetune", "drop_layers"])
    drop.comparison = comparison(-0.1, "no significant change", "faster and smaller")
    last = card(last_name, [0, 1, 1, 0, 1, 0, 0, 0, 0, 1], 6.0, 20.0, ["finetune", "drop_layers", "quantize"])
    last.comparison = comparison(-0.2, "no significant change", "faster and smaller")
    last.notes.append("dynamic int8 & friends")
    return Report(lepton_version="0.1.0", created="2025-01-01T00:00:00+00:00",
                  recipe={"name": "sst2-minilm", "model": "builtin:minilm-l6",
                          "task": {"kind": "sequence_classification"},
                          "data": {"dev": {"path": "../shared/data/sst2/dev.tsv"}}},
                  baseline="finetune", variants=[base, drop, last], environment=fingerprint(0),
                  stages=[{"index": 0, "name": "finetune", "seconds": 12.5, "summary": {}},
                          {"index": 1, "name": "drop_layers", "seconds": 1.0, "summary": {}},
                          {"index": 2, "name": "quantize", "seconds": 2.0, "summary": {}}])


def plot_svgs(page: str) -> dict[str, str]:
    """data-plot name -> the whole <svg> element, for every plot on the page."""
    found = re.findall(r'(<svg\b[^>]*\bdata-plot="([^"]+)"[^>]*>.*?</svg>)', page, flags=re.S)
    return {name: svg for svg, name in found}


@pytest.fixture(scope="module")
def page() -> str:
    return to_html(build_report())


# ----------------------------------------------------------------------------- Pareto front


def test_pareto_front_hand_made_case() -> None:
    points = [
        (10.0, 0.90),  # 0: best quality -> front
        (5.0, 0.88),   # 1: faster, a bit worse -> front
        (6.0, 0.85),   # 2: slower and worse than 1 -> dominated
        (5.0, 0.88),   # 3: equal to 1: equals do not dominate each other -> front
        (2.0, 0.70),   # 4: fastest -> front
        (12.0, 0.90),  # 5: as good as 0 but slower -> dominated
        (None, 0.99),  # 6: no latency -> never on the front
        (3.0, float("nan")),  # 7: no metric -> never on the front
    ]
    assert pareto_front(points) == {0, 1, 3, 4}
    assert pareto_front([(1.0, 0.5)]) == {0}
    assert pareto_front([]) == set()


@needs_matplotlib
def test_plots_mark_the_pareto_front_of_the_report(page: str) -> None:
    # latency: finetune (10 ms, 1.0), drop_layers (5 ms, 0.9), quantize (6 ms, 0.8) -> quantize dominated
    assert "quality against latency: finetune, drop_layers;" in page
    # size: 90, 60, 20 MB with falling accuracy -> every variant is on the front
    assert "quality against size: finetune, drop_layers, quantize." in page


# ------------------------------------------------------------------------------- the page


@needs_matplotlib
def test_page_has_the_four_plots_table_and_details(page: str) -> None:
    svgs = plot_svgs(page)
    assert set(svgs) == PLOTS
    for name, svg in svgs.items():
        assert 'class="lepton-plot"' in svg and "<title" in svg, name
    assert page.count('class="lepton-plot"') == 4
    assert not page.lstrip().startswith("<?xml") and "<?xml" not in page and "<!DOCTYPE svg" not in page
    # the side-by-side table, the machine line and the per-variant details
    assert "Variants side by side" in page and "b1 p50 ms" in page
    assert "Machine: " in page
    for name in ("finetune", "drop_layers", "quantize"):
        assert f"<h3>{name}</h3>" in page
    assert "no significant change" in page and "faster and smaller" in page
    assert "typos" in page and "+0.2000" in page  # robustness drop
    assert "0.0421" in page  # ECE
    assert "<td>accuracy</td><td>1.0000</td><td>[1.0000, 1.0000]</td>" in page  # metric with its CI
    assert "dynamic int8 &amp; friends" in page


@needs_matplotlib
def test_ids_are_unique_across_plots(page: str) -> None:
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', page):
        assert ref in ids, ref


@needs_matplotlib
def test_nothing_is_fetched_from_outside(page: str) -> None:
    for attr, value in re.findall(r'\b((?:[\w-]+:)?(?:src|href))\s*=\s*"([^"]*)"', page):
        assert not re.match(r"\s*(https?:)?//", value), (attr, value)
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert "@import" not in page and "url(http" not in page
    # http(s) appears only in xmlns attributes
    for match in re.finditer(r"https?://", page):
        before = page[max(0, match.start() - 20):match.start()]
        assert re.search(r'xmlns(:\w+)?="$', before), before


@needs_matplotlib
def test_text_from_the_report_is_escaped() -> None:
    page = to_html(build_report(last_name=EVIL))
    assert EVIL not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<script" not in page


@needs_matplotlib
def test_one_variant_without_optional_parts() -> None:
    report = build_report()
    only = report.variants[1].model_copy(update={"comparison": None, "robustness": None,
                                                 "calibration": None})
    page = to_html(report.model_copy(update={"variants": [only], "baseline": None, "stages": []}))
    assert set(plot_svgs(page)) == PLOTS
    assert "quality against latency: drop_layers;" in page


@needs_matplotlib
def test_variants_without_latency_still_give_four_plots() -> None:
    report = build_report()
    cards = [c.model_copy(update={"efficiency": c.efficiency.model_copy(update={"latency_ms": {}})})
             for c in report.variants]
    page = to_html(report.model_copy(update={"variants": cards}))
    assert set(plot_svgs(page)) == PLOTS
    assert "quality against latency: (none)" in page


@needs_matplotlib
def test_empty_report_still_renders() -> None:
    page = to_html(build_report().model_copy(update={"variants": [], "baseline": None}))
    assert set(plot_svgs(page)) == PLOTS


# ------------------------------------------------------------------ without the extra


def test_missing_matplotlib_raises_and_write_report_skips_html(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(report_module, "_warned_no_html", False)
    with pytest.raises(MissingExtraError, match=r"pip install 'lepton\[report\]'"):
        to_html(build_report())
    caplog.set_level(logging.WARNING, logger="lepton.pipeline.report")
    for out in (tmp_path / "a", tmp_path / "b"):
        out.mkdir()
        report_module.write_report(build_report(), out)
        assert (out / "report.json").is_file() and (out / "report.md").is_file()
        assert not (out / "report.html").exists()
    warnings = [r for r in caplog.records if "report.html skipped" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not once per report


@needs_matplotlib
def test_write_report_writes_html(tmp_path) -> None:
    report_module.write_report(build_report(), tmp_path)
    assert set(plot_svgs((tmp_path / "report.html").read_text(encoding="utf-8"))) == PLOTS


# -------------------------------------------------------------------------------- Chromium

@pytest.fixture(scope="module")
def html_file(tmp_path_factory, page: str) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


@needs_matplotlib
@needs_chromium
def test_chromium_dom_has_the_four_plots(tmp_path, html_file: Path) -> None:
    done = chromium(tmp_path, "--dump-dom", html_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    plots = re.findall(r'<svg\b[^>]*class="lepton-plot"[^>]*data-plot="([^"]+)"', dom)
    assert sorted(plots) == sorted(PLOTS)


@needs_matplotlib
@needs_chromium
def test_chromium_screenshot_is_a_png(tmp_path, html_file: Path) -> None:
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", html_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 2000)
    assert len(data) > 20_000  # a blank page compresses to a few KB; plots and tables do not
