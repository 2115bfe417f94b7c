"""Issue 26, drift detection: the reference a run records in its model, ``lepton drift``, and the
per-window check the monitor calls. Drift is flagged on shifted data and not on a held-back
sample of the same data (fixed seeds, 300 rows a side, alpha 0.01 over all tests)."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from lepton.cli import main
from lepton.core.errors import ArtifactError
from lepton.evaluation import drift
from lepton.pipeline.artifact import load_bundle, read_manifest, save_artifact
from tests.conftest import NEGATIVE, POSITIVE, tiny_recipe
from tests.test_cli import _quiet_transformers, assert_user_error, cli  # noqa: F401  (fixture)

FILLER = ["the", "movie", "was", "really", "quite", "plot", "acting", "a", "film", "story", "cast", "ending"]
FINANCE = ["shares", "profit", "warning", "quarterly", "revenue", "dividend", "bond", "yield", "merger",
           "investors", "earnings", "guidance", "stock", "market", "inflation", "rates", "bank", "credit"]


def write_reviews(path: Path, n: int, seed: int = 0) -> Path:
    """Toy sentiment rows as write_sentiment_tsv's, of 3 to 10 words: lengths vary as in real text."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(POSITIVE if label else NEGATIVE, rng.randint(1, 3))
        words += [rng.choice(FILLER) for _ in range(rng.randint(2, 7))]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_shifted_tsv(path: Path, n: int, seed: int = 0) -> Path:
    """Other vocabulary (financial news) and longer sentences than write_sentiment_tsv's; no labels."""
    rng = random.Random(seed)
    lines = ["sentence"]
    for _ in range(n):
        lines.append(" ".join(rng.choice(FINANCE) for _ in range(rng.randint(10, 18))))
    path.write_text("\n".join(lines) + "\n")
    return path


def unlabelled(source: Path, dest: Path) -> Path:
    """``source`` without its label column."""
    rows = [line.split("\t")[0] for line in source.read_text().splitlines()]
    dest.write_text("\n".join(rows) + "\n")
    return dest


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("drift-data")
    return {"train": write_reviews(folder / "train.tsv", 96, seed=1),
            "dev": write_reviews(folder / "dev.tsv", 300, seed=2),
            "same": write_reviews(folder / "same.tsv", 300, seed=3),
            "same_unlabelled": unlabelled(write_reviews(folder / "same2.tsv", 300, seed=4),
                                          folder / "same-unlabelled.tsv"),
            "shifted": write_shifted_tsv(folder / "shifted.tsv", 300, seed=5)}


@pytest.fixture(scope="module")
def model(tiny_model_dir, data, tmp_path_factory) -> Path:
    """A finished run's model (its reference: the 300-row dev set)."""
    folder = tmp_path_factory.mktemp("drift-run")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, data["train"], data["dev"], folder / "out",
                                               epochs=1)))
    assert main(["-q", "run", str(path), "--no-progress"]) == 0
    return folder / "out" / "model"


