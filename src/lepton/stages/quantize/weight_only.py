"""Weight-only quantization of generative models: ONNX (int4/int8 MatMulNBits, dynamic int8) and
PyTorch (int8 per channel, int4 group-wise, round to nearest) for ``nn.Linear``.

ONNX, through onnxruntime's own tools (``onnxruntime.quantization``):

- :func:`quantize_onnx_weights`: ``MatMulNBitsQuantizer`` turns every MatMul with a constant weight
  into ``MatMulNBits`` (4 or 8 bits, one scale and zero point per ``block_size`` input channels),
  optionally the embedding Gather into ``GatherBlockQuantized``. ``algorithm="default"`` is
  block-wise round to nearest (MLAS), ``"hqq"`` is Half-Quadratic Quantization (no calibration).
  The ``RTNWeightOnlyQuantConfig``/``GPTQWeightOnlyQuantConfig`` paths of the same tool need Intel
  Neural Compressor (``neural-compressor``), which Lepton does not install: not offered there.
  ``"awq"`` is data-aware and runs through NNCF's ``compress_weights`` on the ONNX graph (ONNX
  Runtime on the CPU computes the statistics): activation-aware scaling with NNCF's scale search,
  then its scale estimation, calibrated on the prefill of real sequences; it writes
  ``MatMulNBits`` too, and the embedding table then takes onnxruntime's ``GatherBlockQuantized``
  as with ``default``. NNCF's GPTQ is refused by its ONNX backend ("ONNX backend does not support
  gptq"), so GPTQ is not offered.
  ``accuracy_level=4`` lets the kernel quantize activations to int8 and use VNNI dot products.
- :func:`quantize_onnx_dynamic_int8`: ``quantize_dynamic`` (int8 weights per channel, activations
  quantized per run: MatMulInteger / DynamicQuantizeMatMul).

PyTorch: :func:`quantize_linears` replaces ``nn.Linear`` by :class:`WeightOnlyLinear`, written by
hand: torchao 0.18 (which installs against torch 2.13 without another torch) quantizes int8 weight-only
on the CPU, but its int4 weight-only layouts need CUDA or the ``mslk`` kernels, and its tensor
subclasses do not save as plain safetensors. Here the int8/int4 codes, scales and minimums are plain
buffers (safetensors), and the layer dequantizes its weight per call: the aim is size and an
accuracy check of the format; speed on the CPU comes from ONNX Runtime's ``MatMulNBits``
(measured: torch's own ``_weight_int4pack_mm_for_cpu``/``_weight_int8pack_mm`` kernels were 14x
and 5x slower than the fp32 matmul at batch 1 on this CPU, so they are not used).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lepton.core import atomic
from lepton.core.atomic import write_folder
from lepton.core.errors import ArtifactError
from lepton.models.weight_only import QuantizeError, WeightOnlyLinear
from lepton.runtimes.ort import quiet_onnxruntime, require

log = logging.getLogger(__name__)

RECORD = "weight_quant.json"
WEIGHTS = "model.safetensors"


# --------------------------------------------------------------------------------------- ONNX

def _side_files(src: Path, dest: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and p.suffix not in (".onnx", ".data") and not p.name.endswith(".onnx.data"):
            shutil.copyfile(p, dest / p.name)


def _onnx_in(src: str | Path) -> Path:
    path = Path(src)
    path = path / "model.onnx" if path.is_dir() else path
    if not path.is_file():
        raise QuantizeError(f"{path}: no ONNX model to quantize")
    return path


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data"))


ALGORITHMS = ("default", "hqq", "awq")
DATA_AWARE = ("awq",)


def quantize_onnx_weights(src: str | Path, dest: str | Path, *, bits: int = 4, block_size: int = 32,
                          symmetric: bool = False, algorithm: str = "default", accuracy_level: int | None = 4,
                          embeddings: bool = False, exclude: tuple[str, ...] = (),
                          calibration: list[list[int]] | None = None) -> dict[str, Any]:
    """Weight-only ``bits``-bit MatMulNBits of the graph in ``src`` (a folder or .onnx) into folder
    ``dest`` (atomically; side files copied). ``exclude``: node names to keep in float.
    ``calibration``: token id sequences whose prefill the data-aware algorithms calibrate on."""
    if bits not in (4, 8):
        raise QuantizeError(f"bits must be 4 or 8, got {bits!r}")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizeError(f"block_size must be a power of two >= 16, got {block_size!r}")
    if algorithm not in ALGORITHMS:
        raise QuantizeError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if algorithm in DATA_AWARE and not calibration:
        raise QuantizeError(f"algorithm {algorithm} needs calibration sequences")
    if algorithm in DATA_AWARE and bits != 4:
        raise QuantizeError(f"algorithm {algorithm} quantizes to 4 bits (bits: 4)")
    onnx = require("onnx")
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer")
    path = _onnx_in(src)
    if embeddings and bits != 4:
        log.info("embeddings stay in float: onnxruntime's GatherBlockQuantized tables are 4-bit only")
        embeddings = False
    ops = ("MatMul", "Gather") if embeddings else ("MatMul",)
    calibration_seconds = None
    if algorithm in DATA_AWARE:
        import time

        t0 = time.perf_counter()
        model = _nncf_compress(onnx.load(str(path)), algorithm, block_size, symmetric, exclude,
                               calibration or [], accuracy_level)
        calibration_seconds = round(time.perf_counter() - t0, 2)
        ops = ("Gather",)  # the MatMuls are done; the embedding table as for default, when asked
        if not embeddings:
            return _save_quantized(model, path, dest, bits, block_size, symmetric, algorithm, accuracy_level,
                                   embeddings, calibration_seconds, len(calibration or []))
    if algorithm == "hqq":
        if embeddings:
            raise QuantizeError("embeddings=True works with algorithm 'default' only (HQQ quantizes MatMul)")
        config = nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    else:
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits,
                                                    accuracy_level=accuracy_level, op_types_to_quantize=ops,
                                                    quant_axes=(("MatMul", 0), ("Gather", 1)))
    if algorithm not in DATA_AWARE:
        model = onnx.load(str(path))
    if embeddings and _opset(model) < 21:
        # GatherBlockQuantized's int4 tables need opset 21; the quantizer only relabels the opset,
        # which leaves older operator forms (ReduceMean's axes attribute) invalid: convert first.
        model = require("onnx.version_converter").convert_version(model, 21)
    with quiet_onnxruntime(), np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # 0/0 on all-equal blocks (masked after); HQQ hands torch a read-only numpy view (only read).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=list(exclude), algo_config=config)
        quantizer.process()
    return _save_quantized(quantizer.model.model, path, dest, bits, block_size, symmetric, algorithm, accuracy_level,
                           embeddings, calibration_seconds, len(calibration or []))


def _save_quantized(model: Any, path: Path, dest: str | Path, bits: int, block_size: int, symmetric: bool,
                    algorithm: str, accuracy_level: int | None, embeddings: bool, calibration_seconds: float | None,
                    calibration_items: int) -> dict[str, Any]:
    onnx = require("onnx")
    counts = _op_counts(model, ("MatMul", "MatMulNBits", "Gather", "GatherBlockQuantized"))

    def fill(tmp: Path) -> None:
        onnx.save_model(model, str(tmp / "model.onnx"), save_as_external_data=model.ByteSize() > 1_800_000_000,
                        location="model.onnx.data")
        _side_files(path.parent, tmp)

    write_folder(Path(dest), fill)
    info = {"method": f"MatMulNBits int{bits}", "algorithm": algorithm, "block_size": block_size,
            "symmetric": symmetric, "accuracy_level": accuracy_level, "embeddings": embeddings, "ops": counts,
            "size_bytes": _size(Path(dest))}
    if calibration_seconds is not None:
        info["calibration"] = {"library": "nncf.compress_weights (ONNX backend)", "items": calibration_items,
                               "seconds": calibration_seconds}
    log.info("ONNX weight-only int%d: %s", bits, info)
    return info


def prefill_feeds(model: Any, sequences: list[list[int]]) -> list[dict[str, np.ndarray]]:
    """One input feed per token sequence for the exported decoder ``model`` (an ONNX ModelProto):
    the whole sequence as a prefill with an empty cache (past inputs of length 0)."""
    feeds = []
    inputs = list(model.graph.input)
    for ids in sequences:
        n = len(ids)
        feed: dict[str, np.ndarray] = {}
        for spec in inputs:
            if spec.name == "input_ids":
                feed[spec.name] = np.asarray([ids], dtype=np.int64)
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones((1, n), dtype=np.int64)
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(n, dtype=np.int64)[None]
            elif spec.name.startswith("past"):
                dims = [d.dim_value if d.HasField("dim_value") else 0 for d in spec.type.tensor_type.shape.dim]
                dims[0] = 1
                feed[spec.name] = np.zeros(dims, dtype=np.float32)  # batch, heads, 0 past tokens, head dim
            else:
                raise QuantizeError(f"calibration: the graph input {spec.name!r} is not one a decoder prefill fills")
        feeds.append(feed)
    return feeds


def _nncf_compress(model: Any, algorithm: str, block_size: int, symmetric: bool, exclude: tuple[str, ...],
                   calibration: list[list[int]], accuracy_level: int | None) -> Any:
    """NNCF's data-aware 4-bit weight compression of the ONNX decoder ``model`` (every MatMul with
    a constant weight, the output layer included; the embedding Gather left for onnxruntime's
    quantizer), with ``accuracy_level`` set on the MatMulNBits it writes."""
    nncf = require("nncf", extra="quant")
    onnx = require("onnx")
    mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    ignored = nncf.IgnoredScope(names=list(exclude), types=["Gather"], validate=False)
    dataset = nncf.Dataset(prefill_feeds(model, calibration))
    with quiet_onnxruntime(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("nncf").setLevel(logging.WARNING)
        out = nncf.compress_weights(model, mode=mode, group_size=block_size, ratio=1.0, all_layers=True,
                                    dataset=dataset, subset_size=len(calibration), ignored_scope=ignored,
                                    awq=algorithm == "awq", scale_estimation=True)
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        if accuracy_level is not None:
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = accuracy_level
                    break
            else:
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))
        if len(node.input) > 3 and node.input[3] in inits:
            _pack_zero_points(inits[node.input[3]])
    if not any(o.domain == "com.microsoft" for o in out.opset_import):
        # NNCF adds the contrib op without its domain: the version converter needs it declared.
        out.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return out


def _pack_zero_points(init: Any) -> None:
    """NNCF 3.4 writes a 4-bit MatMulNBits' uint8 zero points one per byte, shape (N, blocks);
    ONNX Runtime reads them two per byte (low nibble first), shape (N, ceil(blocks / 2))."""
    from onnx import numpy_helper

    zp = numpy_helper.to_array(init)
    if zp.dtype != np.uint8 or zp.ndim != 2:
        return
    if zp.shape[1] % 2:
        zp = np.concatenate([zp, np.full((zp.shape[0], 1), 8, np.uint8)], axis=1)
    packed = (zp[:, 0::2] & 0x0F) | ((zp[:, 1::2] & 0x0F) << 4)
    init.CopyFrom(numpy_helper.from_array(packed.astype(np.uint8), init.name))


def quantize_onnx_dynamic_int8(src: str | Path, dest: str | Path, *, per_channel: bool = True,
                               reduce_range: bool | None = None) -> dict[str, Any]:
    """Dynamic int8 (weights int8, activations quantized at run time) of every MatMul.

    ``reduce_range`` (7-bit weights): None chooses it on CPUs without VNNI/AMX, where ONNX Runtime's
    u8 x s8 kernels add pairs of products in 16 bits (AVX2 ``vpmaddubsw``), which saturates with full
    8-bit weights: measured on an AVX2-only AMD EPYC, the tiny test decoder's first-step logits
    moved by 16% of their range with 8-bit weights."""
    if reduce_range is None:
        from lepton.evaluation.environment import fingerprint, int8_fast

        env = fingerprint()
        reduce_range = bool(env.cpu_flags) and not int8_fast(env)
    quantization = require("onnxruntime.quantization")
    onnx = require("onnx")
    path = _onnx_in(src)

    def fill(tmp: Path) -> None:
        with quiet_onnxruntime():
            quantization.quantize_dynamic(str(path), str(tmp / "model.onnx"), per_channel=per_channel,
                                          reduce_range=reduce_range,
                                          weight_type=quantization.QuantType.QInt8, op_types_to_quantize=["MatMul"])
        _side_files(path.parent, tmp)

    write_folder(Path(dest), fill)
    counts = _op_counts(onnx.load(str(Path(dest) / "model.onnx"), load_external_data=False),
                        ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul"))
    return {"method": "dynamic int8", "per_channel": per_channel, "reduce_range": reduce_range, "ops": counts,
            "size_bytes": _size(Path(dest))}


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _op_counts(model: Any, ops: tuple[str, ...]) -> dict[str, int]:
    return {op: sum(n.op_type == op for n in model.graph.node) for op in ops}


# -------------------------------------------------------------------------------------- torch

def quantize_linears(model: nn.Module, *, bits: int = 8, group_size: int | None = None,
                     exclude: tuple[str, ...] = ("lm_head",)) -> dict[str, Any]:
    """Replace every ``nn.Linear`` (names containing an ``exclude`` entry kept; the tied output
    layer by default) with :class:`WeightOnlyLinear`. int8 default: per output channel; int4
    default: groups of 128 (or ``group_size``), halved for a layer whose width it does not divide.
    Returns the record :func:`load_weight_only` needs."""
    if bits not in (4, 8):
        raise QuantizeError(f"bits must be 4 or 8, got {bits!r}")
    if bits == 4:
        group_size = group_size or 128
        if group_size % 2:
            raise QuantizeError(f"group_size must be even for int4, got {group_size}")
    before = _param_bytes(model)
    done: dict[str, dict[str, int]] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or any(e in name for e in exclude):
            continue
        group = _fitting_group(module.in_features, group_size)
        if bits == 4 and group is None:
            log.warning("%s: in_features %d has no even group size <= %s; kept in float",
                        name, module.in_features, group_size)
            continue
        parent, _, leaf = name.rpartition(".")
        layer = WeightOnlyLinear.from_linear(module, bits=bits, group_size=group)
        setattr(model.get_submodule(parent) if parent else model, leaf, layer)
        done[name] = {"bits": bits, "group_size": layer.group_size}
    if not done:
        raise QuantizeError("no nn.Linear layer to quantize (all excluded or none found)")
    return {"layers": done, "bytes_before": before, "bytes_after": _param_bytes(model)}


def _fitting_group(in_features: int, group_size: int | None) -> int | None:
    """``group_size`` or, where it does not divide ``in_features`` (SmolLM2's 576 with 128), the
    largest halving of it that does, down to 16; None: per channel (int8) / no fit (int4)."""
    size = group_size
    while size and size >= 16:
        if in_features % size == 0:
            return size
        size //= 2
    return None


def _param_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def save_weight_only(model: nn.Module, record: dict[str, Any], folder: str | Path, tokenizer: Any = None) -> Path:
    """Config, quantized weights (safetensors) and the record, written atomically."""
    from safetensors.torch import save_model

    def fill(tmp: Path) -> None:
        model.config.save_pretrained(tmp)
        save_model(model, str(tmp / WEIGHTS))  # drops tied duplicates safely
        (tmp / RECORD).write_text(json.dumps({"layers": record["layers"]}, indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return write_folder(Path(folder), fill)


def load_weight_only(folder: str | Path) -> nn.Module:
    """The model :func:`save_weight_only` wrote (safe load: safetensors only)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    try:
        layers = atomic.loads_json((folder / RECORD).read_text())["layers"]  # type: ignore[index]
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"{folder / RECORD}: missing or unreadable weight-only record ({err})") from err
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    for name, spec in layers.items():
        module = model.get_submodule(name)
        parent, _, leaf = name.rpartition(".")
        new = WeightOnlyLinear(module.in_features, module.out_features, bits=spec["bits"],
                               group_size=spec["group_size"], bias=module.bias is not None)
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise ArtifactError(f"{folder / WEIGHTS}: weights do not match the record "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model.eval()


# ------------------------------------------------------------------------ adapters beside int4

def _node_suffix(module: str) -> str:
    """The exported MatMul's name ends with the module path, ``/`` between modules and a list
    index kept with its list (``model.layers.0.mlp.up_proj`` -> ``/model/layers.0/mlp/up_proj/MatMul``)."""
    parts: list[str] = []
    for part in module.split("."):
        if part.isdigit() and parts:
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    return "/" + "/".join(parts) + "/MatMul"


def read_adapters(adapter_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A peft LoRA adapter folder as ``{module: (A (r, in), B scaled (out, r))}``: B times the
    adapter's scaling (alpha / r, or alpha / sqrt(r) with rsLoRA), so that delta W = B @ A."""
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise QuantizeError(f"{folder}: no LoRA adapter (adapter_config.json, adapter_model.safetensors)")
    config = atomic.loads_json(config_file.read_text())
    if not isinstance(config, dict):
        raise QuantizeError(f"{config_file}: not an adapter config")
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scaling = alpha / (r ** 0.5 if config.get("use_rslora") else r)
    weights = load_file(str(weights_file))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        b = weights.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise QuantizeError(f"{weights_file}: {key} has no lora_B")
        out[module] = (a.astype(np.float32), (b.astype(np.float32) * scaling))
    if not out:
        raise QuantizeError(f"{weights_file}: no LoRA weights")
    return out


def split_adapters(src: str | Path, dest: str | Path, adapters: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    """The float graph in ``src`` with every adapted MatMul split back into its base and its
    adapter: the base weight is the merged weight less B @ A (on a 4-bit-rounded base, those are
    the rounded values again), and the adapter runs beside it as two float MatMuls (``.../lora_A``,
    ``.../lora_B``) added to the base's output. Written to folder ``dest``; how many were split."""
    onnx = require("onnx")
    from onnx import helper, numpy_helper

    path = _onnx_in(src)
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_suffix = {m: _node_suffix(m) for m in adapters}
    done: set[str] = set()
    new_nodes = []
    for node in graph.node:
        module = next((m for m, sfx in by_suffix.items() if node.op_type == "MatMul" and node.name.endswith(sfx)),
                      None)
        if module is None or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        a, b = adapters[module]  # (r, in), (out, r)
        weight = numpy_helper.to_array(inits[node.input[1]])  # (in, out)
        if weight.shape != (a.shape[1], b.shape[0]):
            raise QuantizeError(f"{module}: adapter shapes {a.shape}, {b.shape} do not fit the graph's weight "
                                f"{weight.shape} (was the model changed after the LoRA stage?)")
        base = (weight - a.T @ b.T).astype(np.float32)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(base, node.input[1]))
        stem = node.name[: -len("/MatMul")]
        a_name, b_name = f"{stem}/lora_A.weight", f"{stem}/lora_B.weight"
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(a.T), a_name),
                                  numpy_helper.from_array(np.ascontiguousarray(b.T), b_name)])
        out = node.output[0]
        node.output[0] = f"{out}/base"
        new_nodes += [node,
                      helper.make_node("MatMul", [node.input[0], a_name], [f"{stem}/lora_A/out"],
                                       name=f"{stem}/lora_A/MatMul"),
                      helper.make_node("MatMul", [f"{stem}/lora_A/out", b_name], [f"{stem}/lora_B/out"],
                                       name=f"{stem}/lora_B/MatMul"),
                      helper.make_node("Add", [f"{out}/base", f"{stem}/lora_B/out"], [out], name=f"{stem}/lora_Add")]
        done.add(module)
    missing = sorted(set(adapters) - done)
    if missing:
        raise QuantizeError(f"adapted modules not found in the graph: {', '.join(missing[:4])}"
                            f"{' ...' if len(missing) > 4 else ''}")
    del graph.node[:]
    graph.node.extend(new_nodes)

    def fill(tmp: Path) -> None:
        onnx.save_model(model, str(tmp / "model.onnx"), save_as_external_data=model.ByteSize() > 1_800_000_000,
                        location="model.onnx.data")
        _side_files(path.parent, tmp)

    write_folder(Path(dest), fill)
    return len(done)
