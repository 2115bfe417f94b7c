"""drop_layers and prune on every decoder layout people bring: Llama, Qwen2, Gemma (gated FFN at
model.layers), Phi-3 (gate and up fused), Phi (plain FFN at model.layers), GPT-2 (transformer.h,
transposed Conv1D), GPT-J and Falcon (transformer.h), GPT-NeoX (gpt_neox.layers) and OPT
(model.decoder.layers, FFN on the layer itself). Tiny random models from tests/gen_tiny.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lepton
from lepton.core.errors import LeptonError
from lepton.models import decoder_structure as dc
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import DECODER_CONFIGS, save_tiny_decoder, tiny_decoder, write_pairs_tsv

ARCHS = sorted(DECODER_CONFIGS)
EXPECTED = {  # arch: (layer stack, FFN layout, width field)
    "llama": ("model.layers", "gated", "intermediate_size"),
    "qwen2": ("model.layers", "gated", "intermediate_size"),
    "gemma": ("model.layers", "gated", "intermediate_size"),
    "phi3": ("model.layers", "gated, gate and up fused", "intermediate_size"),
    "phi": ("model.layers", "plain", "intermediate_size"),
    "gpt2": ("transformer.h", "plain", "n_inner"),
    "gptj": ("transformer.h", "plain", "n_inner"),
    "falcon": ("transformer.h", "plain", "ffn_hidden_size"),
    "gpt_neox": ("gpt_neox.layers", "plain", "intermediate_size"),
    "opt": ("model.decoder.layers", "plain", "ffn_dim"),
}
IDS = torch.tensor([[5, 9, 40, 77, 120, 33, 8], [6, 100, 250, 17, 3, 64, 11]])


def test_every_tiny_architecture_has_its_expected_layout() -> None:
    assert set(EXPECTED) == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_structure_is_found(arch: str) -> None:
    found = dc.describe_structure(tiny_decoder(arch, 320))
    assert (found["layer_stack"], found["ffn"], found["ffn_width_field"]) == EXPECTED[arch]
    assert found["layers"] == 3


@pytest.mark.parametrize("arch", ARCHS)
def test_pruning_removes_exactly_the_chosen_neurons(arch: str) -> None:
    """Neurons whose output weights are zero contribute nothing: pruning exactly those (they score
    lowest) must leave the logits unchanged, in every layout (transposed Conv1D, fused blocks, the
    FFN on the layer itself), and the pruned model must be smaller by their weights."""
    model = tiny_decoder(arch, 320)
    ffns = dc._ffns(model)
    width = ffns[0].width
    dead = torch.arange(0, width, 2)  # every other neuron
    with torch.no_grad():
        for f in ffns:
            weight = f.output.weight
            if isinstance(f.output, torch.nn.Linear):
                weight[:, dead] = 0
            else:  # Conv1D: (in, out)
                weight[dead, :] = 0
    want = model(input_ids=IDS).logits
    scores = [torch.ones(width).index_fill(0, dead, 0.0) for _ in ffns]
    before = sum(p.numel() for p in model.parameters())
    done = dc.prune_ffn(model, width - len(dead), scores)
    assert done["intermediate_after"] == width - len(dead) and done["ffn"] == EXPECTED[arch][1]
    assert getattr(model.config, EXPECTED[arch][2]) == width - len(dead)
    torch.testing.assert_close(model(input_ids=IDS).logits, want, atol=1e-5, rtol=1e-5)
    per_neuron = sum(p.numel() for p in model.parameters()) - before
    assert per_neuron < 0 and done["params_after"] < done["params_before"]


@pytest.mark.parametrize("arch", ARCHS)
def test_drop_and_prune_save_reload_and_generate_the_same(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_decoder(arch, 320)
    dc.drop_decoder_layers(model, [1])
    dc.prune_ffn(model, 0.5, dc.ffn_importance(model, IDS, torch.ones_like(IDS)))
    assert model.config.num_hidden_layers == 2 and len(dc.decoder_layers(model)) == 2
    # The cache addresses the kept layers: cached greedy decoding equals decoding without a cache.
    cached = model.generate(IDS[:1], max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(IDS[:1], max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.tolist() == uncached.tolist()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(input_ids=IDS).logits, model(input_ids=IDS).logits)
    assert again.generate(IDS[:1], max_new_tokens=6, do_sample=False, pad_token_id=0).tolist() == cached.tolist()


def test_a_layout_without_a_width_field_is_refused_in_one_line() -> None:
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=320, hidden_size=64, n_layer=2, n_head=4)).eval()
    assert dc.describe_structure(model)["layer_stack"] == "transformer.h"
    dc.drop_decoder_layers(model, [1])  # layers: fine
    with pytest.raises(dc.CompressError, match="no config field states the FFN width"):
        dc.prune_ffn(model, 0.5)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "phi3"])
def test_the_stages_run_on_other_layouts_in_a_recipe(arch: str, tmp_path: Path) -> None:
    """Through a recipe, as a user runs them: importance-ranked layer drop, activation-scored FFN
    pruning, then export with the greedy-parity gate; the saved model reloads and generates."""
    folder = save_tiny_decoder(tmp_path / arch, arch)
    recipe = {"schema_version": 1, "model": str(folder),
              "task": {"kind": "generation", "generation": {"max_new_tokens": 4}},
              "data": {"train": {"path": str(write_pairs_tsv(tmp_path / "train.tsv", 24, 0))},
                       "dev": {"path": str(write_pairs_tsv(tmp_path / "dev.tsv", 6, 1))}},
              "stages": [{"kind": "drop_layers", "strategy": "importance", "layers": 2},
                         {"kind": "prune", "method": "ffn", "sparsity": 0.5, "importance": "gradient", "batches": 2},
                         {"kind": "export", "parity_items": 4}],
              "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False, "baseline": False},
              "output": {"dir": str(tmp_path / "out")}}
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summaries = {s["kind"]: s["summary"] for s in report.stages}
    assert summaries["drop_layers"]["layer_stack"] == EXPECTED[arch][0]
    assert summaries["drop_layers"]["layers_after"] == 2
    assert summaries["prune"]["ffn"] == EXPECTED[arch][1]
    assert summaries["prune"]["intermediate_after"] == summaries["prune"]["intermediate_before"] // 2
    parity = summaries["export"]["parity"]
    assert parity["identical"] == parity["prompts"] == 4
    model = lepton.load(tmp_path / "out" / "model")
    assert model.generate(["a man runs"]) == model.generate(["a man runs"])


def test_an_unknown_ffn_layout_is_one_line() -> None:
    model = tiny_decoder("llama", 320)
    for layer in dc.decoder_layers(model):
        layer.mlp = torch.nn.Identity()
    with pytest.raises(LeptonError, match="no FFN of a known layout"):
        dc.prune_ffn(model, 0.5)
