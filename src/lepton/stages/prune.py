"""``prune``: remove weights (``magnitude``, ``2:4``) or whole structures (``heads``, ``ffn``).

``magnitude``: unstructured pruning of the encoder's Linear weights (not embeddings, pooler or task
head) to ``sparsity``. ``scope: global`` ranks every weight together; ``scope: layer`` gives each
weight matrix the same sparsity. ``schedule: oneshot`` zeroes the weights now; ``gradual`` leaves
them and has the next ``finetune`` raise sparsity after each optimizer step along the cubic schedule
of Zhu & Gupta (2017), ``s_t = s * (1 - (1 - (t - start_step) / (end_step - start_step))^3)``, with
masks recomputed every ``update_every`` steps and at ``end_step`` (default: that finetune's last
step). Either way the masks stay applied through the next finetune, so recovery training does not
regrow pruned weights. If that finetune ends before ``end_step``, or its ``keep_best`` restores a
checkpoint from earlier in the ramp, the final masks are applied at its end, so the model shipped
(and scored) always has the target sparsity; the hook's summary says whether it was reached during
training. On CPU dense kernels zeros cost as much as any weight: the file gets more
compressible, the model no faster; the summary says so and measures the compressed size.

``2:4`` (N:M with ``n``, ``m``): in every group of ``m`` consecutive weights along the input
dimension only the ``n`` largest survive. GPUs with sparse tensor cores can run that pattern faster;
on CPU it is a size and accuracy experiment, and labelled as such.

``heads`` / ``ffn``: structured pruning that physically removes attention heads (their q/k/v rows
and output-projection columns) or FFN neurons (intermediate rows and output columns), so the model
really gets smaller and faster. ``sparsity`` is the fraction of heads / neurons removed, per layer
(``scope: layer``) or ranked across layers (``global``; scores are L2-normalized per layer first,
as Michel et al. 2019 do). Importance: ``gradient`` accumulates ``|dLoss/dmask|`` for a mask of
ones multiplied onto each head's context output / each neuron's activation over ``batches`` training
batches (the first-order estimate of Michel et al.; for neurons it is ``|sum activation * grad|``);
``magnitude`` is a data-free proxy (norm of a head's q/k/v rows and output columns; for a neuron the
product of its input-row and output-column norms). Every layer keeps at least one head and one
neuron; a setting that cannot (``scope: layer`` with a fraction that rounds to all of them, or
``heads:`` naming every head of a layer) is an error. ``heads: {layer: [head, ...]}`` removes
exactly the heads named (current indices) instead of ranking.

Layers of different sizes cannot be described by a transformers config: Lepton records them in the
manifest (``lepton.structure``) and ``lepton.load`` rebuilds them. FFN pruning with ``scope: layer``
leaves every layer the same size, which the config can say: unless heads were pruned too, such a
model loads in plain transformers as well.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from lepton.bundle import ModelBundle, RunContext
from lepton.errors import StageError
from lepton.stages.base import StageConfig, register
from lepton.structure import describe, encoder_layers, remove_heads, remove_neurons, sync_config
from lepton.tasks import collate, encode, train_batches

log = logging.getLogger(__name__)

UNSTRUCTURED_NOTE = ("unstructured sparsity: on CPU dense kernels zeros are stored and multiplied like "
                     "any weight, so the model is not faster; the file compresses better (weights_zlib_mb)")
NM_NOTE = ("semi-structured {n}:{m} sparsity: GPUs with sparse tensor cores can run this pattern faster; "
           "on CPU it is a size and accuracy experiment only (dense kernels, no speed-up)")


class PruneConfig(StageConfig):
    kind: Literal["prune"] = "prune"
    method: Literal["magnitude", "heads", "ffn", "2:4"]
    # magnitude: share of encoder weights zeroed; heads / ffn: share of heads / neurons removed.
    sparsity: float | None = Field(default=None, ge=0, lt=1, validate_default=True)
    scope: Literal["global", "layer"] = "global"
    schedule: Literal["oneshot", "gradual"] = Field(default="oneshot", validate_default=True)
    start_step: int | None = Field(default=None, ge=0)  # gradual: first step of the ramp (default 0)
    end_step: int | None = Field(default=None, ge=1)  # gradual: final sparsity here (default: last step)
    update_every: int = Field(default=10, ge=1)  # gradual: steps between mask updates
    importance: Literal["gradient", "magnitude"] = "gradient"  # heads / ffn
    batches: int = Field(default=8, ge=1)  # heads / ffn, gradient importance: training batches used
    batch_size: int = Field(default=32, ge=1)
    heads: dict[int, list[int]] | None = None  # heads: exactly these {layer: [head, ...]} go
    n: int = Field(default=2, ge=1)  # N:M: weights kept in every group of m
    m: int = Field(default=4, ge=2, validate_default=True)

    @field_validator("method", mode="before")
    @classmethod
    def _unquoted_two_four(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124.
        return "2:4" if value == 124 and not isinstance(value, bool) else value

    @field_validator("sparsity")
    @classmethod
    def _sparsity_per_method(cls, value: float | None, info: ValidationInfo) -> float | None:
        method = info.data.get("method")
        if method == "2:4" and value is not None:
            raise ValueError("method 2:4 fixes the sparsity at 1 - n/m; leave sparsity out")
        if value is None and method in ("magnitude", "ffn"):
            raise ValueError(f"method {method} needs sparsity: a fraction in [0, 1)")
        return value

    @field_validator("schedule")
    @classmethod
    def _gradual_only_magnitude(cls, value: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if value == "gradual" and method is not None and method != "magnitude":
            raise ValueError(f"schedule gradual works only with method magnitude; method {method} "
                             "removes structures once (use oneshot, then finetune)")
        return value

    @field_validator("start_step", "end_step")
    @classmethod
    def _only_gradual(cls, value: int | None, info: ValidationInfo) -> int | None:
        schedule = info.data.get("schedule")
        if value is not None and schedule is not None and schedule != "gradual":
            raise ValueError(f"{info.field_name} applies to schedule: gradual only")
        start = info.data.get("start_step")
        if info.field_name == "end_step" and value is not None and start is not None and value <= start:
            raise ValueError(f"end_step {value} must come after start_step {start}")
        return value

    @field_validator("heads")
    @classmethod
    def _explicit_heads(cls, value: dict[int, list[int]] | None,
                        info: ValidationInfo) -> dict[int, list[int]] | None:
        if value is None:
            return None
        if info.data.get("method") != "heads":
            raise ValueError("heads: {layer: [head, ...]} is for method heads")
        if info.data.get("sparsity") is not None:
            raise ValueError("give either sparsity or heads, not both")
        for layer, heads in value.items():
            if layer < 0 or any(h < 0 for h in heads):
                raise ValueError(f"layer and head indices count from 0 (layer {layer}: {heads})")
            if len(set(heads)) != len(heads):
                raise ValueError(f"layer {layer} lists a head more than once")
        return {layer: sorted(heads) for layer, heads in value.items()}

    @model_validator(mode="after")
    def _heads_need_a_target(self) -> PruneConfig:
        if self.method == "heads" and self.sparsity is None and self.heads is None:
            raise ValueError("method heads needs sparsity (the fraction of heads removed) "
                             "or heads: {layer: [head, ...]}")
        return self

    @field_validator("m")
    @classmethod
    def _n_below_m(cls, value: int, info: ValidationInfo) -> int:
        n = info.data.get("n")
        if n is not None and n >= value:
            raise ValueError(f"n ({n}) must be smaller than m ({value}): n of every m weights stay")
        return value


# ------------------------------------------------------------------- counting


def _counts(model: Any) -> tuple[int, int]:
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return total, nonzero


def _zlib_mb(model: Any) -> float:
    """Size of every weight compressed with zlib (level 1): what zeros buy on disk."""
    size = 0
    for p in model.parameters():
        size += len(zlib.compress(p.detach().cpu().contiguous().numpy().tobytes(), 1))
    return round(size / 1e6, 3)


def _sizes_summary(model: Any, before: tuple[int, int]) -> dict[str, Any]:
    total, nonzero = _counts(model)
    return {"params_before": before[0], "params_after": total, "nonzero_before": before[1],
            "nonzero_after": nonzero, "sparsity": round(1 - nonzero / total, 6) if total else 0.0}


# ------------------------------------------------------------------- weight masks


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


def _masked_oneshot(bundle: ModelBundle, config: PruneConfig, ctx: RunContext, where: str) -> dict[str, Any]:
    model = bundle.model
    modules = encoder_linears(model)
    if not modules:
        raise StageError(f"{where}.method: {config.method} prunes the Linear layers of "
                         f"base_model.encoder; {type(model).__name__} has none")
    summary: dict[str, Any] = {"method": config.method, "weight_matrices": len(modules),
                               "weights_zlib_mb_before": _zlib_mb(model)}
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
    summary["weights_zlib_mb_after"] = _zlib_mb(model)
    return summary


# ------------------------------------------------------------------- heads and neurons


def _importance_batches(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> list[dict]:
    train = ctx.split("train")
    if train.labels is None:
        raise StageError(f"stages.{ctx.stage_index}.importance: gradient importance needs labelled data.train")
    enc = encode(train, bundle.task, bundle.tokenizer)
    pad = bundle.tokenizer.pad_token_id or 0
    chosen = train_batches(enc.lengths, config.batch_size, seed=ctx.seed, epoch=0)[: config.batches]
    return [collate(enc, idx, pad) for idx in chosen]


def gradient_importance(model: Any, batches: list[dict], device: str, what: str) -> list[torch.Tensor]:
    """Per layer, ``sum over batches |dLoss/dmask|`` for a mask of ones on each head's context
    output (``what="heads"``) or each FFN neuron's activation (``what="ffn"``)."""
    layers = encoder_layers(model)
    assert layers is not None
    sizes = [(l.attention.self.num_attention_heads if what == "heads" else l.intermediate.dense.out_features)
             for l in layers]
    masks = [torch.ones(n, device=device, requires_grad=True) for n in sizes]
    handles = []
    for layer, mask in zip(layers, masks):
        if what == "heads":
            def on_heads(module: Any, args: Any, output: Any, mask: torch.Tensor = mask) -> Any:
                context, *rest = output
                shape = context.shape
                heads = context.view(*shape[:-1], mask.numel(), -1) * mask[:, None]
                return (heads.view(shape), *rest)
            handles.append(layer.attention.self.register_forward_hook(on_heads))
        else:
            def on_ffn(module: Any, args: Any, output: Any, mask: torch.Tensor = mask) -> Any:
                return output * mask
            handles.append(layer.intermediate.register_forward_hook(on_ffn))
    scores = [torch.zeros(n, device=device) for n in sizes]
    was_training = model.training
    model.eval()  # no dropout: score the model as it will run
    try:
        for batch in batches:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            for score, grad in zip(scores, torch.autograd.grad(loss, masks)):
                score += grad.detach().abs()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s.cpu() for s in scores]


