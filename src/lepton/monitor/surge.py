"""Windows per topic and the surge rule: pure logic, no storage (the engine persists it).

The rule, per topic, when a window closes: compare the window's negative items ``k`` of ``n``
with the topic's baseline, the pooled counts ``K`` of ``N`` of its last ``baseline_windows``
closed windows that lay outside any alert episode, by a one-sided Fisher exact test
(H1: the window's negative share is higher). The window fires when p <= alpha, n >= min_count,
k >= min_negative, N >= min_baseline and k/n - K/N >= min_lift. Fisher's test conditions on the
table's margins, so under a stationary negative share a window fires with probability at most
alpha whatever that share is: alpha is the false-alarm rate per topic and window (at most; the
test is conservative on small counts). With T topics, up to T x alpha of the windows of one
time span raise a false alarm.

Episodes: the first firing window opens an alert; later firing windows update it; it closes once
``close_after`` windows in a row have passed without a firing (a window with no items counts as
quiet). Windows inside an episode never enter the baseline, so a long surge cannot teach the
baseline that it is normal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lepton.monitor.config import SurgeConfig


def window_start(ts: float, width: float) -> float:
    """The start of the tumbling window that holds time ``ts`` (windows align to the epoch)."""
    return math.floor(ts / width) * width


def fisher_greater(k: int, n: int, base_k: int, base_n: int) -> float:
    """One-sided p-value that the window's share k/n exceeds the baseline's base_k/base_n."""
    from scipy.stats import fisher_exact

    table = [[k, n - k], [base_k, base_n - base_k]]
    return float(fisher_exact(table, alternative="greater").pvalue)


@dataclass
class WindowTest:
    """The rule's verdict on one closed window of one topic."""

    n: int
    negative: int
    baseline_n: int
    baseline_negative: int
    p_value: float | None  # None: not tested (too few items in the window or the baseline)
    fired: bool

    @property
    def share(self) -> float:
        return self.negative / self.n if self.n else 0.0

    @property
    def baseline_share(self) -> float | None:
        return self.baseline_negative / self.baseline_n if self.baseline_n else None


def judge_window(n: int, k: int, base_n: int, base_k: int, cfg: SurgeConfig) -> WindowTest:
    """Apply the surge rule to one window against its baseline."""
    if n < cfg.min_count or base_n < cfg.min_baseline:
        return WindowTest(n, k, base_n, base_k, None, False)
    p = fisher_greater(k, n, base_k, base_n)
    lift = k / n - base_k / base_n
    fired = p <= cfg.alpha and k >= cfg.min_negative and lift >= cfg.min_lift and lift > 0
    return WindowTest(n, k, base_n, base_k, p, fired)


@dataclass
class Episode:
    """One alert episode of one topic (``id``: the store's key, set by whoever persists it)."""

    topic: str
    first_start: float
    last_fired: float
    windows: int = 0  # windows that fired
    n: int = 0  # items in the firing windows
    negative: int = 0
    peak_share: float = 0.0
    min_p: float = 1.0
    baseline_share: float | None = None  # the baseline when it opened
    id: int | None = None
    closed_at: float | None = None

    def add(self, start: float, test: WindowTest) -> None:
        self.last_fired = max(self.last_fired, start)
        self.windows += 1
        self.n += test.n
        self.negative += test.negative
        self.peak_share = max(self.peak_share, test.share)
        self.min_p = min(self.min_p, test.p_value if test.p_value is not None else 1.0)

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "first_start": self.first_start, "last_fired": self.last_fired,
                "windows": self.windows, "n": self.n, "negative": self.negative,
                "peak_share": self.peak_share, "min_p": self.min_p,
                "baseline_share": self.baseline_share, "id": self.id, "closed_at": self.closed_at}


@dataclass
class Event:
    kind: str  # "opened" | "updated" | "closed"
    episode: Episode
    window: float | None = None  # the window that caused it (None for "closed")
    test: WindowTest | None = None


@dataclass
class TopicDetector:
    """The rule's state for one topic: its baseline windows and its open episode, if any."""

    topic: str
    cfg: SurgeConfig
    width: float
    baseline: deque = field(default_factory=deque)  # (start, n, negative) of recent quiet windows
    episode: Episode | None = None

    def __post_init__(self) -> None:
        self.baseline = deque(self.baseline, maxlen=self.cfg.baseline_windows)

    def baseline_counts(self) -> tuple[int, int]:
        return sum(w[1] for w in self.baseline), sum(w[2] for w in self.baseline)

    def expire(self, now: float) -> Event | None:
        """Close the open episode once ``close_after`` windows after its last firing have ended
        by time ``now``."""
        ep = self.episode
        if ep is None:
            return None
        ends = ep.last_fired + (self.cfg.close_after + 1) * self.width
        if now < ends:
            return None
        ep.closed_at = ends
        self.episode = None
        return Event("closed", ep)

    def close_window(self, start: float, n: int, negative: int) -> tuple[WindowTest, list[Event]]:
        """Test the window starting at ``start`` (windows must come in time order) and move the
        episode on. Returns the test and the events it caused (a closing, then an opening, can
        both happen when a new surge follows an old one)."""
        events = []
        closed = self.expire(start)
        if closed is not None:
            events.append(closed)
        base_n, base_k = self.baseline_counts()
        test = judge_window(n, negative, base_n, base_k, self.cfg)
        if self.episode is not None:
            if test.fired:
                self.episode.add(start, test)
                events.append(Event("updated", self.episode, start, test))
        elif test.fired:
            self.episode = Episode(topic=self.topic, first_start=start, last_fired=start,
                                   baseline_share=test.baseline_share)
            self.episode.add(start, test)
            events.append(Event("opened", self.episode, start, test))
        else:
            self.baseline.append((start, n, negative))
        return test, events

    @property
    def in_episode(self) -> bool:
        return self.episode is not None
