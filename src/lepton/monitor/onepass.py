"""Both label sets of a multi-task model from one encoder pass.

``Predictor.predict(texts, task=...)`` runs the whole model once per task: on a multi-task model
that is the shared encoder twice for topic + sentiment. The monitor needs every task for every
item, so this module runs the encoder once per batch and reads each head from it:

- ONNX Runtime: the exported graph already computes every head; one ``session.run`` asks for the
  outputs of both (``logits`` for the main task, ``logits.<task>`` for the others).
- PyTorch: the encoder runs once; each task model (the main model and the heads, which share its
  encoder, see lepton.runtimes.heads) is then called with its encoder attribute swapped, for that call,
  for a module that hands back the encoder's output. The task models' own code computes the
  logits from there, so any ``...ForSequenceClassification`` works unchanged.

Written here because no library runs the heads of a transformers multi-task model in one pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton.tasks import softmax


class _Replay:
    """Stands in for the shared encoder during one task model's call: returns the stored output."""

    def __new__(cls, output: Any) -> Any:
        import torch

        class Replay(torch.nn.Module):
            def forward(self, *args: Any, **kwargs: Any) -> Any:
                return output

        return Replay()


def _torch_logits(bundle: Any, tasks: list[str | None], enc: dict[str, Any]) -> list[np.ndarray]:
    import torch

    from lepton.runtimes.heads import encoder_of

    main = bundle.model
    models = [main if t is None or t == bundle.main_task else bundle.heads[t].model for t in tasks]
    device = next(main.parameters()).device
    inputs = {k: v.to(device) for k, v in enc.items()}
    with torch.inference_mode():
        encoder = encoder_of(main)
        encoded = encoder(**inputs)
        out = []
        for model in models:
            prefix = model.base_model_prefix
            real = getattr(model, prefix)
            setattr(model, prefix, _Replay(encoded))
            try:
                out.append(model(**inputs).logits.float().cpu().numpy())
            finally:
                setattr(model, prefix, real)
    return out


def _onnx_logits(bundle: Any, tasks: list[str | None], enc: dict[str, Any]) -> list[np.ndarray]:
    session = bundle.model.session()
    names = ["logits" if t is None or t == bundle.main_task else f"logits.{t}" for t in tasks]
    feed = {}
    for i in session.get_inputs():
        value = enc.get(i.name)
        if value is None:
            value = np.zeros_like(enc["input_ids"])
        feed[i.name] = np.ascontiguousarray(value, dtype=np.int64)
    return [np.asarray(x, dtype=np.float32) for x in session.run(names, feed)]


def predict_tasks(predictor: Any, texts: list[str], tasks: list[str | None],
                  batch_size: int = 32) -> list[list[dict[str, Any]]]:
    """For each task, ``{"label", "score", "scores"}`` per text, as ``predictor.predict`` gives,
    from one encoder pass per batch. ``predictor``: a ``lepton.load`` result."""
    bundle = predictor.bundle
    specs = [predictor.head(t).task for t in tasks]
    max_length = min(s.max_length for s in specs)
    results: list[list[Any]] = [[None] * len(texts) for _ in tasks]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per batch
    onnx = bundle.runtime_info.is_graph
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = bundle.tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                               return_tensors="np" if onnx else "pt")
        logits = _onnx_logits(bundle, tasks, dict(enc)) if onnx else _torch_logits(bundle, tasks, dict(enc))
        for k, (spec, lg) in enumerate(zip(specs, logits)):
            for i, row in zip(idx, softmax(lg)):
                best = int(np.argmax(row))
                results[k][i] = {"label": spec.labels[best], "score": float(row[best]),
                                 "scores": {lab: float(p) for lab, p in zip(spec.labels, row)}}
    return results
