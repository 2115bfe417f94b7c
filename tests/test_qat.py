"""Quantization-aware training (``finetune`` with ``qat: true``) on tiny random-weight models: the
fake-quantized Linear rounds as static INT8 will, gradients pass straight through, observers
freeze on schedule and never move during dev evaluation, the stage outputs an ordinary float
model, a crashed QAT run resumes exactly, ``finetune(qat) -> export -> quantize static_int8`` runs
end to end, and settings that do not fit are rejected with the key at fault."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

import lepton
from lepton.core.errors import RecipeError
from lepton.pipeline.artifact import load_bundle, save_artifact
from lepton.pipeline.recipe import parse_recipe
from lepton.runtimes import for_bundle
from lepton.stages.finetune.qat import FakeQuantLinear, QatSettings, insert_fake_quant
from tests.conftest import tiny_recipe, write_sentiment_tsv
from tests.test_artifact import TEXTS, sequence_bundle
from tests.test_export import apply, batch_of, make_ctx, sentiment_splits


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return sentiment_splits(tmp_path_factory.mktemp("data"))


def _layer(seed: int = 0) -> tuple[torch.nn.Linear, FakeQuantLinear]:
    torch.manual_seed(seed)
    plain = torch.nn.Linear(16, 8)
    return plain, FakeQuantLinear(plain, QatSettings())


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Static INT8 as ONNX Runtime computes it (uint8 asymmetric activations over the observed
    range, int8 symmetric weights per output channel), rounding written out independently."""
    def act(t: torch.Tensor) -> torch.Tensor:
        lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
        scale = (hi - lo) / 255
        zero = round(-lo / scale)
        return (torch.clamp(torch.round(t / scale) + zero, 0, 255) - zero) * scale

    scale = w.abs().amax(dim=1, keepdim=True) / 127
    wq = torch.clamp(torch.round(w / scale), -127, 127) * scale
    return act(act(x) @ wq.T) + b


def test_fake_quant_linear_rounds_like_static_int8() -> None:
    plain, fake = _layer()
    assert fake.weight is plain.weight and fake.bias is plain.bias  # the same Parameters
    x = torch.randn(2, 5, 16) * 3
    fake.train()
    out = fake(x)  # the first batch sets the observed ranges exactly
    with torch.no_grad():
        expected = _reference(x, plain.weight, plain.bias)
        float_out = plain(x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, float_out, atol=1e-4)  # rounding changes the output ...
    assert (out - float_out).abs().max() < 0.1 * float_out.abs().max()  # ... a little
    # A 2-D input is exported as Gemm, which static INT8 leaves in float: no rounding there.
    flat = torch.randn(3, 16)
    assert torch.equal(fake(flat), plain(flat))


def test_gradients_pass_straight_through() -> None:
    plain, fake = _layer(1)
    x = (torch.randn(2, 4, 16)).requires_grad_()
    fake.train()
    fake(x).sum().backward()
    assert plain.weight.grad is not None and plain.weight.grad.abs().sum() > 0
    assert plain.bias.grad is not None and x.grad is not None and x.grad.abs().sum() > 0
    # Straight through: d(sum y)/dW is the float rule applied at the rounded input (every weight
    # is inside its own symmetric range, so none is clipped).
    with torch.no_grad():
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        s, z = (hi - lo) / 255, round(-lo / ((hi - lo) / 255))
        xq = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
    assert torch.allclose(plain.weight.grad, xq.reshape(-1, 16).sum(0).expand(8, 16), atol=1e-4)


def test_observers_freeze_on_schedule_and_dev_evaluation_never_observes() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    state = insert_fake_quant(model, QatSettings(freeze_observers_after=0.5), total_steps=4)
    assert state.layers == 2 and state.freeze_step == 2
    first = model[0]
    model.train()
    model(torch.randn(2, 3, 16))
    seen = (first.input_observer.min_val.clone(), first.input_observer.max_val.clone())
    model.eval()
    model(torch.randn(2, 3, 16) * 10)  # dev evaluation: ranges stay
    assert torch.equal(first.input_observer.max_val, seen[1])
    model.train()
    state.on_step(1)
    model(torch.randn(2, 3, 16) * 10)  # still observing
    assert first.input_observer.max_val > seen[1]
    state.on_step(2)
    frozen = first.input_observer.max_val.clone()
    model(torch.randn(2, 3, 16) * 100)
    assert torch.equal(first.input_observer.max_val, frozen)
    state.remove()
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]


