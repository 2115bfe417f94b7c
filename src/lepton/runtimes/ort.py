"""ONNX Runtime execution of an exported model (``runtime: onnxruntime``).

``OnnxModel`` is what a bundle holds after ``export``: the path of a ``.onnx`` file, the
transformers config it came from (labels, sizes; saved as ``config.json``) and what the export and
quantize stages recorded about it (``info``). ``OrtRuntime`` runs it on the CPU execution provider
with plain ``onnxruntime``, so the evaluation harness measures ONNX variants exactly as it measures
PyTorch ones.

Threads: ONNX Runtime keeps its own thread pool; a session uses as many intra-op threads as torch
is set to use when the session is made (``torch.get_num_threads()``), so both runtimes get the same
cores. A later change of torch's setting (the harness's ``evaluate.threads``) makes a new session
on the next call.

``onnxruntime`` is imported only where a model is run (``pip install 'lepton[onnx]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from lepton.core.errors import ArtifactError, MissingExtraError
from lepton.runtimes.formats import WeightsFormat, register_format
from lepton.runtimes.registry import RuntimeInfo, register

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_LOW_BIT_TYPES = {2, 3, 21, 22}  # UINT8, INT8, UINT4, INT4 (quantized weights)
_INT32 = 6


@contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's Python tools log through the root logger (INFO per fused op or tensor, a
    WARNING suggesting pre-processing) and print calibration progress: keep that out of Lepton's
    output while they run."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(before)


def require(module: str, extra: str = "onnx") -> ModuleType:
    """Import an optional dependency or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module} is needed here: pip install 'lepton[{extra}]'") from err


@dataclass
class OnnxModel:
    """An ONNX model file plus what Lepton knows about it; ``bundle.model`` for ONNX bundles."""

    path: Path
    config: Any  # transformers PretrainedConfig of the exported model
    info: dict[str, Any] = field(default_factory=dict)  # export/quantize records; see stages
    _sessions: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)
    # The graph output this model's predictions come from: "logits", or "logits.<task>" for an
    # extra head of a multi-task model (a view sharing the file and the sessions: ``head``).
    output: str = "logits"

    def head(self, name: str) -> OnnxModel:
        """The same graph read at the output of task ``name``'s head."""
        return dataclasses.replace(self, output=f"logits.{name}")

    def save_pretrained(self, folder: str | Path, **_: Any) -> None:
        """Write ``model.onnx`` and ``config.json`` (the signature mirrors transformers')."""
        folder = Path(folder)
        shutil.copyfile(self.path, folder / ONNX_FILE)
        self.config.save_pretrained(folder)

    def session(self, threads: int | None = None) -> Any:
        """A CPU inference session with ``threads`` intra-op threads (default: torch's setting)."""
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        if threads not in self._sessions:
            ort = require("onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only; ORT warns about harmless leftovers
            self._sessions.clear()  # one live session at a time: they hold the weights
            self._sessions[threads] = ort.InferenceSession(str(self.path), options,
                                                           providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def proto(self) -> Any:
        return require("onnx").load(str(self.path))


def parameter_counts(model_proto: Any) -> tuple[int, int]:
    """(total, non-zero) weights among the initializers.

    Counted: floating-point and 8/4-bit tensors of at least one dimension (packed 4-bit weights
    by their weights, not bytes), and int32 quantized biases; not counted: shape constants (int64),
    quantization scales and zero points. The TorchScript exporter stores identical tensors once
    (e.g. LayerNorms still at their initial values), so the count can fall a little short of
    PyTorch's on untrained weights.
    """
    from onnx import numpy_helper

    # MatMulNBits packs 8 / bits weights into each uint8 of its second input.
    per_byte = {}
    for node in model_proto.graph.node:
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            per_byte[node.input[1]] = 8 // bits
    total = nonzero = 0
    for init in model_proto.graph.initializer:
        if not init.dims or init.name.endswith(("_scale", "_zero_point")):
            continue
        dtype = init.data_type
        if not (dtype in _FLOAT_TYPES or dtype in _LOW_BIT_TYPES
                or (dtype == _INT32 and init.name.endswith("_quantized"))):
            continue
        size = int(np.prod(init.dims))
        if init.name in per_byte:
            total += size * per_byte[init.name]
            nonzero += size * per_byte[init.name]  # packed: counted as dense
            continue
        total += size
        if dtype in (21, 22):  # int4 tensors: numpy has no such type; counted as dense
            nonzero += size
        else:
            nonzero += int(np.count_nonzero(numpy_helper.to_array(init)))
    return total, nonzero


class OrtRuntime:
    name = "onnxruntime"
    device = "cpu"

    def __init__(self, bundle: Any) -> None:
        self.model: OnnxModel = bundle.model
        session = self.model.session()
        self._inputs = [i.name for i in session.get_inputs()]
        self._counts: tuple[int, int] | None = None

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        session = self.model.session()
        feed = {}
        for name in self._inputs:
            value = batch.get(name)
            if value is None:
                if name != "token_type_ids":
                    raise KeyError(f"the ONNX model needs input {name!r}")
                value = np.zeros_like(_as_int64(batch["input_ids"]))
            feed[name] = _as_int64(value)
        return np.asarray(session.run([self.model.output], feed)[0], dtype=np.float32)

    def parameter_counts(self) -> tuple[int, int]:
        if self._counts is None:
            self._counts = parameter_counts(self.model.proto())
        return self._counts

    def size_bytes(self) -> int:
        return self.model.path.stat().st_size

    def flops_per_item(self, tokens: float) -> float | None:
        """The export's estimate of the float model's work (quantized graphs do the same
        multiply-adds, in int8)."""
        work = self.model.info.get("work")
        if not work:
            return None
        macs, width = work["linear_macs_per_token"], work["attention_width"]
        return float(2 * (macs * tokens + 2 * tokens * tokens * width))


def _as_int64(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.int64)


def _for_bundle(bundle: Any) -> Any:
    """A model that brings its own view of this runtime (an exported decoder) uses it."""
    own = getattr(bundle.model, "as_runtime", None)
    return own() if own is not None else OrtRuntime(bundle)


def _load_onnx(folder: Path, manifest: dict[str, Any], auto: Any, structure: Any, device: str) -> Any:
    """An OnnxModel over the folder's model.onnx (run on ONNX Runtime's CPU provider)."""
    from transformers import AutoConfig

    path = folder / ONNX_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (the manifest says this is an ONNX model)")
    info = manifest.get("onnx")
    return OnnxModel(path=path, config=AutoConfig.from_pretrained(folder),
                     info=dict(info) if isinstance(info, dict) else {})


register(RuntimeInfo(name="onnxruntime", format="onnx", is_graph=True), _for_bundle)
register_format(WeightsFormat(
    "onnx", "onnxruntime", ONNX_FILE, _load_onnx,
    how_it_loads=("The weights are an ONNX graph (`model.onnx`): `lepton.load` runs it on ONNX Runtime, and "
                  "plain `onnxruntime.InferenceSession` loads it too.")))
