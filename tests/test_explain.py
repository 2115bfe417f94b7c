"""Token attributions (lepton.evaluation.attribution), their faithfulness and agreement in the
evaluation standard (lepton.evaluation.explain), ``lepton explain`` and ``POST /v1/explain``, on
tiny models: a random one, and one trained for seconds on a toy task whose answer words are known."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton.evaluation.attribution import (
    ExplainError,
    examples_of,
    explain_inputs,
    integrated_gradients,
    occlusion,
    special_ids,
)
from lepton.evaluation.explain import explain_variants
from lepton.evaluation.explanation import ExplainConfig
from lepton.evaluation.harness import Variant
from lepton.pipeline.recipe import EvaluateConfig
from lepton.runtimes import for_bundle
from lepton.tasks import Encoded
from tests.conftest import NEGATIVE, POSITIVE
from tests.test_artifact import TEXTS, sequence_bundle, token_bundle

LABELS = ("neg", "pos", "none")
FILLER = ["the", "movie", "was", "really", "quite", "plot", "acting", "a"]


def toy_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Sentences of filler words and at most one sentiment word, which alone decides the label:
    neg, pos, or none without one (so that the model needs the negative words too)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 2)
        answer = [rng.choice(NEGATIVE), rng.choice(POSITIVE), rng.choice(FILLER)][label]
        words = rng.sample(FILLER, 5) + [answer]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """The tiny BERT trained for a few seconds until it gets the toy task right."""
    bundle = sequence_bundle(tiny_model_dir, labels=LABELS)
    texts, labels = toy_texts(384, seed=1)
    model, tok = bundle.model.train(), bundle.tokenizer
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    dev, gold = toy_texts(60, seed=2)
    torch.manual_seed(0)
    for _ in range(40):  # epochs, until dev is right (a few seconds)
        model.train()
        for start in range(0, len(texts), 32):
            batch = tok(texts[start:start + 32], padding=True, return_tensors="pt")
            loss = model(**batch, labels=torch.tensor(labels[start:start + 32])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(**tok(dev, padding=True, return_tensors="pt")).logits.argmax(-1).numpy()
        if np.mean(pred == np.asarray(gold)) >= 0.95:
            break
    assert np.mean(pred == np.asarray(gold)) >= 0.95
    return bundle


def _split(texts: list[str], labels: list[int]):
    from lepton.data import Split

    return Split(name="dev", kind="sequence", texts=texts, text_pairs=None, labels=[str(x) for x in labels],
                 sources=[f"toy:{i}" for i in range(len(texts))])


def _examples(bundle, texts):
    enc = bundle.tokenizer(texts, truncation=True)
    encoded = Encoded(enc["input_ids"], enc.get("token_type_ids"), None)
    return examples_of(encoded, range(len(texts)), special_ids(bundle.tokenizer))


# ------------------------------------------------------------------- the methods


def test_attributions_one_score_per_content_token_and_ig_completeness(trained):
    examples = _examples(trained, TEXTS[:2] + ["awful acting"])
    runtime = for_bundle(trained)
    occ, probs = occlusion(runtime, examples, trained.tokenizer.pad_token_id)
    ig, ig_probs = integrated_gradients(trained, examples, trained.tokenizer.pad_token_id, steps=256)
    assert probs.shape == (3, 3) and np.allclose(probs, ig_probs, atol=1e-5)
    for ex, o, g in zip(examples, occ, ig):
        assert len(o) == len(g) == len(ex.content) == len(ex.ids) - 2  # [CLS] and [SEP] left out
    # Completeness: integrated gradients sum to p(input) - p(baseline of padding tokens).
    for ex, g, p in zip(examples, ig, probs):
        target = int(np.argmax(p))
        base = torch.tensor([[t if i not in ex.content else trained.tokenizer.pad_token_id
                              for i, t in enumerate(ex.ids)]])
        with torch.no_grad():
            p_base = torch.softmax(trained.model(input_ids=base).logits, -1)[0, target].item()
        assert abs(g.sum() - (p[target] - p_base)) < 0.02


def test_occlusion_puts_the_answer_word_first(trained):
    texts, labels = toy_texts(40, seed=3)
    texts = [t for t, label in zip(texts, labels) if label != 2][:20]
    result = explain_inputs(trained, for_bundle(trained), texts)
    hits = 0
    for r in result:
        top = max(r["tokens"], key=lambda t: t["score"])
        hits += top["token"] in POSITIVE + NEGATIVE
        assert all(t["end"] > t["start"] for t in r["tokens"])
    assert hits >= 16


def test_refusals_name_the_reason(tiny_model_dir):
    ner = token_bundle(tiny_model_dir)
    with pytest.raises(ExplainError, match="token classification models are not supported yet"):
        explain_inputs(ner, for_bundle(ner), ["Alice visited Rome"])
    cls = sequence_bundle(tiny_model_dir)
    with pytest.raises(ExplainError, match="no tokens to attribute"):
        explain_inputs(cls, for_bundle(cls), ["fine", "  "])
    with pytest.raises(ExplainError, match="unknown attribution method"):
        explain_inputs(cls, for_bundle(cls), ["fine"], method="lime")


# ------------------------------------------------------------------- ONNX and the standard


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from tests.test_export import apply, make_ctx, sentiment_splits

    folder = tmp_path_factory.mktemp("explain-export")
    return apply(trained, make_ctx(folder, sentiment_splits(folder)), kind="export")


def test_occlusion_on_onnx_equals_occlusion_through_pytorch(trained, exported):
    texts, _ = toy_texts(8, seed=4)
    examples = _examples(trained, texts + ["a much longer sentence that runs on and on with many more words"])
    pad = trained.tokenizer.pad_token_id
    torch_scores, torch_probs = occlusion(for_bundle(trained), examples, pad)
    onnx_scores, onnx_probs = occlusion(for_bundle(exported), examples, pad)
    assert np.abs(torch_probs - onnx_probs).max() < 1e-4
    for a, b in zip(torch_scores, onnx_scores):
        assert np.abs(a - b).max() < 1e-4


def test_the_standard_measures_faithfulness_and_agreement(trained, exported):
    texts, labels = toy_texts(40, seed=5)
    split = _split(texts, labels)
    config = EvaluateConfig(bootstrap=200, explain=ExplainConfig(items=30, samples=2, method="ig"))
    variants = [Variant("finetune", ["finetune"], trained), Variant("export", ["finetune", "export"], exported)]
    out = explain_variants(variants, split, config, seed=0, baseline="finetune")
    base, onnx = out["finetune"], out["export"]
    assert base.method == "ig" and onnx.method == "occlusion"  # no gradients through an ONNX graph
    assert base.items == onnx.items == 30 and base.agreement is None and len(base.samples) == 2
    for e in (base, onnx):
        f = e.faithfulness
        # The method's top tokens carry the prediction; a random ranking's do not.
        assert f.comprehensiveness.value > f.random_comprehensiveness.value
        assert f.comprehensiveness_gain.ci95_low > 0 and f.sufficiency_gain.ci95_low > 0
        assert f.comprehensiveness.ci95_low <= f.comprehensiveness.value <= f.comprehensiveness.ci95_high
    a = onnx.agreement
    assert a is not None and a.baseline == "finetune" and a.n == 30
    # Integrated gradients and occlusion agree on the answer word; the filler's tiny scores are
    # ordered by each method's own noise (a saturated model), so their ranks agree only loosely.
    assert 0.4 <= a.top_k_overlap.value <= 1 and a.spearman.ci95_low > 0
    assert len(a.divergent) == 3 and a.divergent[0].spearman <= a.divergent[-1].spearman
    # report.md: the faithfulness table, the agreement line and the divergent examples;
    # report.html also the sample with shaded tokens.
    from types import SimpleNamespace

    from lepton.pipeline import report_why

    md = "\n".join(report_why.markdown(SimpleNamespace(explanation=onnx)))
    assert "occlusion (leave one token out) on 30 examples, explaining the class the baseline predicted" in md
    assert "| comprehensiveness |" in md and "Against `finetune` on 30 examples" in md and md.count("| #") == 3
    page = report_why.samples_html(SimpleNamespace(explanation=base))
    assert page.count('<p class="tokens">') == 2 and "rgba(46,160,67," in page
    assert report_why.markdown(SimpleNamespace(explanation=None)) == []


def test_the_same_model_agrees_with_itself_and_the_recipe_checks_settings(trained):
    from pydantic import ValidationError

    texts, labels = toy_texts(12, seed=6)
    config = EvaluateConfig(bootstrap=100, explain=ExplainConfig(items=10))
    out = explain_variants([Variant("a", [], trained), Variant("b", [], trained)], _split(texts, labels), config,
                           seed=0, baseline="a")
    a = out["b"].agreement
    assert a is not None and a.top_k_overlap.value == 1.0 and a.spearman.value == pytest.approx(1.0)
    assert explain_variants([Variant("a", [], trained)], _split(texts, labels),
                            EvaluateConfig(explain=ExplainConfig(enabled=False)), seed=0, baseline="a") == {}
    with pytest.raises(ValidationError, match="fractions"):
        ExplainConfig(fractions=[0.0])
    with pytest.raises(ValidationError, match="extra"):
        EvaluateConfig.model_validate({"explain": {"itmes": 3}})


# ------------------------------------------------------------------- CLI and server


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    from lepton.pipeline.artifact import save_artifact

    return save_artifact(trained, tmp_path_factory.mktemp("explain-model") / "model")


def test_cli_prints_the_prediction_and_json(saved, capsys):
    from lepton.cli import main

    assert main(["explain", str(saved), "the plot was superb"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prediction: ") and "superb" in out and "strongest tokens: superb" in out
    assert main(["explain", str(saved), "the plot was awful", "--json", "--method", "ig"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "ig" and [t["token"] for t in result["tokens"]] == ["the", "plot", "was", "awful"]


def test_cli_bad_model_path_is_one_line(tmp_path, capsys):
    from lepton.cli import EXIT_USER_ERROR, main

    assert main(["explain", str(tmp_path / "nope"), "text"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("lepton: error: ") and err.count("\n") == 1 and "nope" in err


def test_v1_explain_answers_and_refuses_bad_requests(saved, tmp_path, tiny_model_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lepton.pipeline.artifact import save_artifact
    from lepton.serve.app import create_app
    from lepton.serve.settings import ServeSettings

    settings = ServeSettings(max_inputs=2, max_chars=40, model_batch=1)
    with TestClient(create_app(saved, settings)) as client:
        ok = client.post("/v1/explain", json={"inputs": ["the plot was superb"]})
        assert ok.status_code == 200, ok.text
        (e,) = ok.json()["explanations"]
        assert e["label"] == "pos" and max(e["tokens"], key=lambda t: t["score"])["token"] == "superb"
        assert client.post("/v1/explain?method=ig", json={"inputs": ["dull"]}).json()["explanations"][0]["method"] \
            == "ig"
        for body in ({"inputs": []}, {"inputs": ["x" * 41]}, {"inputs": [1]}, {"inputs": "text"},
                     {"inputs": ["a", "b", "c"]}, {"texts": ["a"]}, {"inputs": [""]}):
            r = client.post("/v1/explain", json=body)
            assert r.status_code == 422, (body, r.text)
        assert client.post("/v1/explain?method=lime", json={"inputs": ["a"]}).status_code == 422
        assert client.post("/v1/explain", content=b"inputs", headers={"Content-Type": "text/plain"}).status_code \
            == 415
    ner = save_artifact(token_bundle(tiny_model_dir), tmp_path / "ner")
    with TestClient(create_app(ner, settings)) as client:
        r = client.post("/v1/explain", json={"inputs": ["Alice visited Rome"]})
        assert r.status_code == 422 and "not supported yet" in r.json()["detail"]


def test_monitor_alert_names_the_words_behind_negative_items(saved):
    import lepton
    from lepton.monitor.config import HeadRef, PredictConfig
    from lepton.monitor.predict import ModelClassifier, alert_drivers

    model = lepton.load(saved)
    cfg = PredictConfig(sentiment=HeadRef(model=0), topic=HeadRef(model=1), negative_label="neg")
    classifier = ModelClassifier([model, model], cfg)
    items = [{"text": "the acting was awful"}, {"text": "a dull movie, really"}, {"text": "quite a plot"}]
    drivers = alert_drivers(classifier, items)
    assert drivers is not None and drivers["label"] == "neg" and len(drivers["items"]) == 3
    assert {w["word"] for w in drivers["words"][:2]} == {"awful", "dull"}
    spans = drivers["items"][0]
    assert [items[0]["text"][w["start"]:w["end"]] for w in spans] == ["the", "acting", "was", "awful"]
    assert max(spans, key=lambda w: w["score"])["end"] == len("the acting was awful")
    assert alert_drivers(object(), items) is None and alert_drivers(classifier, []) is None