def magnitude_importance(model: Any, what: str) -> list[torch.Tensor]:
    layers = encoder_layers(model)
    assert layers is not None
    out = []
    with torch.no_grad():
        for layer in layers:
            if what == "heads":
                attn = layer.attention.self
                n, size = attn.num_attention_heads, attn.attention_head_size
                sq = sum(getattr(attn, p).weight.pow(2).view(n, size, -1).sum(dim=(1, 2))
                         for p in ("query", "key", "value"))
                sq = sq + layer.attention.output.dense.weight.pow(2).view(-1, n, size).sum(dim=(0, 2))
                out.append(sq.sqrt().cpu())
            else:
                rows = layer.intermediate.dense.weight.norm(dim=1)
                cols = layer.output.dense.weight.norm(dim=0)
                out.append((rows * cols).cpu())
    return out


def select_lowest(scores: list[torch.Tensor], fraction: float, scope: str, what: str,
                  where: str) -> dict[int, list[int]]:
    """{layer: [indices to remove]}: the lowest-scoring ``fraction``, each layer keeping one."""
    unit = "heads" if what == "heads" else "FFN neurons"
    if scope == "layer":
        chosen = {}
        for layer, s in enumerate(scores):
            k = int(fraction * s.numel() + 0.5)
            if k >= s.numel():
                raise StageError(f"{where}.sparsity: {fraction} would remove all {s.numel()} {unit} of "
                                 f"layer {layer} (scope: layer); every layer keeps at least one — "
                                 "lower sparsity or use scope: global")
            chosen[layer] = sorted(int(i) for i in torch.argsort(s, stable=True)[:k])
        return chosen
    total = sum(s.numel() for s in scores)
    k = int(fraction * total + 0.5)
    if k > total - len(scores):
        raise StageError(f"{where}.sparsity: {fraction} would remove {k} of {total} {unit}, leaving some "
                         "layer none; every layer keeps at least one — lower sparsity")
    # Per-layer L2 normalization makes scores comparable across layers (Michel et al. 2019).
    normed = [s / (s.norm() + 1e-12) for s in scores]
    ranked = sorted(((float(v), layer, i) for layer, s in enumerate(normed) for i, v in enumerate(s)))
    left = [s.numel() for s in scores]
    chosen = {layer: [] for layer in range(len(scores))}
    for _, layer, i in ranked:
        if k == 0:
            break
        if left[layer] > 1:
            chosen[layer].append(i)
            left[layer] -= 1
            k -= 1
    return {layer: sorted(v) for layer, v in chosen.items()}


