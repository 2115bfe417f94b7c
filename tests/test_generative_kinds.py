"""The generative kinds through the whole run: train, evaluate, save, reload with the same outputs,
load in plain transformers, resume exactly after a kill; pretrain with a causal objective; the
`lepton generate` command; bad input as one line."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lepton
from lepton.pipeline.recipe import parse_recipe
from tests.gen_tiny import save_tiny_llama, save_tiny_t5, toy_pairs, write_pairs_tsv, write_text_tsv

ROOT = Path(__file__).resolve().parents[1]
EVAL = {"batch_sizes": [1, 2], "bootstrap": 100, "rounds": 1, "memory": False}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("t5"))


def _parallel(folder: Path, split: str, n: int, seed: int) -> dict:
    pairs = toy_pairs(n, seed)
    for lang, idx in (("en", 0), ("de", 1)):
        with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as fh:
            fh.write("".join(p[idx] + "\n" for p in pairs))
    return {"path": str(folder / f"{split}.en.gz"), "target": str(folder / f"{split}.de.gz")}


def _recipe(model: Path, task: dict, data: dict, out: Path, **stage) -> dict:
    return {"schema_version": 1, "model": str(model), "task": task, "data": data,
            "stages": [{"kind": "finetune", "epochs": 2, "lr": 3e-3, "batch_size": 8, **stage}],
            "evaluate": EVAL, "output": {"dir": str(out)}}


def _cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lepton", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_translation_with_an_encoder_decoder_from_parallel_files(t5_dir, tmp_path):
    data = {"train": _parallel(tmp_path, "train", 64, 0), "dev": _parallel(tmp_path, "val", 16, 1)}
    task = {"kind": "generation", "prompt_template": "translate: {source}",
            "generation": {"strategy": "beam", "num_beams": 2, "max_new_tokens": 8}}
    report = lepton.run(parse_recipe(_recipe(t5_dir, task, data, tmp_path / "out"), env={}), progress=False)
    card = report.variants[-1]
    assert card.quality.headline == "bleu" and card.quality.signatures["bleu"].startswith("nrefs:1")
    assert set(card.quality.metrics) == {"bleu", "chrf", "exact_match", "target_perplexity"}
    assert card.efficiency.generative["single_stream"]["ttft_ms"] > 0
    evals = report.stages[0]["summary"]["evals"]
    assert evals[-1]["loss"] < evals[0]["loss"] + 1e-9 or len(evals) == 1

    folder = tmp_path / "out" / "model"
    assert (folder / "generation_config.json").is_file()
    manifest = json.loads((folder / "lepton.json").read_text())
    assert manifest["task"]["options"]["generation"]["num_beams"] == 2
    assert "generation_config.json" in manifest["files"]
    model = lepton.load(folder)
    prompts = ["translate: a man runs", "translate: the dog sits on the grass"]
    first = model.generate(prompts)
    assert model.generate(prompts) == first and len(first) == 2
    assert [p["generated_text"] for p in model.predict(prompts)] == first

    from transformers import AutoModelForSeq2SeqLM

    plain = AutoModelForSeq2SeqLM.from_pretrained(folder)  # no Lepton needed to load it
    batch = model.bundle.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = plain.generate(**batch, max_new_tokens=8, num_beams=2)
    assert model.bundle.tokenizer.batch_decode(out, skip_special_tokens=True) == [t for t in first] or \
        [t.strip() for t in model.bundle.tokenizer.batch_decode(out, skip_special_tokens=True)] == first


def test_decoder_lora_loads_in_plain_transformers_with_the_same_logits(llama_dir, tmp_path):
    train = write_pairs_tsv(tmp_path / "train.tsv", 48, 0)
    dev = write_pairs_tsv(tmp_path / "dev.tsv", 12, 1)
    recipe = _recipe(llama_dir, {"kind": "generation", "generation": {"max_new_tokens": 5}},
                     {"train": {"path": str(train)}, "dev": {"path": str(dev)}}, tmp_path / "out",
                     method="lora", lr=1e-2)
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = report.stages[0]["summary"]
    assert summary["method"] == "lora" and 0 < summary["trainable_share"] < 0.2 and summary["merged"]
    folder = tmp_path / "out" / "model"
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    model = lepton.load(folder)
    ids = model.bundle.tokenizer(["a man runs"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**ids).logits, model.bundle.model(**ids).logits)

    # `lepton serve` on this artifact answers OpenAI-style completions (the generation app), with
    # the same greedy tokens as transformers' generate on the prompt alone.
    from fastapi.testclient import TestClient

    from lepton.serve import ServeSettings
    from lepton.serve.app import create_app

    app = create_app(folder, ServeSettings(name="tiny"))
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
        got = client.post("/v1/completions", json={"model": "tiny", "prompt": "a man runs", "max_tokens": 4,
                                                   "temperature": 0, "ignore_eos": True})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["usage"]["completion_tokens"] == 4
        with torch.no_grad():
            want = plain.generate(**ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
        tok = model.bundle.tokenizer
        assert body["choices"][0]["text"] == tok.decode(want[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        bad = client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "temperature": -1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"


@pytest.mark.slow
def test_language_model_resumes_exactly_after_a_kill(llama_dir, tmp_path):
    train = write_text_tsv(tmp_path / "train.tsv", 64, 0)
    dev = write_text_tsv(tmp_path / "dev.tsv", 8, 1)
    recipe = _recipe(llama_dir, {"kind": "language_modeling", "max_length": 24},
                     {"train": {"path": str(train)}, "dev": {"path": str(dev)}}, tmp_path / "o",
                     checkpoint_every=3)
    recipe["evaluate"]["baseline"] = True
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    clean = _cli(["run", str(path), "-o", str(tmp_path / "clean"), "--no-progress"])
    assert clean.returncode == 0, clean.stderr
    killed = _cli(["run", str(path), "-o", str(tmp_path / "resumed"), "--no-progress"],
                  {"LEPTON_TEST_KILL_AT_STEP": "10"})
    assert killed.returncode == -9
    assert (tmp_path / "resumed" / "work" / "stage-0-finetune" / "latest").read_text() == "ckpt-0000009"
    resumed = _cli(["run", str(path), "-o", str(tmp_path / "resumed"), "--resume", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 9" in resumed.stderr
    a = load_file(str(tmp_path / "clean" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "clean" / "report.json").read_text())
    rb = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert ra["variants"][-1]["quality"] == rb["variants"][-1]["quality"]
    # The fine-tuned model is the baseline; the untrained one is compared against it.
    comparison = next(v["comparison"] for v in ra["variants"] if v["name"] == "pretrained")
    assert comparison["metric"] == "bits_per_byte" and comparison["delta"] > 0  # training helped
    assert comparison["verdict"] == "significantly worse"


def test_pretrain_follows_a_causal_model(llama_dir, tmp_path):
    text = tmp_path / "domain.txt"
    text.write_text("".join(f"{a} . {b} .\n" for a, b in toy_pairs(60, 5)))
    dev = write_text_tsv(tmp_path / "dev.tsv", 8, 1)
    recipe = {"schema_version": 1, "model": str(llama_dir), "task": {"kind": "language_modeling", "max_length": 32},
              "data": {"train": {"path": str(dev)}, "dev": {"path": str(dev)}},
              "stages": [{"kind": "pretrain", "text": {"path": str(text)}, "epochs": 2, "lr": 3e-3,
                          "batch_size": 8}],
              "evaluate": EVAL, "output": {"dir": str(tmp_path / "out")}}
    report = lepton.run(parse_recipe(recipe, env={}), progress=False)
    summary = report.stages[0]["summary"]
    assert summary["objective"] == "causal language modelling"
    assert summary["held_out_after"]["bits_per_byte"] < summary["held_out_before"]["bits_per_byte"]


def test_generate_command_on_a_saved_model_and_on_a_model_folder(llama_dir, tmp_path):
    out = _cli(["generate", str(llama_dir), "a man runs", "the dog", "--max-new-tokens", "4", "--json"])
    assert out.returncode == 0, out.stderr
    texts = json.loads(out.stdout)
    assert len(texts) == 2
    from lepton.models.decoder import load_generative
    from lepton.tasks.generate import generate
    from lepton.tasks.generation_settings import GenerationSettings

    model, tok = load_generative(str(llama_dir))
    assert generate(model, tok, ["a man runs", "the dog"], GenerationSettings(max_new_tokens=4)) == texts


def test_bad_inputs_are_one_line_each(llama_dir, tiny_model_dir, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("question\ttarget\nwhere\tthere\n")
    recipe = _recipe(llama_dir, {"kind": "generation"}, {"train": {"path": str(train)}, "dev": {"path": str(train)}},
                     tmp_path / "o1")
    path = tmp_path / "r1.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cases = []
    cases.append((["run", str(path), "--no-progress"], "prompt column 'prompt' not found"))
    empty = tmp_path / "empty.tsv"
    empty.write_text("prompt\ttarget\nwhere\t\n")
    cases.append((["run", str(path), "--no-progress", "--set", f"data.train.path={empty}",
                   "-o", str(tmp_path / "o2")], "empty.tsv:2: empty target"))
    cases.append((["validate", str(path), "--set", "task.generation.max_new_tokens=0"],
                   "task.generation.max_new_tokens"))
    cases.append((["generate", str(llama_dir), "hi", "--temperature", "0.5"],
                   "--temperature: applies to --strategy sample only"))
    cases.append((["generate", str(tiny_model_dir), "hi"], "has no causal-LM or seq2seq head"))
    for args, expected in cases:
        done = _cli(args)
        assert done.returncode == 2, (args, done.stderr)
        lines = [line for line in done.stderr.strip().splitlines() if line.startswith("lepton: error")]
        assert len(lines) == 1 and expected in lines[0], (args, done.stderr[-800:])
        assert "Traceback" not in done.stderr
