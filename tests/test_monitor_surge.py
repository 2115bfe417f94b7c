"""Windows and the surge rule on synthetic counts: it fires on a real surge, stays within its
stated false-alarm rate on noise, and runs alert episodes open -> update -> close."""

from __future__ import annotations

import math
import random

import pytest

pytest.importorskip("scipy")

from lepton.monitor.config import MonitorConfigError, SurgeConfig, load_config, parse_config
from lepton.monitor.surge import TopicDetector, fisher_greater, judge_window, window_start


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def test_windows_align_to_the_epoch_and_hold_their_start() -> None:
    assert window_start(1_700_000_123.4, 60) == 1_700_000_100.0
    assert window_start(1_700_000_100.0, 60) == 1_700_000_100.0  # a start belongs to its window
    assert window_start(1_700_000_099.999, 60) == 1_700_000_040.0
    assert window_start(-1.0, 300) == -300.0


def test_fisher_p_value_matches_a_hand_computed_hypergeometric_tail() -> None:
    # Window 3 of 3 negative, baseline 0 of 3: P(all 3 negatives land in the window) = 1 / C(6, 3).
    assert fisher_greater(3, 3, 0, 3) == pytest.approx(1 / math.comb(6, 3))
    assert fisher_greater(0, 10, 5, 10) == pytest.approx(1.0)  # lower share: no evidence at all


def test_rule_needs_its_minimum_counts() -> None:
    cfg = SurgeConfig(alpha=0.01, min_count=10, min_negative=3, min_baseline=30)
    assert judge_window(9, 9, 100, 10, cfg).p_value is None  # window too small: not tested
    assert judge_window(20, 15, 29, 2, cfg).p_value is None  # baseline too small
    fired = judge_window(20, 15, 100, 10, cfg)
    assert fired.fired and fired.p_value < 1e-6
    assert not judge_window(20, 2, 100, 1, cfg).fired  # significant maybe, but only 2 negatives
    lifted = SurgeConfig(alpha=0.01, min_lift=0.5)
    assert not judge_window(40, 20, 400, 40, lifted).fired  # 50% vs 10%: a lift of 0.4 < 0.5


def test_fires_on_a_real_surge_within_one_window_and_the_episode_closes_after_it() -> None:
    rng = random.Random(1)
    cfg = SurgeConfig(alpha=0.001, baseline_windows=12, close_after=2)
    det = TopicDetector("business", cfg, width=60)
    events = []
    for w in range(60):
        p = 0.45 if 30 <= w < 34 else 0.1  # a 4-window surge from 10% to 45% negative
        _, evs = det.close_window(w * 60.0, 40, binomial(rng, 40, p))
        events += [(w, e.kind) for e in evs]
    opened = [w for w, k in events if k == "opened"]
    closed = [w for w, k in events if k == "closed"]
    assert opened == [30]  # detected in the surge's first window, and only once
    assert closed == [36]  # two quiet windows after the last firing one, seen at the next window
    updates = [w for w, k in events if k == "updated"]
    assert set(updates) <= {31, 32, 33}
    # The surge never entered the baseline: it is back to the quiet windows' share.
    base_n, base_k = det.baseline_counts()
    assert base_k / base_n < 0.2


def test_false_alarm_rate_on_noise_is_within_the_stated_level() -> None:
    """Stationary streams of several negative shares and window sizes: the share of tested
    windows that fire stays at or below alpha (the test is exact-conditional, so conservative)."""
    alpha = 0.01
    cfg = SurgeConfig(alpha=alpha, min_count=10, min_negative=1, min_baseline=30, baseline_windows=12,
                      close_after=1)
    rng = random.Random(7)
    tested = fired = 0
    for p in (0.05, 0.15, 0.3, 0.5):
        det = TopicDetector("t", cfg, width=60)
        for w in range(2500):
            n = rng.randint(15, 80)
            in_episode = det.in_episode
            test, _ = det.close_window(w * 60.0, n, binomial(rng, n, p))
            if test.p_value is not None and not in_episode:
                tested += 1
                fired += test.fired
    rate = fired / tested
    # A one-sided 99% upper bound on the true rate (normal approximation) must not exceed
    # alpha; the point estimate itself is well below it.
    upper = rate + 2.33 * math.sqrt(max(rate, 1e-9) * (1 - rate) / tested)
    assert tested > 9000
    assert upper <= alpha, (fired, tested, rate)
    assert fired > 0  # the rule can fire on noise at all: this is not a check that cannot fail


def test_detection_on_a_weak_surge_takes_more_windows_than_on_a_strong_one() -> None:
    def first_alert(p_surge: float, seed: int) -> int | None:
        rng = random.Random(seed)
        det = TopicDetector("t", SurgeConfig(alpha=0.001), width=60)
        for w in range(40):
            _, evs = det.close_window(w * 60.0, 30, binomial(rng, 30, p_surge if w >= 20 else 0.1))
            if any(e.kind == "opened" for e in evs):
                return w - 20
        return None

    strong = [first_alert(0.6, s) for s in range(20)]
    weak = [first_alert(0.25, s) for s in range(20)]
    assert all(d == 0 for d in strong)
    assert sum(d is None or d > 0 for d in weak) > 0


def test_config_is_strict_and_names_the_key(tmp_path) -> None:
    with pytest.raises(MonitorConfigError, match=r"unknown key 'surge.alpah'; did you mean 'alpha'\?"):
        parse_config({"surge": {"alpah": 0.01}})
    with pytest.raises(MonitorConfigError, match=r"window.width_s: Input should be greater than 0"):
        parse_config({"window": {"width_s": 0}})
    with pytest.raises(MonitorConfigError, match=r"store: .*sqlite:/// or postgresql://"):
        parse_config({"store": {"url": "mysql://x"}})
    with pytest.raises(MonitorConfigError, match=r"alerts.webhook.url: required key is missing"):
        parse_config({"alerts": {"webhook": {"timeout_s": 1}}})
    path = tmp_path / "m.yaml"
    path.write_text('window:\n  width_s: "${W:-60}"\nsurge: {alpha: 0.01}\n')
    cfg = load_config(path, overrides=["surge.min_count=5"], env={})
    assert cfg.window.width_s == 60 and cfg.surge.min_count == 5
    path.write_text("window: [\n")
    with pytest.raises(MonitorConfigError, match=r"m.yaml:\d+: not valid YAML"):
        load_config(path)


def test_cli_reports_config_and_source_errors_in_one_line(tmp_path, capsys) -> None:
    from lepton.cli import main

    bad = tmp_path / "monitor.yaml"
    bad.write_text("window: {widht_s: 60}\n")
    assert main(["monitor", str(tmp_path / "no-model"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lepton: error: {bad}: unknown key 'window.widht_s'; did you mean 'width_s'? "
                   "(valid here: width_s, lateness_s, max_ahead_s)"]
    assert main(["monitor", "m", "--source", "folow:x.jsonl"]) == 2
    assert "unknown kind 'folow'; did you mean 'follow'?" in capsys.readouterr().err
    assert main(["monitor", "m", "--source", f"replay:{tmp_path / 'none.jsonl'}"]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert main(["monitor", "a", "b", "c"]) == 2
    assert "one multi-task model or two models" in capsys.readouterr().err
