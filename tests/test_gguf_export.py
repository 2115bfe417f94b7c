"""GGUF written by Lepton (lepton.models.gguf_export, ``lepton gguf``): the tensor names and
metadata llama.cpp expects, read back by gguf's own reader, and loaded by transformers' GGUF reader
(which undoes llama.cpp's layout: q/k rows interleaved per head) to the same logits and tokens.
llama.cpp itself loads and runs the file in benchmarks/generative_runtimes.py's environment."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

import lepton
from lepton.cli import main
from lepton.models.gguf_export import GgufExportError, write_gguf
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import save_tiny_decoder, write_pairs_tsv

TEXT = "a man runs on the grass with two children"
PER_BLOCK = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}


def _load(folder: Path) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, save_tiny_decoder(tmp_path_factory.mktemp(request.param), request.param)


def test_f32_file_has_llama_cpp_names_and_loads_back_to_the_same_logits(tiny, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, folder = tiny
    model, tokenizer = _load(folder)
    info = write_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    assert info["architecture"] == arch and info["pre_tokenizer"] == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]

    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields[f"{arch}.block_count"].contents() == 3
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(tokenizer)
    names = {t.name for t in reader.tensors}
    blocks = {re.sub(r"^blk\.\d+\.|\.weight$|\.bias$", "", n) for n in names if n.startswith("blk.")}
    assert blocks == PER_BLOCK
    assert {"token_embd.weight", "output_norm.weight", "output.weight"} <= names
    assert {f"blk.{i}.attn_q.weight" for i in range(3)} <= names
    if arch == "qwen2":  # Qwen2 keeps q/k/v biases
        assert "blk.0.attn_q.bias" in names

    # transformers' GGUF reader: same logits, same tokenization.
    again = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    tok_again = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    ids = tokenizer([TEXT], return_tensors="pt").input_ids
    assert tok_again([TEXT]).input_ids == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_quantized_types_follow_the_rules(tiny, tmp_path: Path) -> None:
    """q4_0: matrices Q4_0, embeddings Q8_0, norms F32; the dequantized matrices are within one
    quantization step of the float ones, and the file is smaller than q8_0's, which is smaller than f32's."""
    _, folder = tiny
    model, tokenizer = _load(folder)
    sizes = {t: write_gguf(model, tokenizer, tmp_path / f"{t}.gguf", dtype=t)["size_mb"]
             for t in ("f32", "q8_0", "q4_0")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f32"]
    reader = gguf.GGUFReader(str(tmp_path / "q4_0.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "Q4_0" and types["blk.0.attn_norm.weight"] == "F32"
    down = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    got = gguf.quants.dequantize(down.data, down.tensor_type).reshape(model.model.layers[1].mlp.down_proj.weight.shape)
    want = model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    step = np.abs(want).reshape(-1, 32).max(1, keepdims=True) / 8  # Q4_0: 16 levels over [-max, max]
    assert np.all(np.abs(got - want).reshape(-1, 32) <= step + 1e-6)


def test_an_architecture_gguf_is_not_written_for_is_one_line(tmp_path: Path) -> None:
    model, tokenizer = _load(save_tiny_decoder(tmp_path / "gpt2", "gpt2"))
    with pytest.raises(GgufExportError, match="model type 'gpt2' is not written to GGUF"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".m.gguf*"))


def test_a_failure_while_writing_leaves_the_old_file(tiny, tmp_path: Path, monkeypatch) -> None:
    _, folder = tiny
    model, tokenizer = _load(folder)
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(LeptonErrorOrOSError):
        write_gguf(model, tokenizer, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


LeptonErrorOrOSError = (lepton.LeptonError, OSError)


def test_the_command_writes_a_lepton_model_folder_and_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    folder = save_tiny_decoder(tmp_path / "llama", "llama")
    recipe = {"schema_version": 1, "model": str(folder),
              "task": {"kind": "generation", "generation": {"max_new_tokens": 4}},
              "data": {"train": {"path": str(write_pairs_tsv(tmp_path / "train.tsv", 16, 0))},
                       "dev": {"path": str(write_pairs_tsv(tmp_path / "dev.tsv", 4, 1))}},
              "stages": [{"kind": "prune", "method": "ffn", "sparsity": 0.5, "importance": "magnitude"}],
              "evaluate": {"batch_sizes": [1], "bootstrap": 100, "rounds": 1, "memory": False, "baseline": False},
              "output": {"dir": str(tmp_path / "out")}}
    lepton.run(parse_recipe(recipe, env={}), progress=False)
    out = tmp_path / "pruned.gguf"
    assert main(["gguf", str(tmp_path / "out"), str(out), "--type", "f32"]) == 0
    assert "wrote" in capsys.readouterr().out
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["llama.feed_forward_length"].contents() == 64  # the pruned width
    # The pruned model as transformers reads the file back generates what Lepton's model does.
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="pruned.gguf").eval()
    mine = lepton.load(tmp_path / "out" / "model")
    ids = torch.tensor([[1, 68, 274, 288, 280]])
    want = mine.bundle.model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert again.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0).tolist() == want.tolist()

    capsys.readouterr()
    for argv, message in ((["gguf", str(folder), str(tmp_path / "x.bin")], "ending in .gguf"),
                          (["gguf", str(tmp_path / "missing"), str(tmp_path / "x.gguf")], "missing"),
                          (["gguf", str(folder), str(tmp_path / "no" / "x.gguf")], "does not exist")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and "Traceback" not in err
