"""Quantization-aware training for ``finetune`` with ``qat: true``.

During the stage every ``nn.Linear`` is swapped for a :class:`FakeQuantLinear` that computes in
float but rounds what a following ``quantize: static_int8`` (ONNX Runtime, QDQ) will round, so
the weights learn to tolerate it:

- the input activation: per tensor, asymmetric (uint8 by default, like the quantize stage),
  with a moving-average min/max observer;
- the weight: per output channel, symmetric int8 in [-127, 127] (ONNX Runtime's range for
  symmetric int8 weights), its scale taken from the current weight at every step;
- the product ``x @ W.T`` before the bias: per tensor, asymmetric, observed like the input
  (ONNX Runtime quantizes a weight MatMul's output too; the bias Add after it stays float).

Only a Linear whose input has more than two dimensions is fake-quantized: the ONNX exporter turns
a Linear over 2-D inputs (a sequence classifier's pooler and head) into a Gemm, which static INT8
leaves in float, while 3-D inputs become the MatMuls it quantizes.

Rounding and the straight-through gradient are torch's (``torch.fake_quantize_per_tensor_affine``,
``torch.fake_quantize_per_channel_affine``: the gradient passes unchanged inside the range and is
zero where values clip), and so are the activation observers and their scale/zero-point formula
(``torch.ao.quantization.MovingAverageMinMaxObserver``). Hand-written here: the weight scale
(max |w| per output channel / 127), the layer swap, and when observing stops.

The observers record ranges during the first ``freeze_observers_after`` share of the optimizer
steps, then stay fixed, so the last steps train against the ranges the weights will meet. Their
state (ranges, frozen or not) lives in buffers of the model, so checkpoints carry it and a resumed
run continues exactly. At the end :meth:`QatState.remove` puts plain ``nn.Linear`` layers back,
holding the same trained parameters: the stage outputs an ordinary float model.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lepton.core.config import StrictModel

log = logging.getLogger(__name__)

WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127] in ONNX Runtime (and here)


class QatSettings(StrictModel):
    # share of the optimizer steps during which activation ranges are observed; then they freeze
    freeze_observers_after: float = Field(default=0.5, gt=0, le=1)
    averaging_constant: float = Field(default=0.01, gt=0, le=1)  # weight of each batch in the moving min/max
    activation_type: Literal["uint8", "int8"] = "uint8"  # as the following quantize stage's activation_type


def _observer(settings: QatSettings) -> torch.nn.Module:
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver

    dtype, qmin, qmax = ((torch.quint8, 0, 255) if settings.activation_type == "uint8"
                         else (torch.qint8, -128, 127))
    return MovingAverageMinMaxObserver(averaging_constant=settings.averaging_constant, dtype=dtype,
                                       qscheme=torch.per_tensor_affine, quant_min=qmin, quant_max=qmax)


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to symmetric int8 per output channel (rows), as float; straight-through
    gradient."""
    scale = (weight.detach().abs().amax(dim=1).float() / WEIGHT_QMAX).clamp(min=1e-12)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX)


def _fake_quant_activation(x: torch.Tensor, observer: Any, observe: bool) -> torch.Tensor:
    if observe:
        observer(x.detach())
    if not torch.isfinite(observer.min_val):  # nothing observed yet: no range to round to
        return x
    scale, zero = observer.calculate_qparams()
    return torch.fake_quantize_per_tensor_affine(x, scale.float(), zero.to(torch.int32),
                                                 observer.quant_min, observer.quant_max)


class FakeQuantLinear(torch.nn.Module):
    """A Linear's own ``weight`` and ``bias`` Parameters (same objects, same names) computed with
    fake quantization of input, weight and pre-bias output."""

    def __init__(self, linear: torch.nn.Linear, settings: QatSettings) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.input_observer = _observer(settings)
        self.output_observer = _observer(settings)
        self.register_buffer("observing", torch.ones((), dtype=torch.uint8))
        self.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= 2:  # exported as Gemm, which static INT8 leaves in float
            return F.linear(x, self.weight, self.bias)
        observe = self.training and bool(self.observing)  # dev evaluation never moves the ranges
        x = _fake_quant_activation(x, self.input_observer, observe)
        y = _fake_quant_activation(F.linear(x, fake_quant_weight(self.weight)), self.output_observer, observe)
        return y if self.bias is None else y + self.bias

    def to_linear(self) -> torch.nn.Linear:
        plain = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                device="meta")
        plain.weight = self.weight
        plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fake_quant=int8"


def _swap(model: torch.nn.Module, old: type, make: Any) -> int:
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is old:
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


class QatState:
    """Fake quantization inserted into a model: freezes the observers on schedule, reports, and
    takes itself out again."""

    def __init__(self, model: torch.nn.Module, settings: QatSettings, total_steps: int) -> None:
        self.model, self.settings = model, settings
        self.freeze_step = max(1, math.ceil(settings.freeze_observers_after * total_steps))
        self.layers = _swap(model, torch.nn.Linear, lambda m: FakeQuantLinear(m, settings))
        self.removed = False
        self.observed: int | None = None  # layers fake-quantized, counted before removal

    def _wrapped(self) -> list[FakeQuantLinear]:
        return [m for m in self.model.modules() if isinstance(m, FakeQuantLinear)]

    def on_step(self, step: int) -> None:
        """After each optimizer step: stop observing once ``freeze_step`` steps are done."""
        if step >= self.freeze_step:
            for layer in self._wrapped():
                layer.observing.fill_(0)

    def quantized_layers(self) -> int:
        """Wrapped layers whose ranges were observed (the ones static INT8 quantizes)."""
        return sum(1 for m in self._wrapped() if torch.isfinite(m.input_observer.min_val))

    def remove(self) -> None:
        """Put plain ``nn.Linear`` layers back (same Parameters): an ordinary float model again."""
        self.observed = self.quantized_layers()
        _swap(self.model, FakeQuantLinear, FakeQuantLinear.to_linear)
        self.removed = True

    def summary(self) -> dict[str, Any]:
        return {"settings": self.settings.model_dump(), "linear_layers": self.layers,
                "fake_quantized_layers": self.quantized_layers() if self.observed is None else self.observed,
                "observers_frozen_after_step": self.freeze_step,
                "weights": f"int8 per output channel, symmetric [-{WEIGHT_QMAX}, {WEIGHT_QMAX}]",
                "activations": f"{self.settings.activation_type} per tensor, asymmetric (layer input and "
                               "pre-bias output)",
                "removed": self.removed}


def insert_fake_quant(model: torch.nn.Module, settings: QatSettings, total_steps: int) -> QatState:
    """Swap every ``nn.Linear`` of ``model`` for a :class:`FakeQuantLinear`, in place."""
    state = QatState(model, settings, total_steps)
    log.info("qat: fake quantization on %d Linear layers; observers freeze after step %d of %d",
             state.layers, state.freeze_step, total_steps)
    return state
