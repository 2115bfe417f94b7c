"""The search cache stays under its size limit: least recently used entries go first, never the
baseline's, never one a running trial holds."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import yaml

from lepton.search.prefix import USED, _flock, evict
from tests.conftest import tiny_recipe, write_sentiment_tsv

pytest.importorskip("optuna", reason="lepton[search] is not installed")


def _entry(root: Path, key: str, size: int, used: float) -> Path:
    entry = root / "prefix" / key
    (entry / "snapshot").mkdir(parents=True)
    (entry / "snapshot" / "model.safetensors").write_bytes(b"x" * size)
    (entry / USED).touch()
    os.utime(entry / USED, (used, used))
    return entry


def _teacher(root: Path, key: str, size: int, used: float) -> Path:
    path = root / "teacher" / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"t" * size)
    os.utime(path, (used, used))
    return path


def test_eviction_removes_the_least_recently_used_until_the_cache_fits(tmp_path):
    now = time.time()
    root = tmp_path / "cache"
    base = _entry(root, "base", 1000, now - 500)  # the oldest, but the baseline's: kept
    old = _entry(root, "old", 1000, now - 400)
    teacher = _teacher(root, "teach", 1000, now - 300)
    mid = _entry(root, "mid", 1000, now - 200)
    new = _entry(root, "new", 1000, now - 100)
    result = evict(root, 3000, keep={"base"})
    # 5000 bytes in all, 3000 allowed: the two least recently used go (the kept one does not count).
    assert result.removed == ["prefix/old", "teacher/teach.safetensors"]
    assert not old.exists() and not teacher.exists()
    assert base.exists() and mid.exists() and new.exists()
    assert result.size_bytes <= 3000 and not result.over
    # Under the limit already: nothing more is removed.
    assert evict(root, 3000, keep={"base"}).removed == []


def test_an_entry_a_running_trial_holds_is_never_removed(tmp_path):
    now = time.time()
    root = tmp_path / "cache"
    held = _entry(root, "held", 1000, now - 300)
    other = _entry(root, "other", 1000, now - 200)
    with _flock(root / "prefix" / "held.pin", shared=True):  # as a trial pins what it loaded
        result = evict(root, 0)
    assert held.exists() and not other.exists()
    assert result.removed == ["prefix/other"] and result.over  # what is left is in use
    assert evict(root, 0).removed == ["prefix/held"]  # released: now it can go


@pytest.mark.slow  # a whole search (about 20 s): the default suite stays under 10 minutes
def test_a_search_with_a_tiny_cache_limit_keeps_only_the_baseline_and_still_finishes(tmp_path, tiny_model_dir,
                                                                                       caplog):
    from lepton.search import search

    caplog.set_level(logging.INFO, logger="lepton")
    train = write_sentiment_tsv(tmp_path / "train.tsv", 96, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 32, seed=2)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=2)
    tree["evaluate"].update({"robustness": False, "rounds": 1, "memory": False})
    tree["stages"] += [{"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}},
                       {"kind": "finetune", "name": "recover", "epochs": 1}]
    tree["search"] = {"trials": 3, "sampler": "random", "sampler_seed": 0, "cache_max_gb": 1e-9}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = tmp_path / "out"
    result = search(path, out_dir=out, progress=False)
    assert result.summary["trials_complete"] == 3 and result.best_dir is not None
    left = sorted(p.name for p in (out / "cache" / "prefix").iterdir()
                  if p.is_dir() and not p.name.startswith("."))
    # Only the baseline's prefixes are left (the starting model's and the fine-tuned one's);
    # the drop_layers prefixes the trials cached were evicted after each trial.
    prefixes = [json.loads((out / "cache" / "prefix" / k / "prefix.json").read_text())["stages"] for k in left]
    assert left and all([s["kind"] for s in stages] in ([], ["finetune"]) for stages in prefixes)
    assert "least recently used entries" in caplog.text
