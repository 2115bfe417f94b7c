"""drop_layers and prune on encoder-decoder models (T5 plain and gated, Marian, BART): encoder and
decoder layers chosen separately, FFN neurons removed physically from both stacks; the saved
model reloads in plain transformers and generates what Lepton's model does. Tiny random models
from tests/gen_tiny.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lepton
from lepton.core.errors import LeptonError, RecipeError
from lepton.models import decoder_structure as dc
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import SEQ2SEQ_CONFIGS, save_tiny_decoder, save_tiny_seq2seq, write_pairs_tsv

WIDTH = {"t5": ("d_ff", "d_ff"), "t5-gated": ("d_ff", "d_ff"), "marian": ("encoder_ffn_dim", "decoder_ffn_dim"),
         "bart": ("encoder_ffn_dim", "decoder_ffn_dim")}
STACK = {"t5": "encoder.block", "t5-gated": "encoder.block", "marian": "model.encoder.layers",
         "bart": "model.encoder.layers"}


def _recipe(model: Path, tmp: Path, stages: list[dict]) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"schema_version": 1, "model": str(model),
            "task": {"kind": "generation", "generation": {"max_new_tokens": 5}},
            "data": {"train": {"path": str(write_pairs_tsv(tmp / "train.tsv", 24, 0))},
                     "dev": {"path": str(write_pairs_tsv(tmp / "dev.tsv", 6, 1))}},
            "stages": stages,
            "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False, "baseline": False},
            "output": {"dir": str(tmp / "out")}}


@pytest.mark.parametrize("arch", sorted(SEQ2SEQ_CONFIGS))
def test_drop_and_prune_both_stacks_then_reload_and_generate_the_same(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    folder = save_tiny_seq2seq(tmp_path / arch, arch)
    stages = [{"kind": "drop_layers", "keep": [0, 2], "strategy": "bottom", "decoder_layers": 1},
              {"kind": "prune", "method": "ffn", "sparsity": 0.5, "importance": "gradient", "batches": 2,
               "batch_size": 8}]
    report = lepton.run(parse_recipe(_recipe(folder, tmp_path, stages), env={}), progress=False)
    summaries = {s["kind"]: s["summary"] for s in report.stages}
    drop = summaries["drop_layers"]
    assert drop["encoder"]["kept"] == [0, 2] and drop["encoder"]["layer_stack"] == STACK[arch]
    assert drop["decoder"]["layers_after"] == 1 and drop["decoder"]["kept"] == [0]  # bottom keeps the first
    prune = summaries["prune"]
    for stack, field in zip(("encoder", "decoder"), WIDTH[arch]):
        assert prune[stack]["width_field"] == field
        assert prune[stack]["intermediate_after"] == prune[stack]["intermediate_before"] // 2

    saved = tmp_path / "out" / "model"
    plain = AutoModelForSeq2SeqLM.from_pretrained(saved).eval()  # plain transformers reads the result
    cfg = plain.config
    assert getattr(cfg, WIDTH[arch][0]) == prune["encoder"]["intermediate_after"]
    assert len(dc.seq2seq_layers(plain, dc.SEQ2SEQ_STACKS[0])) == 2
    assert len(dc.seq2seq_layers(plain, dc.SEQ2SEQ_STACKS[1])) == 1
    model = lepton.load(saved)
    prompts = ["a man runs", "two children play with a ball"]
    first = model.generate(prompts)
    assert lepton.load(saved).generate(prompts) == first
    ids = model.bundle.tokenizer(prompts[0], return_tensors="pt").input_ids
    with torch.no_grad():
        want = model.bundle.model.generate(ids, max_new_tokens=5, do_sample=False)
        got = plain.generate(ids, max_new_tokens=5, do_sample=False)
    assert got.tolist() == want.tolist()


def test_pruning_exactly_the_dead_neurons_keeps_the_outputs(tmp_path: Path) -> None:
    """Zero the output weights of half the FFN neurons in both stacks; pruning exactly those must
    leave the logits as they were (T5 gated: two input projections and the transposition of
    nothing; BART: fc1/fc2 with biases)."""
    from transformers import AutoModelForSeq2SeqLM

    for arch in ("t5-gated", "bart"):
        model = AutoModelForSeq2SeqLM.from_pretrained(save_tiny_seq2seq(tmp_path / arch, arch)).eval()
        scores = {}
        with torch.no_grad():
            for stack in dc.SEQ2SEQ_STACKS:
                per_layer = []
                for f in dc._ffns_of(dc.seq2seq_layers(model, stack)):
                    dead = torch.arange(0, f.width, 2)
                    f.output.weight[:, dead] = 0
                    per_layer.append(torch.ones(f.width).index_fill(0, dead, 0.0))
                scores[stack.name] = per_layer
            batch = {"input_ids": torch.tensor([[5, 9, 40, 77, 2]]), "decoder_input_ids": torch.tensor([[0, 8, 30]])}
            want = model(**batch).logits
            dc.prune_seq2seq_ffn(model, 0.5, scores)
            torch.testing.assert_close(model(**batch).logits, want, atol=1e-5, rtol=1e-5)


def test_what_cannot_work_is_one_line(tmp_path: Path) -> None:
    t5 = save_tiny_seq2seq(tmp_path / "t5", "t5")
    cases = [([{"kind": "drop_layers", "keep": [1, 2]}], "relative position bias"),
             ([{"kind": "drop_layers", "strategy": "importance", "layers": 2}], "importance is built for one-stack"),
             ([{"kind": "drop_layers", "decoder_keep": [0, 5]}], "decoder_keep: layer 5 is out of range"),
             ([{"kind": "prune", "method": "heads", "sparsity": 0.5}], "not built for encoder-decoder")]
    for i, (stages, message) in enumerate(cases):
        with pytest.raises(LeptonError, match=message):
            lepton.run(parse_recipe(_recipe(t5, tmp_path / str(i), stages), env={}), progress=False)
    llama = save_tiny_decoder(tmp_path / "llama", "llama")
    with pytest.raises(LeptonError, match="decoder_layers: applies to encoder-decoder models"):
        lepton.run(parse_recipe(_recipe(llama, tmp_path / "d", [{"kind": "drop_layers", "keep": [0],
                                                                 "strategy": "top", "decoder_layers": 1}]),
                                env={}), progress=False)
    with pytest.raises(RecipeError, match="needs layers"):
        parse_recipe(_recipe(t5, tmp_path / "r", [{"kind": "drop_layers", "strategy": "top"}]), env={})
