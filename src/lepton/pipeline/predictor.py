"""Inference on raw text with a loaded Lepton model (what ``lepton.load`` returns)."""

from __future__ import annotations

import os
from typing import Any

from lepton.runtimes.bundle import ModelBundle
from lepton.tasks import TaskSpec, kind_of


def _approx_length(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, (list, tuple)):
        return sum(len(x) if isinstance(x, str) else 1 for x in item)
    return 0


class Predictor:
    """A loaded model that predicts on raw text. Returned by ``lepton.load``."""

    def __init__(self, bundle: ModelBundle, manifest: dict[str, Any]) -> None:
        self.bundle = bundle
        self.manifest = manifest
        self._runtime: Any = None
        self._heads: dict[str, Predictor] = {}

    @property
    def tasks(self) -> list[str]:
        """The tasks this model predicts: the main one first, then any extra heads."""
        return [self.bundle.main_task, *self.bundle.heads]

    def head(self, task: str | None) -> Predictor:
        """The predictor of one task of a multi-task model (None: the main task)."""
        from lepton.runtimes.heads import head_bundle

        if task is None or task == self.bundle.main_task:
            return self
        if task not in self._heads:
            self._heads[task] = Predictor(head_bundle(self.bundle, task), self.manifest)
        return self._heads[task]

    @property
    def task(self) -> TaskSpec:
        return self.bundle.task

    @property
    def labels(self) -> list[str]:
        return self.bundle.task.labels

    def predict(self, inputs: Any, *, batch_size: int = 16, task: str | None = None) -> list[dict[str, Any]]:
        """Predictions for one input or a list of inputs, one result dict each, in input order.

        Sequence classification: a text, a list of texts, or a list of (text, pair) tuples ->
        ``{"label", "score", "scores"}`` each. Token classification: a text or list of texts
        (split on whitespace) or a list of token lists -> ``{"tokens", "tags", "entities"}`` each,
        entities carrying character offsets into the text. Other kinds: see their modules in
        ``lepton/tasks/``. ``task``: which head of a multi-task model (default: the main task)."""
        if task is not None and task != self.bundle.main_task:
            return self.head(task).predict(inputs, batch_size=batch_size)
        kind = kind_of(self.task)
        items = [inputs] if kind.is_single(inputs, self.task) else list(inputs)
        if not items:
            return []
        # Similar lengths share a batch, so little compute goes to padding (what a server's
        # micro-batches of mixed requests need most); results come back in input order.
        order = sorted(range(len(items)), key=lambda i: _approx_length(items[i]))
        results: list[Any] = [None] * len(items)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out = kind.predict(self, [items[i] for i in idx])
            for i, r in zip(idx, out):
                results[i] = r
        return results  # always a list, one result per input (a single input gives a list of one)

    def explain(self, inputs: Any, *, method: str = "occlusion", steps: int = 64, task: str | None = None,
                target: str | None = None) -> list[dict[str, Any]]:
        """Token attributions per input (as ``predict`` takes them): the prediction and each token
        with its character span and its score toward the predicted label, or toward label
        ``target`` (``method``: "occlusion", any runtime, or "ig", integrated gradients on PyTorch
        models; lepton.evaluation.attribution)."""
        from lepton.evaluation.attribution import explain_inputs

        if task is not None and task != self.bundle.main_task:
            return self.head(task).explain(inputs, method=method, steps=steps, target=target)
        items = [inputs] if kind_of(self.task).is_single(inputs, self.task) else list(inputs)
        return explain_inputs(self.bundle, self.runtime, items, method=method, steps=steps, target=target)

    def generate(self, prompts: str | list[str], **settings: Any) -> list[str]:
        """Generated text per prompt (a generative model; ``settings`` as the recipe's
        ``task.generation``: strategy, max_new_tokens, num_beams, temperature, top_p, top_k, seed,
        stop ...; a value out of range is one error line naming the setting)."""
        items = [prompts] if isinstance(prompts, str) else list(prompts)
        return kind_of(self.task).generate(self, items, **settings)

    @property
    def runtime(self) -> Any:
        """The bundle's runtime (PyTorch eager, ONNX Runtime ...), made on first use."""
        if self._runtime is None:
            from lepton.runtimes import for_bundle

            self._runtime = for_bundle(self.bundle)
        return self._runtime


def load(path: str | os.PathLike[str], *, device: str = "cpu",
         public_key: str | os.PathLike[str] | None = None) -> Predictor:
    """Load a saved Lepton model, verifying the manifest and every file's checksum first;
    ``public_key``: also require the manifest to be signed by that key's holder (``lepton sign``)."""
    from lepton.pipeline.artifact import load_bundle, read_manifest

    bundle = load_bundle(path, device=device, public_key=public_key)
    return Predictor(bundle, read_manifest(path, verify=False))
