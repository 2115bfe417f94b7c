"""L2-SP and its EWC weighting: a penalty pulling the weights towards the parent's."""

from __future__ import annotations

from typing import Any

import torch

from lepton.tasks import Encoded, collate, sorted_batches


class Anchor:
    """The parent's weights, taken when training starts; ``penalty`` is
    ``strength / 2 * sum(w * (theta - theta_parent)^2)`` over every trainable weight (``w`` = 1,
    or the Fisher weights). New classifier rows (past ``old_rows``) have no parent: masked out."""

    def __init__(self, model: torch.nn.Module, strength: float, old_rows: int,
                 weights: dict[str, torch.Tensor] | None = None) -> None:
        from lepton.tasks.new_labels import output_layer

        self.strength = strength
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.start = {n: params[n].detach().clone() for n in self.names}
        self.weights: dict[str, torch.Tensor] = dict(weights or {})
        if old_rows:
            rows = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
            try:
                _, _, layer = output_layer(model, rows)
            except ValueError:
                layer = None
            for n, p in params.items():
                if layer is not None and any(p is q for q in layer.parameters()) and p.shape[0] > old_rows:
                    mask = torch.zeros_like(p)
                    mask[:old_rows] = 1
                    self.weights[n] = self.weights.get(n, torch.ones_like(p)) * mask

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = None
        for n in self.names:
            diff = params[n] - self.start[n]
            w = self.weights.get(n)
            term = (diff * diff * w).sum() if w is not None else (diff * diff).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.strength * total


def fisher_weights(model: torch.nn.Module, enc: Encoded, bundle: Any, device: str, items: int,
                   seed: int) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of the parent (EWC), per weight: the mean squared gradient of
    the log-likelihood of the parent's own prediction, over batches of up to ``items`` examples;
    scaled to mean 1 over all weights, so ``l2sp`` keeps its meaning."""
    import random

    pad = bundle.tokenizer.pad_token_id or 0
    chosen = sorted(random.Random(seed).sample(range(len(enc)), min(items, len(enc))))
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()  # no dropout: the parent's own distribution
    for idx in sorted_batches([enc.lengths[i] for i in chosen], 8):
        batch = {k: v.to(device) for k, v in collate(enc, [chosen[i] for i in idx], pad, with_labels=False).items()}
        model.zero_grad(set_to_none=True)
        logits = model(**batch).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        picked = log_probs.gather(-1, log_probs.argmax(-1, keepdim=True))
        picked.sum().backward()
        for n, p in model.named_parameters():
            if p.grad is not None and n in sums:
                sums[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    mean = sum(float(s.sum()) for s in sums.values()) / max(sum(s.numel() for s in sums.values()), 1)
    scale = 1.0 / mean if mean > 0 else 1.0
    return {n: s * scale for n, s in sums.items()}
