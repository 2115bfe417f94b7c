"""The teacher's outputs for distillation: one batch run live, or every training example's run
once and kept (unpadded, concatenated, with offsets) in a safetensors file whose key covers the
teacher's weights, the tokenized inputs and the cached layers. See ``lepton.stages.distill``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lepton.tasks import Encoded, collate, sorted_batches

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class TeacherBatch:
    logits: torch.Tensor  # [B, C] or [B, W, C]
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher layer -> [B, W, H]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher layer -> [B, h, W, W]


def _forward(model: Any, batch: dict[str, torch.Tensor], hidden: list[int], attention: list[int]) -> Any:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs, output_hidden_states=bool(hidden), output_attentions=bool(attention))


def teacher_batch(model: Any, batch: dict[str, torch.Tensor], hidden: list[int],
                  attention: list[int]) -> TeacherBatch:
    with torch.no_grad():
        out = _forward(model, batch, hidden, attention)
    return TeacherBatch(logits=out.logits.float(),
                        hidden={j: out.hidden_states[j + 1].float() for j in hidden},
                        attention={j: out.attentions[j].float() for j in attention})


class TeacherCache:
    """Teacher outputs of every training example, unpadded, concatenated, with offsets."""

    def __init__(self, tensors: dict[str, torch.Tensor], token_level: bool) -> None:
        self.t = tensors
        self.token_level = token_level
        self.hidden = sorted(int(k.split(".")[1]) for k in tensors if k.startswith("hidden."))
        self.attention = sorted(int(k.split(".")[1]) for k in tensors if k.startswith("attention."))

    @staticmethod
    def estimate_mb(data: Encoded, num_labels: int, token_level: bool, hidden: int, n_hidden: int,
                    heads: list[int]) -> float:
        tokens = sum(data.lengths)
        logits = 4 * num_labels * (tokens if token_level else len(data))
        states = 2 * tokens * hidden * n_hidden
        maps = 2 * sum(h for h in heads) * sum(n * n for n in data.lengths)
        return (logits + states + maps) / 2**20

    @classmethod
    def build(cls, model: Any, data: Encoded, pad: int, device: str, token_level: bool,
              hidden: list[int], attention: list[int], batch_size: int = 64) -> TeacherCache:
        n = len(data)
        lengths = data.lengths
        logit_rows: list[torch.Tensor | None] = [None] * n
        states: dict[int, list[torch.Tensor | None]] = {j: [None] * n for j in hidden}
        maps: dict[int, list[torch.Tensor | None]] = {j: [None] * n for j in attention}
        for idx in sorted_batches(lengths, batch_size):
            batch = {k: v.to(device) for k, v in collate(data, idx, pad, with_labels=False).items()}
            out = teacher_batch(model, batch, hidden, attention)
            for row, i in enumerate(idx):
                m = lengths[i]
                logit_rows[i] = (out.logits[row, :m] if token_level else out.logits[row]).cpu()
                for j in hidden:
                    states[j][i] = out.hidden[j][row, :m].half().cpu()
                for j in attention:
                    maps[j][i] = out.attention[j][row, :, :m, :m].reshape(-1).half().cpu()
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.long)
        tensors: dict[str, torch.Tensor] = {"offsets": offsets}
        rows = [r for r in logit_rows if r is not None]
        tensors["logits"] = torch.cat(rows) if token_level else torch.stack(rows)
        for j in hidden:
            tensors[f"hidden.{j}"] = torch.cat(states[j])  # type: ignore[arg-type]
        for j in attention:
            sizes = [int(x.numel()) for x in maps[j]]  # type: ignore[union-attr]
            tensors[f"attention_offsets.{j}"] = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]),
                                                             dtype=torch.long)
            tensors[f"attention.{j}"] = torch.cat(maps[j])  # type: ignore[arg-type]
        return cls(tensors, token_level)

    def for_batch(self, idx: list[int], width: int, device: str) -> TeacherBatch:
        off = self.t["offsets"]
        if self.token_level:
            logits = self.t["logits"].new_zeros((len(idx), width, self.t["logits"].shape[-1]))
            for row, i in enumerate(idx):
                a, b = int(off[i]), int(off[i + 1])
                logits[row, :b - a] = self.t["logits"][a:b]
        else:
            logits = self.t["logits"][idx]
        hidden = {}
        for j in self.hidden:
            src = self.t[f"hidden.{j}"]
            out = torch.zeros((len(idx), width, src.shape[-1]))
            for row, i in enumerate(idx):
                a, b = int(off[i]), int(off[i + 1])
                out[row, :b - a] = src[a:b].float()
            hidden[j] = out.to(device)
        attention = {}
        for j in self.attention:
            src, aoff = self.t[f"attention.{j}"], self.t[f"attention_offsets.{j}"]
            rows = []
            for i in idx:
                m = int(off[i + 1] - off[i])
                flat = src[int(aoff[i]):int(aoff[i + 1])].float()
                heads = flat.numel() // (m * m)
                rows.append(F.pad(flat.reshape(heads, m, m), (0, width - m, 0, width - m)))
            attention[j] = torch.stack(rows).to(device)
        return TeacherBatch(logits=logits.to(device), hidden=hidden, attention=attention)


def _inputs_sha(data: Encoded) -> str:
    digest = hashlib.sha256()
    for ids in data.input_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    for types in data.token_type_ids or []:
        digest.update(np.asarray(types, dtype=np.int8).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def cache_key(identity: str, data: Encoded, hidden: list[int], attention: list[int]) -> str:
    spec = {"format": CACHE_FORMAT, "teacher": identity, "inputs": _inputs_sha(data),
            "hidden": hidden, "attention": attention}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def write_cache(path: Path, cache: TeacherCache, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_file({k: v.contiguous() for k, v in cache.t.items()}, str(tmp),
                  metadata={"lepton": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_cache(path: Path, token_level: bool) -> tuple[TeacherCache, dict[str, Any]] | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("lepton", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (OSError, SafetensorError, json.JSONDecodeError) as err:
        log.warning("distill: ignoring the unreadable teacher cache %s (%s)", path, err)
        return None
    return TeacherCache(tensors, token_level), meta
