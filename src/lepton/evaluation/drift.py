"""Drift detection: is the data a model meets now still like the data it was evaluated on?

The reference is a compact profile of the evaluation set as the model saw it, written at the end
of every run into the saved model (``data/drift_reference.json``, covered by the manifest's
checksums): per example its length in tokens, how many of its tokens are the unknown token, the
model's confidence and its predicted label; the counts of every token id the set holds (bounded by
the vocabulary). For the token test the set is split in two halves, seeded: the token counts of
one half (the scoring half) and the surprisal of each example of the other half under them. New
examples are scored under the same counts, so held-out and new scores are independent draws
from one distribution when nothing drifted: a two-sample test on them is exact, where scoring the
reference against counts it made itself would flag drift on a sample of the very same data.

New data gets the same profile from the same code (``profile_split``; or, per monitor window,
from what the monitor already has: ``check_window``), and ``compare`` runs one two-sample test per
aspect (each p-value corrected for the five tests by Holm's method) and says whether an update
is advised. Which outputs a task kind can compare is its own hook (``TaskKind.drift_outputs``);
a kind with ``drift_unsupported`` set records no reference.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton.core.errors import ArtifactError, LeptonError
from lepton.tasks import encode, kind_of

log = logging.getLogger(__name__)

REFERENCE_FILE = "data/drift_reference.json"
FORMAT = "lepton-drift-reference"
VERSION = 1
DIGITS = 5  # the reference keeps floats to 5 decimals; new values are compared at the same precision
SMOOTHING = 0.5  # add-half smoothing of the reference token distribution (an unseen token is not p=0)
DRIFT_VERDICT = "drift: update advised"
NO_DRIFT_VERDICT = "no drift detected"


class DriftError(LeptonError):
    """Drift detection cannot run on what it was given (no reference, no examples, a label the
    reference does not know)."""


# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass
class Profile:
    """Per example of one data set, what drift detection compares; a part it was not given is None."""

    lengths: np.ndarray | None = None  # content tokens the model saw (special tokens left out)
    unknown: np.ndarray | None = None  # how many of them are the unknown token
    bags: list[Counter[int]] | None = None  # token id -> count
    confidences: np.ndarray | None = None  # the model's confidence (NaN where it has none)
    predictions: np.ndarray | None = None  # predicted label ids

    def __len__(self) -> int:
        for part in (self.lengths, self.confidences, self.predictions):
            if part is not None:
                return len(part)
        return 0


def content_ids(tokenizer: Any) -> tuple[set[int], int | None]:
    """(the special token ids a profile leaves out, the unknown token's id, which it keeps)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    return special - ({int(unk)} if unk is not None else set()), (int(unk) if unk is not None else None)


def input_profile(token_ids: Sequence[Sequence[int]], special: set[int], unk: int | None) -> Profile:
    """Lengths, unknown-token counts and token bags of tokenized inputs."""
    bags = [Counter(int(t) for t in ids if int(t) not in special) for ids in token_ids]
    lengths = np.asarray([sum(b.values()) for b in bags], dtype=np.int64)
    unknown = np.asarray([b.get(unk, 0) if unk is not None else 0 for b in bags], dtype=np.int64)
    return Profile(lengths=lengths, unknown=unknown, bags=bags)


def profile_split(bundle: Any, split: Any) -> Profile:
    """The profile of ``split`` as ``bundle``'s model sees it: tokenized as its task kind does,
    one prediction pass (length-sorted batches), the kind's ``drift_outputs``."""
    from lepton.evaluation.harness import predict_logits
    from lepton.runtimes import for_bundle

    task, tokenizer = bundle.task, bundle.tokenizer
    enc = encode(split, task, tokenizer)
    special, unk = content_ids(tokenizer)
    profile = input_profile(enc.input_ids, special, unk)
    logits = predict_logits(for_bundle(bundle), enc, tokenizer.pad_token_id or 0)
    outputs = kind_of(task).drift_outputs(logits, enc, task)
    if outputs is not None:
        confidences, predictions = outputs
        profile.confidences = np.asarray(confidences, dtype=np.float64)
        profile.predictions = np.asarray(predictions, dtype=np.int64) if predictions is not None else None
    return profile


# ---------------------------------------------------------------------------------------------
# The reference


@dataclass
class DriftReference:
    """The evaluation set's profile, as saved in a model (``to_json`` / ``from_json``)."""

    task_kind: str
    labels: list[str]
    max_length: int
    vocab_size: int
    unk_id: int | None
    special_ids: list[int]
    split: str
    lengths: np.ndarray
    unknown: np.ndarray
    surprisal: np.ndarray  # per example of the held-out half under scoring_counts; NaN in the scoring half
    counts: dict[int, int]  # token id -> count over the whole set
    scoring_counts: dict[int, int]  # the same over the scoring half
    confidences: np.ndarray | None = None
    predictions: np.ndarray | None = None
    total: int = field(default=0, init=False)  # tokens counted
    _log_total: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.total = int(sum(self.counts.values()))
        self._log_total = math.log(sum(self.scoring_counts.values()) + SMOOTHING * self.vocab_size)
        sizes = {len(a) for a in (self.lengths, self.unknown, self.surprisal, self.confidences, self.predictions)
                 if a is not None}
        if len(sizes) > 1:
            raise ValueError(f"per-example lists of different lengths {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, profile: Profile, *, task: Any, tokenizer: Any, split: str) -> DriftReference:
        special, unk = content_ids(tokenizer)
        assert profile.bags is not None and profile.lengths is not None and profile.unknown is not None
        counts: Counter[int] = Counter()
        scoring: Counter[int] = Counter()
        n = len(profile.bags)
        in_scoring = np.zeros(n, dtype=bool)
        in_scoring[np.random.default_rng(0).permutation(n)[:(n + 1) // 2]] = True
        for bag, scores in zip(profile.bags, in_scoring):
            counts.update(bag)
            if scores:
                scoring.update(bag)
        ref = cls(task_kind=task.kind, labels=list(task.labels), max_length=int(task.max_length),
                  vocab_size=max(len(tokenizer), max(counts, default=0) + 1), unk_id=unk,
                  special_ids=sorted(special), split=split, lengths=profile.lengths, unknown=profile.unknown,
                  surprisal=np.zeros(n), counts=dict(counts), scoring_counts=dict(scoring),
                  confidences=profile.confidences, predictions=profile.predictions)
        ref.surprisal = np.asarray([np.nan if scores else ref.surprisal_of(bag)
                                    for bag, scores in zip(profile.bags, in_scoring)])
        return ref

    def surprisal_of(self, bag: Counter[int]) -> float:
        """Mean -log p(token) of one example's tokens under the scoring half's token
        distribution (add-half smoothed, so an unseen token is rare, not impossible)."""
        n = sum(bag.values())
        if n == 0:
            return float("nan")
        total = 0.0
        for token, k in bag.items():
            total += k * (self._log_total - math.log(self.scoring_counts.get(token, 0) + SMOOTHING))
        return total / n

    def to_json(self) -> bytes:
        def floats(a: np.ndarray | None) -> list[float | None] | None:
            return None if a is None else [None if math.isnan(x) else round(float(x), DIGITS) for x in a]

        body = {"format": FORMAT, "version": VERSION, "task_kind": self.task_kind, "labels": self.labels,
                "split": self.split, "examples": len(self), "max_length": self.max_length,
                "vocab_size": self.vocab_size, "unk_id": self.unk_id, "special_ids": self.special_ids,
                "smoothing": SMOOTHING,
                "per_example": {"length": self.lengths.tolist(), "unknown": self.unknown.tolist(),
                                "surprisal": floats(self.surprisal), "confidence": floats(self.confidences),
                                "prediction": None if self.predictions is None else self.predictions.tolist()},
                "token_counts": {str(k): v for k, v in sorted(self.counts.items())},
                "scoring_counts": {str(k): v for k, v in sorted(self.scoring_counts.items())}}
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: str) -> DriftReference:
        try:
            body = json.loads(data.decode("utf-8"))
            if body.get("format") != FORMAT or body.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} version {VERSION}")
            per = body["per_example"]

            def floats(xs: list[float | None] | None) -> np.ndarray | None:
                return None if xs is None else np.asarray([np.nan if x is None else x for x in xs], dtype=np.float64)

            return cls(task_kind=str(body["task_kind"]), labels=[str(x) for x in body["labels"]],
                       max_length=int(body["max_length"]), vocab_size=int(body["vocab_size"]),
                       unk_id=None if body["unk_id"] is None else int(body["unk_id"]),
                       special_ids=[int(x) for x in body["special_ids"]], split=str(body["split"]),
                       lengths=np.asarray(per["length"], dtype=np.int64),
                       unknown=np.asarray(per["unknown"], dtype=np.int64),
                       surprisal=np.asarray([np.nan if x is None else x for x in per["surprisal"]], dtype=np.float64),
                       counts={int(k): int(v) for k, v in body["token_counts"].items()},
                       scoring_counts={int(k): int(v) for k, v in body["scoring_counts"].items()},
                       confidences=floats(per["confidence"]),
                       predictions=None if per["prediction"] is None else np.asarray(per["prediction"], dtype=np.int64))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{where}: not a valid drift reference ({err})") from None


def load_reference(model_dir: str | os.PathLike[str]) -> DriftReference | None:
    """The reference saved in a model folder (None: saved without one). Its checksum is the
    manifest's: read it after the model was verified (``lepton.load``, ``read_manifest``)."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read the drift reference ({err.strerror or err})") from None
    return DriftReference.from_json(data, str(path))


def build_reference(bundle: Any, split: Any) -> DriftReference:
    """The reference of ``split`` (the evaluation set) as ``bundle``'s model sees it."""
    if len(split) == 0:
        raise DriftError(f"{split.name}: no examples to build a drift reference from")
    return DriftReference.build(profile_split(bundle, split), task=bundle.task, tokenizer=bundle.tokenizer,
                                split=split.name)


def reference_files(bundle: Any, split: Any) -> dict[str, bytes]:
    """``{REFERENCE_FILE: bytes}`` for ``save_artifact(extra_files=...)`` at the end of a run; empty
    (the reason logged) for a task kind that records no reference."""
    reason = kind_of(bundle.task).drift_unsupported
    if reason is not None:
        log.info("no drift reference recorded: %s", reason)
        return {}
    ref = build_reference(bundle, split)
    log.info("drift reference: %d %s examples, %d distinct tokens", len(ref), split.name, len(ref.counts))
    return {REFERENCE_FILE: ref.to_json()}


# ---------------------------------------------------------------------------------------------
# The tests


@dataclass
class DriftTest:
    """One two-sample test of the new data against the reference."""

    name: str  # input_length, tokens, unknown_tokens, confidence, prediction_mix
    title: str
    method: str
    statistic: float
    p_value: float
    effect: float  # on its own scale, named by effect_name
    effect_name: str
    reference: str  # what the reference looks like, in words
    new: str
    p_adjusted: float = 1.0
    flagged: bool = False


@dataclass
class DriftResult:
    alpha: float
    n_reference: int
    n_new: int
    tests: list[DriftTest]
    skipped: dict[str, str]  # test name -> why it did not run
    correction: str = "holm"
    drift: bool = False
    verdict: str = NO_DRIFT_VERDICT
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ks(name: str, title: str, ref: np.ndarray, new: np.ndarray, unit: str) -> DriftTest | str:
    from scipy.stats import ks_2samp

    # At the reference's precision: a value and its rounded copy must not differ (ties stay ties).
    ref, new = np.round(ref[~np.isnan(ref)], DIGITS), np.round(new[~np.isnan(new)], DIGITS)
    if len(ref) == 0 or len(new) == 0:
        return "no values to compare"
    res = ks_2samp(ref, new)
    return DriftTest(name=name, title=title, method="Kolmogorov-Smirnov", statistic=float(res.statistic),
                     p_value=float(res.pvalue), effect=float(res.statistic), effect_name="KS D",
                     reference=_summary(ref, unit), new=_summary(new, unit))


def _summary(values: np.ndarray, unit: str) -> str:
    return f"median {np.median(values):.3g}{unit}, mean {np.mean(values):.3g}{unit}"


def _length_test(ref: DriftReference, new: Profile) -> DriftTest | str:
    if new.lengths is None:
        return "no token ids given"
    return _ks("input_length", "input length (tokens)", ref.lengths.astype(float), new.lengths.astype(float), "")


def _token_test(ref: DriftReference, new: Profile) -> DriftTest | str:
    from scipy.spatial.distance import jensenshannon

    if new.bags is None:
        return "no token ids given"
    scores = np.asarray([ref.surprisal_of(bag) for bag in new.bags])
    test = _ks("tokens", "token distribution (surprisal per example)", ref.surprisal, scores, " nats")
    if isinstance(test, DriftTest):
        mix: Counter[int] = Counter()
        for bag in new.bags:
            mix.update(bag)
        ids = sorted(set(ref.counts) | set(mix))
        js = jensenshannon([ref.counts.get(i, 0) for i in ids], [mix.get(i, 0) for i in ids], base=2)
        unseen = sum(k for t, k in mix.items() if t not in ref.counts) / max(sum(mix.values()), 1)
        test.new += f"; JS distance {float(js):.3f}, {unseen:.1%} of tokens unseen in the reference"
    return test


def _share(unknown: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """The unknown-token share of a set of examples and its variance (ratio estimator, examples
    as clusters: the tokens of one text are not independent draws)."""
    n, total = len(lengths), float(lengths.sum())
    if total == 0:
        return 0.0, 0.0
    r = float(unknown.sum()) / total
    var = float(((unknown - r * lengths) ** 2).sum()) / total ** 2 * (n / (n - 1) if n > 1 else 1.0)
    return r, var


def _unknown_test(ref: DriftReference, new: Profile) -> DriftTest | str:
    from scipy.stats import norm

    if ref.unk_id is None:
        return "the tokenizer has no unknown token"
    if new.unknown is None or new.lengths is None:
        return "no token ids given"
    r0, v0 = _share(ref.unknown, ref.lengths)
    r1, v1 = _share(new.unknown, new.lengths)
    if v0 + v1 == 0:
        z, p = 0.0, 1.0 if r0 == r1 else 0.0
    else:
        z = (r1 - r0) / math.sqrt(v0 + v1)
        p = float(2 * norm.sf(abs(z)))
    return DriftTest(name="unknown_tokens", title="unknown-token share", method="two-proportion z (per-text clusters)",
                     statistic=float(z), p_value=p, effect=r1 - r0, effect_name="share difference",
                     reference=f"{r0:.2%} of tokens", new=f"{r1:.2%} of tokens")


def _confidence_test(ref: DriftReference, new: Profile) -> DriftTest | str:
    if ref.confidences is None:
        return "the reference has no confidences (this task kind gives none)"
    if new.confidences is None:
        return "no confidences given"
    return _ks("confidence", "model confidence (top probability)", ref.confidences, new.confidences, "")


def _mix_test(ref: DriftReference, new: Profile) -> DriftTest | str:
    from scipy.stats import chi2_contingency

    if ref.predictions is None:
        return "the reference has no predicted labels (this task kind gives no one label per example)"
    if new.predictions is None:
        return "no predictions given"
    k = len(ref.labels)
    table = np.stack([np.bincount(ref.predictions, minlength=k), np.bincount(new.predictions, minlength=k)])
    table = table[:, table.sum(axis=0) > 0]
    shares = np.stack([np.bincount(ref.predictions, minlength=k) / len(ref.predictions),
                       np.bincount(new.predictions, minlength=k) / max(len(new.predictions), 1)])
    moved = int(np.argmax(np.abs(shares[1] - shares[0])))
    words = (f"{ref.labels[moved]!r}: {shares[0, moved]:.0%}", f"{ref.labels[moved]!r}: {shares[1, moved]:.0%}")
    if table.shape[1] < 2:  # every prediction in both sets is the same label
        chi2, p = 0.0, 1.0
    else:
        chi2, p = (float(x) for x in chi2_contingency(table, correction=False)[:2])
    return DriftTest(name="prediction_mix", title="prediction mix", method="chi-square", statistic=chi2,
                     p_value=p, effect=math.sqrt(chi2 / table.sum()), effect_name="Cramer's V",
                     reference=words[0], new=words[1])


TESTS: tuple[tuple[str, Callable[[DriftReference, Profile], DriftTest | str]], ...] = (
    ("input_length", _length_test), ("tokens", _token_test), ("unknown_tokens", _unknown_test),
    ("confidence", _confidence_test), ("prediction_mix", _mix_test))


def effect_text(test: DriftTest) -> str:
    """"KS D 0.412", "share difference +1.20 points": a signed effect only where the sign means something."""
    if test.effect_name == "share difference":
        return f"{test.effect_name} {test.effect * 100:+.2f} points"
    return f"{test.effect_name} {test.effect:.3f}"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at most alpha over all tests)."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(reference: DriftReference, new: Profile, *, alpha: float = 0.01) -> DriftResult:
    """Every test that both sides allow, Holm-corrected; drift when any adjusted p <= ``alpha``."""
    if not 0 < alpha < 1:
        raise DriftError(f"alpha {alpha}: give a significance level between 0 and 1, e.g. 0.01")
    if len(new) == 0:
        raise DriftError("no examples to compare with the reference")
    tests, skipped = [], {}
    for name, run in TESTS:
        outcome = run(reference, new)
        if isinstance(outcome, str):
            skipped[name] = outcome
        else:
            tests.append(outcome)
    for test, adjusted in zip(tests, holm([t.p_value for t in tests])):
        test.p_adjusted = adjusted
        test.flagged = adjusted <= alpha
    reasons = [f"{t.title}: {effect_text(t)}, p={t.p_adjusted:.2g} (Holm) <= {alpha:g}; "
               f"reference {t.reference}, new {t.new}" for t in tests if t.flagged]
    drift = bool(reasons)
    return DriftResult(alpha=alpha, n_reference=len(reference), n_new=len(new), tests=tests, skipped=skipped,
                       drift=drift, verdict=DRIFT_VERDICT if drift else NO_DRIFT_VERDICT, reasons=reasons)


# ---------------------------------------------------------------------------------------------
# Per monitor window


def check_window(reference: DriftReference, *, texts: Sequence[str] | None = None, tokenizer: Any = None,
                 token_ids: Sequence[Sequence[int]] | None = None, predictions: Sequence[Any] | None = None,
                 confidences: Sequence[float] | None = None, alpha: float = 0.01,
                 min_items: int = 30) -> DriftResult:
    """The drift check of one window of a stream, from what the monitor already has.

    ``token_ids`` (per item, as the model's tokenizer gave them) or ``texts`` with ``tokenizer``
    (then tokenized here, cut at the reference's max_length: no model pass); ``predictions``
    (label names or ids of the task the reference describes) and ``confidences`` (the predicted
    label's probability). Any of them may be left out; its tests are then skipped. A window with
    fewer than ``min_items`` items is not tested (its result says so and flags nothing)."""
    if token_ids is None and texts is not None:
        if tokenizer is None:
            raise DriftError("check_window: texts need the model's tokenizer (or pass token_ids)")
        token_ids = tokenizer(list(texts), truncation=True, max_length=reference.max_length)["input_ids"]
    profile = input_profile(token_ids, set(reference.special_ids), reference.unk_id) if token_ids is not None \
        else Profile()
    if confidences is not None:
        profile.confidences = np.asarray(confidences, dtype=np.float64)
    if predictions is not None:
        profile.predictions = np.asarray([_label_id(reference, p) for p in predictions], dtype=np.int64)
    n = len(profile)
    if n < min_items:
        return DriftResult(alpha=alpha, n_reference=len(reference), n_new=n, tests=[],
                           skipped={name: f"{n} items, fewer than {min_items}" for name, _ in TESTS},
                           verdict=f"not tested: {n} items (fewer than {min_items})")
    return compare(reference, profile, alpha=alpha)


def _label_id(reference: DriftReference, label: Any) -> int:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(reference.labels):
        return int(label)
    if isinstance(label, str) and label in reference.labels:
        return reference.labels.index(label)
    raise DriftError(f"prediction {label!r} is not a label of the reference's task "
                     f"(its labels: {', '.join(reference.labels)})")