def _explicit_heads(model: Any, heads: dict[int, list[int]], where: str) -> dict[int, list[int]]:
    layers = encoder_layers(model)
    assert layers is not None
    for layer, chosen in heads.items():
        if layer >= len(layers):
            raise StageError(f"{where}.heads: layer {layer} is out of range; the model has "
                             f"{len(layers)} layers (0-{len(layers) - 1})")
        n = layers[layer].attention.self.num_attention_heads
        if any(h >= n for h in chosen):
            raise StageError(f"{where}.heads.{layer}: head {max(chosen)} is out of range; layer {layer} "
                             f"has {n} heads (0-{n - 1})")
        if len(chosen) >= n:
            raise StageError(f"{where}.heads.{layer}: would remove all {n} heads of layer {layer}; "
                             "every layer keeps at least one")
    return {layer: heads.get(layer, []) for layer in range(len(layers))}


def _structured(bundle: ModelBundle, config: PruneConfig, ctx: RunContext, where: str) -> dict[str, Any]:
    model, what = bundle.model, config.method
    layers = encoder_layers(model)
    if layers is None:
        raise StageError(f"{where}.method: {what} pruning supports BERT-style encoders "
                         f"(attention.self.query/key/value, intermediate.dense); not {type(model).__name__}")
    summary: dict[str, Any] = {"method": what}
    if what == "heads" and config.heads is not None:
        chosen = _explicit_heads(model, config.heads, where)
        summary["importance"] = "given (heads:)"
    else:
        if config.importance == "gradient":
            model.to(ctx.device)
            batches = _importance_batches(bundle, config, ctx)
            scores = gradient_importance(model, batches, ctx.device, what)
            summary["importance"] = f"gradient (|dLoss/dmask| over {len(batches)} training batches)"
        else:
            scores = magnitude_importance(model, what)
            summary["importance"] = "magnitude (weight-norm proxy)"
        chosen = select_lowest(scores, float(config.sparsity or 0), config.scope, what, where)
        summary["scope"] = config.scope
        if what == "heads":
            summary["head_scores"] = {str(l): [round(float(v), 6) for v in s] for l, s in enumerate(scores)}
    for layer, index in chosen.items():
        (remove_heads if what == "heads" else remove_neurons)(layers[layer], index)
    sync_config(model)
    if what == "heads":
        summary["heads_removed"] = {str(l): v for l, v in chosen.items() if v}
        summary["heads_per_layer"] = [int(l.attention.self.num_attention_heads) for l in layers]
    else:
        summary["neurons_removed"] = {str(l): len(v) for l, v in chosen.items() if v}
        summary["intermediate_size"] = [int(l.intermediate.dense.out_features) for l in layers]
    summary["loads_in_transformers"] = describe(model) is None
    return summary


