"""Weight masks: unstructured magnitude and N:M pruning that zero weights in place (``prune``
methods ``magnitude`` and ``2:4``), and the train hook that keeps the masks applied, and with a
cubic schedule grows them, during the next training stage. See ``lepton.stages.prune``."""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lepton.core.errors import StageError
from lepton.runtimes.bundle import ModelBundle, RunContext

if TYPE_CHECKING:
    from lepton.stages.prune import PruneConfig

log = logging.getLogger(__name__)

UNSTRUCTURED_NOTE = ("unstructured sparsity: on CPU dense kernels zeros are stored and multiplied like "
                     "any weight, so the model is not faster; the file compresses better (weights_zlib_mb)")
NM_NOTE = ("semi-structured {n}:{m} sparsity: GPUs with sparse tensor cores can run this pattern faster; "
           "on CPU it is a size and accuracy experiment only (dense kernels, no speed-up)")



def zlib_mb(model: Any) -> float:
    """Size of every weight compressed with zlib (level 1): what zeros buy on disk."""
    size = 0
    for p in model.parameters():
        size += len(zlib.compress(p.detach().cpu().contiguous().numpy().tobytes(), 1))
    return round(size / 1e6, 3)


def encoder_linears(model: Any) -> list[nn.Linear]:
    """The Linear layers inside the encoder: what magnitude and N:M pruning touch."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return []
    return [m for m in encoder.modules() if isinstance(m, nn.Linear)]


def cubic_sparsity(step: int, final: float, start: int, end: int) -> float:
    """Zhu & Gupta (2017) with initial sparsity 0: 0 before ``start``, ``final`` from ``end`` on."""
    if step <= start:
        return 0.0
    if step >= end:
        return final
    return final * (1 - (1 - (step - start) / (end - start)) ** 3)


def magnitude_masks(weights: list[torch.Tensor], sparsity: float, scope: str,
                    previous: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Keep-masks (True = keep) zeroing the smallest-magnitude share ``sparsity``, exactly.

    Weights already masked in ``previous`` go first, so masks only ever grow.
    """
    scores = [w.detach().abs().float() for w in weights]
    if previous is not None:
        scores = [torch.where(keep, s, torch.full_like(s, -1.0)) for s, keep in zip(scores, previous)]
    if scope == "layer":
        return [_keep_largest(s.flatten(), sparsity).view_as(s) for s in scores]
    keep = _keep_largest(torch.cat([s.flatten() for s in scores]), sparsity)
    out, at = [], 0
    for s in scores:
        out.append(keep[at:at + s.numel()].view_as(s))
        at += s.numel()
    return out


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(sparsity * scores.numel() + 0.5)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // m, m)
    top = groups.topk(n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(rows, cols)


class MaskKeeper:
    """A train hook that keeps weight masks applied after every optimizer step of the next
    training stage; with a cubic schedule it also grows them (gradual magnitude pruning)."""

    def __init__(self, modules: list[nn.Linear], masks: list[torch.Tensor] | None, *, stage: int,
                 final: float = 0.0, scope: str = "global", start: int = 0, end: int | None = None,
                 every: int = 10) -> None:
        self.modules, self.masks, self.stage = modules, masks, stage
        self.final, self.scope, self.start, self.end, self.every = final, scope, start, end, every
        self.gradual = masks is None
        self.current = 0.0 if self.gradual else None
        self.trace: list[tuple[int, float]] = []
        self.checked = False

    def _check(self, model: Any, total_steps: int | None) -> None:
        live = {id(m) for m in model.modules()}
        stale = [i for i, mod in enumerate(self.modules) if id(mod) not in live]
        if stale:  # a later stage (heads, ffn, drop_layers) replaced these layers
            log.warning("prune (stage %d): %d pruned weight matrices are no longer in the model; "
                        "their masks no longer apply", self.stage, len(stale))
            keep = [i for i in range(len(self.modules)) if i not in stale]
            self.modules = [self.modules[i] for i in keep]
            if self.masks is not None:
                self.masks = [self.masks[i] for i in keep]
        if self.gradual and total_steps is not None:
            end = self.end if self.end is not None else total_steps
            if end <= self.start:
                raise StageError(f"stages.{self.stage}.start_step: {self.start} is not before the end "
                                 f"of the ramp, step {end} (the finetune stage runs {total_steps} steps)")
            if end > total_steps:
                log.warning("prune (stage %d): end_step %d is past the finetune's %d steps; the final "
                            "sparsity is applied at once when it ends", self.stage, end, total_steps)
            self.end = end
        self.checked = True

    def _update(self, sparsity: float, step: int | None) -> None:
        weights = [m.weight for m in self.modules]
        self.masks = magnitude_masks(weights, sparsity, self.scope, self.masks)
        self.current = sparsity
        self.trace.append((step if step is not None else -1, round(sparsity, 6)))

    def _apply(self) -> None:
        if self.masks is None:
            return
        with torch.no_grad():
            for mod, keep in zip(self.modules, self.masks):
                mod.weight.mul_(keep.to(mod.weight.device, mod.weight.dtype))

    def after_step(self, model: Any, step: int, total_steps: int) -> None:
        if not self.checked:
            self._check(model, total_steps)
        if self.gradual and self.start < step <= int(self.end or 0):
            due = step == self.end or (step - self.start) % self.every == 0
            target = cubic_sparsity(step, self.final, self.start, int(self.end or 0))
            if due and target > (self.current or 0.0):
                self._update(target, step)
        self._apply()

    def finish(self, model: Any) -> dict[str, Any]:
        if not self.checked:  # the training stage ran no step
            self._check(model, None)
        reached = not self.gradual or (self.current or 0.0) >= self.final
        if self.gradual and not reached:
            self._update(self.final, None)  # training ended before end_step
        self._apply()  # also over a restored best checkpoint from earlier in the ramp
        zeros = sum(int((m.weight == 0).sum()) for m in self.modules)
        size = sum(m.weight.numel() for m in self.modules)
        out: dict[str, Any] = {"hook": "prune", "stage": self.stage,
                               "pruned_weight_sparsity": round(zeros / size, 6) if size else 0.0}
        if self.gradual:
            out.update({"schedule": "gradual", "target": self.final, "start_step": self.start,
                        "end_step": self.end, "reached_during_training": reached,
                        "mask_updates": [list(t) for t in self.trace]})
        return out


def masked_oneshot(bundle: ModelBundle, config: PruneConfig, ctx: RunContext, where: str) -> dict[str, Any]:
    model = bundle.model
    modules = encoder_linears(model)
    if not modules:
        raise StageError(f"{where}.method: {config.method} prunes the Linear layers of "
                         f"base_model.encoder; {type(model).__name__} has none")
    summary: dict[str, Any] = {"method": config.method, "weight_matrices": len(modules),
                               "weights_zlib_mb_before": zlib_mb(model)}
    if config.method == "2:4":
        odd = [m for m in modules if m.in_features % config.m]
        if odd:
            name = next(n for n, mod in model.named_modules() if mod is odd[0])
            raise StageError(f"{where}.m: {config.n}:{config.m} needs input sizes divisible by {config.m}; "
                             f"{name} has {odd[0].in_features} inputs")
        masks = [nm_mask(m.weight, config.n, config.m) for m in modules]
        summary["pattern"] = f"{config.n}:{config.m}"
        summary["note"] = NM_NOTE.format(n=config.n, m=config.m)
    else:
        masks = magnitude_masks([m.weight for m in modules], float(config.sparsity or 0), config.scope)
        summary["scope"] = config.scope
        summary["note"] = UNSTRUCTURED_NOTE
    keeper = MaskKeeper(modules, masks, stage=ctx.stage_index)
    keeper._apply()
    bundle.train_hooks.append(keeper)  # the next finetune keeps the zeros at zero
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    size = sum(m.weight.numel() for m in modules)
    summary["pruned_weight_sparsity"] = round(zeros / size, 6)
    summary["weights_zlib_mb_after"] = zlib_mb(model)
    return summary
