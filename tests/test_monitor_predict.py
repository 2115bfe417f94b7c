"""The monitor's predictions from a real (tiny, random) multi-task Lepton artifact: both tasks
from one encoder pass, equal to predict(task=...) each; config errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import lepton
from lepton.monitor.config import MonitorConfigError, PredictConfig
from lepton.monitor.onepass import predict_tasks
from lepton.monitor.predict import ModelClassifier
from tests.monitor_fakes import build_multitask_artifact

TEXTS = ["shares fell sharply", "the team won the cup final in a thrilling match", "x",
         "a new chip was announced today by the firm", "profits rose", "rain in the north"]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, tmp_path_factory) -> object:
    return lepton.load(build_multitask_artifact(tiny_model_dir, tmp_path_factory.mktemp("mt") / "model"))


def test_one_pass_equals_a_predict_per_task_and_runs_the_encoder_once_per_batch(model) -> None:
    from lepton.runtimes.heads import encoder_of

    calls = []
    hook = encoder_of(model.bundle.model).register_forward_hook(lambda *a: calls.append(1))
    try:
        sentiment, topic = predict_tasks(model, TEXTS, [None, "topic"], batch_size=4)
        assert len(calls) == 2  # 6 texts in batches of 4: two encoder passes for both tasks
        calls.clear()
        expected = model.predict(TEXTS, batch_size=4), model.predict(TEXTS, task="topic", batch_size=4)
        assert len(calls) == 4  # the per-task way: the encoder twice per batch
    finally:
        hook.remove()
    for got, want in zip((sentiment, topic), expected):
        assert [g["label"] for g in got] == [w["label"] for w in want]
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)


def test_classifier_binds_the_configured_tasks_and_names_bad_keys(model) -> None:
    clf = ModelClassifier([model], PredictConfig(sentiment={"task": None}, topic={"task": "topic"}))
    preds = clf.classify(TEXTS)
    assert len(preds) == len(TEXTS)
    assert {p.topic for p in preds} <= {"World", "Sports", "Business", "Sci/Tech"}
    for p in preds:
        assert p.negative_score == pytest.approx(p.scores["negative"])
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-5)
    two = ModelClassifier([model], PredictConfig(sentiment={"task": None}, topic={"task": "topic"}, one_pass=False))
    assert [p.topic for p in two.classify(TEXTS)] == [p.topic for p in preds]
    assert clf.classify([]) == []
    with pytest.raises(MonitorConfigError, match=r"predict.topic.task: 'topics' is not a task .*sentiment, topic"):
        ModelClassifier([model], PredictConfig(topic={"task": "topics"}))
    with pytest.raises(MonitorConfigError, match=r"predict.negative_label: 'neg' is not a label"):
        ModelClassifier([model], PredictConfig(topic={"task": "topic"}, negative_label="neg"))
    with pytest.raises(MonitorConfigError, match=r"predict.topic.model: 1 names MODEL2, but 1 model was given"):
        ModelClassifier([model], PredictConfig(topic={"model": 1}))