@register(PruneConfig)
def prune(bundle: ModelBundle, config: PruneConfig, ctx: RunContext) -> ModelBundle:
    """Prune the model in place (see the module docstring for the methods)."""
    where = f"stages.{ctx.stage_index}"
    before = _counts(bundle.model)
    if config.method in ("heads", "ffn"):
        summary = _structured(bundle, config, ctx, where)
    elif config.schedule == "gradual":
        modules = encoder_linears(bundle.model)
        if not modules:
            raise StageError(f"{where}.method: magnitude prunes the Linear layers of base_model.encoder; "
                             f"{type(bundle.model).__name__} has none")
        bundle.train_hooks.append(MaskKeeper(modules, None, stage=ctx.stage_index,
                                             final=float(config.sparsity or 0), scope=config.scope,
                                             start=config.start_step or 0, end=config.end_step,
                                             every=config.update_every))
        summary = {"method": "magnitude", "schedule": "gradual", "scope": config.scope,
                   "target_sparsity": config.sparsity,
                   "note": "weights are pruned during the next finetune stage; this stage's scorecard "
                           "is the model before pruning. " + UNSTRUCTURED_NOTE}
    else:
        summary = _masked_oneshot(bundle, config, ctx, where)
    summary.update(_sizes_summary(bundle.model, before))
    log.info("prune %s: %d -> %d parameters, %d non-zero", config.method, summary["params_before"],
             summary["params_after"], summary["nonzero_after"])
    ctx.stage_summary = summary
    return bundle