def test_finetune_with_qat_outputs_an_ordinary_float_model(tiny_model_dir, splits, tmp_path) -> None:
    plain_keys = set(sequence_bundle(tiny_model_dir).model.state_dict())
    ctx = make_ctx(tmp_path / "qat", splits)
    out = apply(sequence_bundle(tiny_model_dir), ctx, kind="finetune", epochs=2, lr=1e-3, batch_size=8,
                qat=True, qat_settings={"freeze_observers_after": 0.5})
    summary = ctx.stage_summary["qat"]
    assert summary["linear_layers"] == 14 and summary["fake_quantized_layers"] == 12  # not pooler, classifier
    assert summary["observers_frozen_after_step"] == 6 and summary["removed"] is True  # 12 steps
    assert summary["settings"]["freeze_observers_after"] == 0.5
    # While training, the layers were fake-quantized: the epoch-1 checkpoint holds their observers.
    ckpt = load_file(str(next((tmp_path / "qat" / "stage-0").glob("ckpt-*")) / "model.safetensors"))
    assert "bert.encoder.layer.0.attention.self.query.input_observer.max_val" in ckpt
    assert float(ckpt["bert.encoder.layer.0.attention.self.query.observing"]) == 0  # frozen after step 6
    # Afterwards: plain Linear layers, the plain model's keys, a normal artifact.
    assert not any(isinstance(m, FakeQuantLinear) for m in out.model.modules())
    assert sum(type(m) is torch.nn.Linear for m in out.model.modules()) == 14
    assert set(out.model.state_dict()) == plain_keys
    loaded = load_bundle(save_artifact(out, tmp_path / "model"))
    batch = batch_of(out.tokenizer, TEXTS)
    assert abs(for_bundle(out).logits(batch) - for_bundle(loaded).logits(batch)).max() == 0.0
    # QAT trains differently from plain fine-tuning with the same seed.
    plain = apply(sequence_bundle(tiny_model_dir), make_ctx(tmp_path / "plain", splits), kind="finetune",
                  epochs=2, lr=1e-3, batch_size=8)
    assert not torch.equal(plain.model.classifier.weight, out.model.classifier.weight)


def test_recipe_finetune_qat_export_static_int8(tiny_model_dir, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    train = write_sentiment_tsv(tmp_path / "train.tsv", 64, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 24, seed=2)
    raw = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1, qat=True)
    raw["evaluate"].update(batch_sizes=[1], fixed_length=None, rounds=1, robustness=False, memory=False)
    raw["stages"] += [{"kind": "export"},
                      {"kind": "quantize", "method": "static_int8", "calibration_items": 16}]
    report = lepton.run(parse_recipe(raw, env={}), progress=False)
    assert [s["kind"] for s in report.stages] == ["finetune", "export", "quantize"]
    assert report.stages[0]["summary"]["qat"]["fake_quantized_layers"] == 12
    assert report.stages[0]["settings"]["qat"] is True
    quant = report.stages[2]["summary"]
    assert quant["quantized_matmuls"] == 12 and quant["vs_input"]["agreement"] >= 0.9
    assert [v.name for v in report.variants] == ["finetune", "export", "quantize"]


class _Killed(Exception):
    pass


def test_qat_resume_after_a_crash_matches_uninterrupted_run(tiny_model_dir, splits, tmp_path, monkeypatch,
                                                            caplog) -> None:
    from lepton.stages import training

    settings = {"kind": "finetune", "epochs": 2, "lr": 1e-3, "batch_size": 8, "checkpoint_every": 3, "keep_best": False,
                "qat": True, "qat_settings": {"freeze_observers_after": 0.4}}
    clean = apply(sequence_bundle(tiny_model_dir), make_ctx(tmp_path / "clean", splits), **settings)

    def die(pid: int, sig: int) -> None:  # the training loop's fault injection, without the SIGKILL
        raise _Killed

    # 12 steps; the observers freeze after step 5; killed at step 8, resumed from the checkpoint
    # at step 6, whose frozen ranges must come back with it.
    monkeypatch.setattr(training, "_KILL_AT_STEP", 8)
    monkeypatch.setattr(os, "kill", die)
    with pytest.raises(_Killed):
        apply(sequence_bundle(tiny_model_dir), make_ctx(tmp_path / "resumed", splits), **settings)
    monkeypatch.setattr(training, "_KILL_AT_STEP", 0)
    ctx = make_ctx(tmp_path / "resumed", splits)
    ctx.resume = True
    with caplog.at_level("INFO", logger="lepton.stages.training"):
        resumed = apply(sequence_bundle(tiny_model_dir), ctx, **settings)
    assert "resuming at step 6" in caplog.text
    a, b = clean.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("observer" in k for k in a)


@pytest.mark.parametrize(("stage", "message"), [
    ({"method": "lora", "qat": True}, "stages.0.qat: .*method: full only"),
    ({"method": "adalora", "qat": True}, "stages.0.qat: .*method: full only"),
    ({"qat_settings": {"freeze_observers_after": 0.3}}, "stages.0.qat_settings: .*qat: true"),
    ({"qat": True, "qat_settings": {"freeze_observers_after": 0}}, "stages.0.qat_settings.freeze_observers_after"),
    ({"qat": True, "qat_settings": {"freez_observers_after": 0.5}},
     "unknown key 'stages.0.qat_settings.freez_observers_after'"),
    ({"qat": True, "qat_settings": {"activation_type": "int4"}}, "stages.0.qat_settings.activation_type"),
])
def test_settings_that_do_not_fit_name_the_key(tmp_path, stage, message) -> None:
    raw = tiny_recipe(tmp_path, tmp_path / "t.tsv", tmp_path / "d.tsv", tmp_path / "o", **stage)
    with pytest.raises(RecipeError, match=message):
        parse_recipe(raw, env={})
