"""Where a saved model comes from, written into its manifest: the parent artifact it started
from (a saved Lepton model: its manifest's sha256 and path), the data it learned from (path and
sha256 of each file), and the rehearsal sample saved with it (``data/rehearsal.jsonl``, a seeded
sample of the training data that a later ``lepton update --method replay`` mixes back in).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

from lepton.core.atomic import sha256
from lepton.core.errors import ArtifactError
from lepton.data import Split, datasets
from lepton.runtimes.saved import MANIFEST, is_saved_model

log = logging.getLogger(__name__)

REHEARSAL = "data/rehearsal.jsonl"  # inside a model folder, listed in its manifest's files


def data_file(path: str) -> dict[str, Any]:
    """{path, sha256} of one data source (a built-in set: its packaged file; a folder: no sha256)."""
    if datasets.is_builtin(path):
        try:
            file = datasets.builtin_path(path)
        except Exception:  # noqa: BLE001 - an unknown name was refused when the recipe loaded
            return {"path": path, "sha256": None}
    else:
        file = Path(path).expanduser()
    return {"path": path, "sha256": sha256(file) if file.is_file() else None}


def parent_of(model: str) -> dict[str, Any] | None:
    """The parent record of a run starting from ``model``: None unless it is a saved Lepton model."""
    folder = Path(model).expanduser()
    if not is_saved_model(folder):
        return None
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    return {"path": os.path.realpath(folder), "manifest_sha256": manifest.get("manifest_sha256"),
            "manifest_file_sha256": sha256(folder / MANIFEST), "labels": (manifest.get("task") or {}).get("labels"),
            "lineage": manifest.get("lineage")}


def lineage(recipe: Any, history: list[Any]) -> dict[str, Any]:
    """The manifest's ``lineage`` entry of a run of ``recipe`` whose stages left ``history``."""
    learned = [{"split": name, **data_file(cfg.path)} for name in ("train", "dev", "test")
               if (cfg := getattr(recipe.data, name)) is not None]
    for record in history:  # e.g. update's replay sample: data it learned from too
        replay = (record.summary or {}).get("replay")
        if isinstance(replay, dict) and replay.get("path"):
            learned.append({"split": f"{record.name}.replay", "path": replay["path"],
                            "sha256": replay.get("sha256"), "items": replay.get("items")})
    parent = parent_of(recipe.model_source())
    if parent is not None and isinstance(parent.get("lineage"), dict):
        # The grandparent's line, one level: enough to walk back with lepton info --json.
        parent["lineage"] = {k: v for k, v in parent["lineage"].items() if k != "parent"} | {
            "parent": (parent["lineage"].get("parent") or {}).get("manifest_sha256")}
    return {"parent": parent, "data": learned}


def read_rehearsal(folder: Path) -> list[dict[str, Any]]:
    """The rehearsal rows saved with a model ([] when it has none)."""
    path = folder / REHEARSAL
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as err:
            raise ArtifactError(f"{path}:{i}: not a JSON line ({err})") from None
    return rows


def rehearsal_sample(recipe: Any, train: Split | None) -> bytes | None:
    """``data/rehearsal.jsonl`` for the artifact: ``output.rehearsal_items`` rows, a seeded sample
    of data.train (raw labels, as the task reads them) and, for a model started from a saved
    one with its own sample, half from that sample (so old data stays represented after an
    update). None when disabled, or for data that is not one labelled text (or pair) per row."""
    n = recipe.output.rehearsal_items
    if n == 0 or train is None or train.labels is None or train.kind != "sequence":
        return None
    rng = random.Random(recipe.seed)
    new = [_row(train, i) for i in range(len(train))]
    folder = Path(recipe.model_source()).expanduser()
    old = read_rehearsal(folder) if is_saved_model(folder) else []
    n_old = min(len(old), n // 2 if new else n)
    n_new = min(len(new), n - n_old)
    n_old = min(len(old), n - n_new)
    rows = rng.sample(old, n_old) + rng.sample(new, n_new)
    rng.shuffle(rows)
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _row(split: Split, i: int) -> dict[str, Any]:
    row: dict[str, Any] = {"text": split.texts[i], "label": split.labels[i]}  # type: ignore[index]
    if split.text_pairs is not None:
        row["text_pair"] = split.text_pairs[i]
    return row