def drift_json(capsys, *argv: object) -> dict:
    code, out, err = cli(capsys, "drift", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def flagged(result: dict) -> set[str]:
    return {t["name"] for t in result["tests"] if t["flagged"]}


# ------------------------------------------------------------------- the reference in the model


def test_the_reference_is_in_the_manifest_and_verified(capsys, model, data, tmp_path):
    manifest = read_manifest(model)
    assert drift.REFERENCE_FILE in manifest["files"]
    ref = drift.DriftReference.from_json((model / drift.REFERENCE_FILE).read_bytes(), "ref")
    assert len(ref) == 300 and ref.split == "dev" and ref.labels == ["0", "1"]
    assert ref.confidences is not None and ref.predictions is not None
    assert ((ref.confidences >= 0.5) & (ref.confidences <= 1)).all()  # top probability of 2 labels
    assert ref.lengths.min() == 3 and ref.lengths.max() == 10  # every word of write_reviews is one token
    assert ref.unknown.sum() == 0 and ref.total == ref.lengths.sum()
    # The token test's halves: 150 examples held out (scored), 150 whose counts score them.
    assert np.isnan(ref.surprisal).sum() == 150 and sum(ref.scoring_counts.values()) < ref.total
    # Tampering with the reference is caught by the manifest's checksums.
    copy = Path(shutil.copytree(model, tmp_path / "model"))
    path = copy / drift.REFERENCE_FILE
    path.write_bytes(path.read_bytes().replace(b'"split":"dev"', b'"split":"xxx"'))
    with pytest.raises(ArtifactError, match="drift_reference.json"):
        read_manifest(copy)
    assert_user_error(cli(capsys, "drift", copy, "--data", data["same"]), "drift_reference.json")


def test_the_reference_matches_a_fresh_profile_of_the_same_data(model, data):
    # The run's reference and `--reference DEV` are the same profile: one code path.
    from lepton.data import Columns, DataSplitConfig, load_split

    bundle = load_bundle(model)
    split = load_split(DataSplitConfig(path=str(data["dev"])), Columns(text="sentence"), name="dev")
    fresh = drift.build_reference(bundle, split)
    saved = drift.DriftReference.from_json((model / drift.REFERENCE_FILE).read_bytes(), "ref")
    assert fresh.lengths.tolist() == saved.lengths.tolist() and fresh.counts == saved.counts
    assert np.allclose(fresh.confidences, saved.confidences, atol=1e-4)
    assert np.allclose(fresh.surprisal, saved.surprisal, atol=1e-4, equal_nan=True)


# ------------------------------------------------------------------- lepton drift


def test_shifted_data_is_flagged_and_a_held_back_sample_is_not(capsys, model, data):
    same = drift_json(capsys, model, "--data", data["same"])
    assert not same["drift"] and same["verdict"] == "no drift detected", same
    assert {t["name"] for t in same["tests"]} == {"input_length", "tokens", "unknown_tokens", "confidence",
                                                  "prediction_mix"}
    assert all(t["p_adjusted"] > 0.01 for t in same["tests"])

    shifted = drift_json(capsys, model, "--data", data["shifted"])
    assert shifted["drift"] and shifted["verdict"] == "drift: update advised"
    assert {"input_length", "tokens"} <= flagged(shifted)
    assert shifted["n_new"] == 300 and shifted["n_reference"] == 300
    assert any(r.startswith("input length") for r in shifted["reasons"])


def test_unlabelled_data_is_fine_and_the_table_names_each_test(capsys, model, data):
    code, out, err = cli(capsys, "drift", model, "--data", data["same_unlabelled"])
    assert code == 0, err
    assert "verdict: no drift detected" in out
    for title in ("input length", "token distribution", "unknown-token share", "model confidence",
                  "prediction mix", "Kolmogorov-Smirnov", "chi-square", "KS D", "Cramer's V"):
        assert title in out


def test_fail_on_drift_exits_1_and_a_run_folder_stands_for_its_model(capsys, model, data):
    code, out, _ = cli(capsys, "drift", model.parent, "--data", data["shifted"], "--fail-on-drift")
    assert code == 1 and "verdict: drift: update advised" in out
    code, _, _ = cli(capsys, "drift", model, "--data", data["same"], "--fail-on-drift")
    assert code == 0
    code, out, _ = cli(capsys, "drift", model, "--data", data["shifted"])  # without the flag: 0 either way
    assert code == 0 and "update advised" in out


def test_a_model_without_a_reference_asks_for_one(capsys, model, data, tmp_path):
    old = tmp_path / "old"
    save_artifact(load_bundle(model), old, recipe=read_manifest(model)["recipe"])  # as saved before issue 26
    assert drift.REFERENCE_FILE not in read_manifest(old)["files"]
    assert_user_error(cli(capsys, "drift", old, "--data", data["shifted"]), "no drift reference",
                      "--reference", str(data["dev"]))
    same = drift_json(capsys, old, "--data", data["same"], "--reference", data["dev"])
    assert not same["drift"]
    shifted = drift_json(capsys, old, "--data", data["shifted"], "--reference", data["dev"])
    assert shifted["drift"]


@pytest.mark.parametrize("case", ["missing", "empty", "header_only", "alpha", "limit", "no_text_column"])
def test_bad_inputs_are_one_line(capsys, model, tmp_path, case):
    path = tmp_path / "new.tsv"
    extra: list[str] = []
    needle = str(path)
    if case == "empty":
        path.write_text("")
    elif case == "header_only":
        path.write_text("sentence\n")
    elif case == "no_text_column":
        path.write_text("text\nsome words\n")
        needle = "sentence"
    else:
        path.write_text("sentence\nsome words here\n")
        extra, needle = {"missing": ([], str(tmp_path / "nope.tsv")), "alpha": (["--alpha", "1.5"], "--alpha"),
                         "limit": (["--limit", "0"], "--limit")}[case]
        if case == "missing":
            path = tmp_path / "nope.tsv"
    assert_user_error(cli(capsys, "drift", model, "--data", path, *extra), needle)


def test_the_model_itself_must_be_a_model(capsys, data, tmp_path):
    assert_user_error(cli(capsys, "drift", tmp_path / "nothing", "--data", data["same"]), "nothing")


# ------------------------------------------------------------------- the monitor's per-window check


@pytest.fixture(scope="module")
def reference(model) -> drift.DriftReference:
    return drift.DriftReference.from_json((model / drift.REFERENCE_FILE).read_bytes(), "ref")


def window(path: Path, predictor, rows: slice) -> tuple[list[str], list[str], list[float]]:
    """A window's texts with the model's predictions and confidences, as the monitor has them."""
    texts = [line.split("\t")[0] for line in path.read_text().splitlines()[1:]][rows]
    preds = predictor.predict(texts)
    return texts, [p["label"] for p in preds], [p["score"] for p in preds]


def test_check_window_flags_a_shifted_window_and_not_a_same_one(model, data, reference):
    import lepton

    predictor = lepton.load(model)
    tokenizer = predictor.bundle.tokenizer
    texts, labels, scores = window(data["same"], predictor, slice(0, 120))
    same = drift.check_window(reference, texts=texts, tokenizer=tokenizer, predictions=labels,
                              confidences=scores)
    assert not same.drift and len(same.tests) == 5, same.reasons
    texts, labels, scores = window(data["shifted"], predictor, slice(0, 120))
    shifted = drift.check_window(reference, texts=texts, tokenizer=tokenizer, predictions=labels,
                                 confidences=scores)
    assert shifted.drift and {"input_length", "tokens"} <= {t.name for t in shifted.tests if t.flagged}


def test_check_window_skips_what_it_is_not_given_and_small_windows(reference):
    few = drift.check_window(reference, predictions=["0"] * 10)
    assert not few.drift and not few.tests and few.verdict.startswith("not tested: 10 items")
    # Predictions alone: only the prediction mix can be tested; all one label where the reference has both.
    mix = drift.check_window(reference, predictions=["1"] * 200)
    assert [t.name for t in mix.tests] == ["prediction_mix"] and mix.drift
    assert set(mix.skipped) == {"input_length", "tokens", "unknown_tokens", "confidence"}
    with pytest.raises(drift.DriftError, match="'positive' is not a label"):
        drift.check_window(reference, predictions=["positive"] * 40)


def test_check_window_flags_unknown_tokens(reference):
    # A trimmed vocabulary's symptom: new text whose words became [UNK]. Same lengths, same tokens
    # otherwise (copies of reference bags), a third of them unknown.
    assert reference.unk_id is not None
    common = [t for t, _ in Counter(reference.counts).most_common(10)]
    rng = random.Random(0)
    ids = [[rng.choice(common) for _ in range(6)] for _ in range(200)]
    base = drift.check_window(reference, token_ids=ids)
    with_unk = drift.check_window(reference, token_ids=[x[:4] + [reference.unk_id] * 2 for x in ids])
    unk_test = next(t for t in with_unk.tests if t.name == "unknown_tokens")
    assert unk_test.flagged and unk_test.effect == pytest.approx(1 / 3)
    assert not next(t for t in base.tests if t.name == "unknown_tokens").flagged


def test_holm_and_the_verdict_rule():
    assert drift.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert drift.holm([0.5]) == [0.5]


def test_kinds_without_a_reference_say_why(caplog, data):
    import logging
    from types import SimpleNamespace

    from lepton.tasks import TaskSpec

    bundle = SimpleNamespace(task=TaskSpec(kind="generation"))
    with caplog.at_level(logging.INFO, logger="lepton"):
        assert drift.reference_files(bundle, None) == {}
    assert "no drift reference recorded" in caplog.text and "generated text" in caplog.text


def test_token_classification_gives_confidences_but_no_mix():
    from lepton.tasks import Encoded, kind_of
    from tests.conftest import spec_for

    task = spec_for("token_classification", ["O", "B-PER", "I-PER"])
    enc = Encoded(input_ids=[[101, 5, 6, 7, 102]], token_type_ids=None, labels=None,
                  word_ids=[[None, 0, 0, 1, None]], n_words=[2])
    logits = [np.log(np.asarray([[1, 1, 1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1, 1, 1]]))]
    confidences, predictions = kind_of(task).drift_outputs(logits, enc, task)
    assert predictions is None and confidences == pytest.approx([0.7])  # words 0 and 1: 0.8 and 0.6
