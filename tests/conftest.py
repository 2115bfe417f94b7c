"""Shared fixtures: a tiny random-weight BERT with the real MiniLM tokenizer, small data files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tiny models gain nothing from more threads, and one thread per test process keeps the suite from
# fighting benchmarks (or itself) for the two cores. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a core dependency
    pass


def data_root() -> Path:
    return Path(os.environ.get("LEPTON_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = data_root()
    if not (root / "sst2" / "dev.tsv").is_file():
        pytest.skip(f"real data not found at {root} (set LEPTON_DATA)")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT encoder (random weights) saved with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lepton.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]


@pytest.fixture(scope="session")
def model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random models by family, for the task-kind and stage contract tests (see
    tests/task_examples.py: each kind names the family it needs)."""
    from tests.gen_tiny import save_tiny_llama

    return {"encoder": tiny_model_dir, "decoder": save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))}


def spec_for(kind: str, labels: list[str]):
    """A resolved task of ``kind`` over ``labels`` (raw values = names)."""
    from lepton.tasks import TaskSpec

    return TaskSpec(kind=kind, labels=list(labels), raw_labels=list(labels))


def write_sentiment_tsv(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable toy sentiment set: the label is decided by which word list the sentence uses."""
    import random

    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(POSITIVE if label else NEGATIVE, 2)
        filler = rng.sample(["the", "movie", "was", "really", "quite", "plot", "acting", "a"], 3)
        tokens = words + filler
        rng.shuffle(tokens)
        lines.append(f"{' '.join(tokens)}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_conll(path: Path, n: int, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    names = ["Alice", "Bob", "Carol"]
    places = ["Paris", "Berlin", "Rome"]
    out = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        out += [f"{rng.choice(names)} NNP B-NP B-PER", "visited VBD B-VP O",
                f"{rng.choice(places)} NNP B-NP B-LOC", ". . O O", ""]
    path.write_text("\n".join(out))
    return path


def tiny_recipe(model_dir: Path, train: Path, dev: Path, out: Path, **finetune: object) -> dict:
    stage = {"kind": "finetune", "epochs": 2, "lr": 1e-3, "batch_size": 8, **finetune}
    return {
        "schema_version": 1,
        "model": str(model_dir),
        "task": {"kind": "sequence_classification", "text": "sentence", "label": "label"},
        "data": {"train": {"path": str(train)}, "dev": {"path": str(dev)}},
        "stages": [stage],
        # explain.items: 6 keeps the attributions in every toy run cheap (tests/test_explain.py sets its own)
        "evaluate": {"batch_sizes": [1, 4], "latency_items": 5, "warmup": 1, "throughput_batches": 1,
                     "bootstrap": 100, "fixed_length": 16, "explain": {"items": 6}},
        "output": {"dir": str(out)},
    }


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install -y chromium)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Debian Chromium with a fresh profile and the flags this closed network needs."""
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)
