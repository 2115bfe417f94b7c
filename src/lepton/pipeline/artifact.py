"""The standardized model on disk: weights, config, tokenizer, and a manifest (``lepton.json``)
holding the task, the resolved recipe, the stage history, the scorecards and the sha256 of every
file. Written to a temporary folder and moved into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton.core import __version__, atomic
from lepton.core.atomic import sha256
from lepton.core.errors import ArtifactError
from lepton.runtimes import runtime_info
from lepton.runtimes.bundle import ModelBundle, StageRecord
from lepton.runtimes.formats import find_format
from lepton.runtimes.saved import MANIFEST, register_store
from lepton.tasks import TaskSpec, kind_of

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
DIGEST_KEY = "manifest_sha256"
SIGNATURE = "lepton.json.sig"  # lepton.pipeline.signing
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Files a loader (transformers, tokenizers, ONNX Runtime, Lepton) may pick up by name: one not
# listed in the manifest is refused, as it would escape the checksums.
_LOADABLE_SUFFIXES = {".json", ".safetensors", ".bin", ".onnx", ".data", ".txt", ".model", ".pt", ".pth",
                      ".ckpt", ".msgpack", ".h5", ".jinja", ".py", ".pb", ".tiktoken", ".npz", ".pkl",
                      ".pickle", ".gguf", ".onnx_data"}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def save_artifact(bundle: ModelBundle, dest: str | os.PathLike[str], *, recipe: dict[str, Any] | None = None,
                  scorecards: list[dict[str, Any]] | None = None,
                  model_card: str | None = None, environment: dict[str, Any] | None = None,
                  extra_files: dict[str, bytes] | None = None, lineage: dict[str, Any] | None = None) -> Path:
    """Write ``bundle`` to ``dest`` atomically (a sibling temp folder renamed into place);
    ``model_card`` becomes README.md, covered by the checksums like every other file.
    ``extra_files``: more files (relative name -> bytes, e.g. ``data/rehearsal.jsonl``), written
    before the checksums so the manifest covers them. ``lineage``: where the model comes from
    (a parent artifact's checksum, the data it learned from), stored as the manifest's
    ``lineage`` entry."""
    def fill(tmp: Path) -> None:
        weights_format, structure, extra = _save_weights(bundle, tmp)
        if bundle.heads:
            from lepton.runtimes.heads import save_heads

            extra = {**extra, "main_task": bundle.main_task,
                     "heads": save_heads(bundle.heads, bundle.model, tmp, bundle.runtime)}
        save_tokenizer(bundle.tokenizer, tmp)
        if model_card is not None:  # model card: before the checksums, so they cover it
            (tmp / "README.md").write_text(model_card, encoding="utf-8")
        for name, data in (extra_files or {}).items():
            if not _safe_relative(name):
                raise ArtifactError(f"{name!r}: not a path inside the model folder")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        files = {p.relative_to(tmp).as_posix(): {"sha256": sha256(p)} for p in sorted(tmp.rglob("*"))
                 if p.is_file()}
        manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "lepton_version": __version__,
            "created": now_iso(),
            "runtime": bundle.runtime,
            "source_model": bundle.source,
            "task": bundle.task.model_dump(),
            "recipe": recipe,
            "history": [r.model_dump() for r in bundle.history],
            "environment": environment,  # the machine the scorecards were measured on
            # Per-layer sizes when head/FFN pruning left layers the config cannot describe; such a
            # model loads only through Lepton (transformers 5 has no pruned_heads any more).
            "structure": structure,
            # "safetensors": transformers weights; "onnx": model.onnx for plain onnxruntime;
            # "torch-dynamic-int8": int8 Linears that only Lepton loads (see lepton.models.int8);
            # "torch-int8": float Linears with 8-bit embedding tables (lepton.models.int8_embedding).
            "format": weights_format,
            "loads_in_transformers": structure is None and _loads_in_transformers(weights_format),
            **extra,
            "scorecards": scorecards or [],
            **({"lineage": lineage} if lineage is not None else {}),
            "files": files,
        }
        manifest = json.loads(json.dumps(manifest, default=str))  # as it will read back
        manifest[DIGEST_KEY] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        mode = (tmp / MANIFEST).stat().st_mode & 0o777  # what the umask gives a new file
        for name in files:  # safetensors writes its file 0600 whatever the umask
            os.chmod(tmp / name, mode)

    return atomic.write_folder(Path(dest), fill)


def _save_weights(bundle: ModelBundle, folder: Path) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """Write the model's files; returns (format, per-layer structure, extra manifest entries)."""
    from lepton.models import int8 as torch_int8
    from lepton.models.int8_embedding import has_int8_embeddings
    from lepton.models.structure import describe

    if bundle.runtime_info.is_graph:
        bundle.model.save_pretrained(folder)  # model.onnx (+ external data) + config.json
        info = {k: v for k, v in bundle.model.info.items() if k != "unfused_path"}  # machine-local
        # "onnx-decoder": a generative model's graph with its KV cache (lepton.runtimes.ort_decoder)
        return getattr(bundle.model, "weights_format", "onnx"), None, {"onnx": info}
    if torch_int8.is_dynamic_int8(bundle.model):
        bundle.model.config.save_pretrained(folder)
        torch_int8.save_int8(bundle.model, folder)
        return "torch-dynamic-int8", torch_int8.structure(bundle.model), {}
    if has_int8_embeddings(bundle.model):  # float Linears, 8-bit embedding tables: same file
        bundle.model.config.save_pretrained(folder)
        torch_int8.save_int8(bundle.model, folder)
        return "torch-int8", describe(bundle.model), {}
    bundle.model.save_pretrained(folder, safe_serialization=True)
    return "safetensors", describe(bundle.model), {}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, without the digest itself: an edit of
    ``lepton.json`` (a deleted file entry, a changed label) no longer matches it."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_manifest(path: str | os.PathLike[str], *, verify: bool = True,
                  public_key: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The manifest of a model folder. ``verify``: check the manifest's own digest, that it lists
    every file the model needs and every file's sha256, and refuse files it does not list that a
    loader would read. ``public_key``: also require a valid signature by that key's holder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such model folder")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{folder}: not a Lepton model (no {MANIFEST}); "
                            "plain transformers folders load with lepton.evaluate or as a recipe's model")
    _inside(folder, mpath)
    try:
        manifest = atomic.loads_json(mpath.read_text(encoding="utf-8"))
    except ValueError as err:  # not JSON, not UTF-8, or nested too deeply
        raise ArtifactError(f"{mpath}: manifest is not valid JSON ({err})") from None
    except OSError as err:
        raise ArtifactError(f"{mpath}: cannot read the manifest ({atomic.describe(err)})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: manifest is not a JSON object")
    version = manifest.get("schema_version")
    if version != MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(f"{mpath}: manifest schema_version {version!r} is not supported "
                            f"(this Lepton reads {MANIFEST_SCHEMA_VERSION})")
    if verify:
        check_manifest(folder, manifest)
        verify_files(folder, manifest)
    if public_key is not None:
        from lepton.pipeline import signing

        signing.verify(folder, public_key)
    return manifest


def sign_model(model_dir: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> tuple[Path, str]:
    """Verify every file of ``model_dir`` (never vouch for a damaged model), then sign its manifest
    into ``lepton.json.sig`` (``lepton sign``); (signature path, key id)."""
    from lepton.pipeline import signing

    return signing.sign_manifest(model_dir, private_key, verify=read_manifest)


def check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """The manifest's own integrity: its digest (manifests written before it had one are read
    as they are) and its files map."""
    mpath = folder / MANIFEST
    digest = manifest.get(DIGEST_KEY)
    if digest is not None and digest != manifest_digest(manifest):
        raise ArtifactError(f"{mpath}: the manifest was edited after it was saved (its {DIGEST_KEY} "
                            "does not match its contents)")
    file_digests(folder, manifest)


def file_digests(folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """name -> sha256 from the manifest's files map: ``{"name": {"sha256": hex}}``, or the bare
    hex of manifests written before the algorithm was named."""
    mpath = folder / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{mpath}: lists no files to verify")
    out = {}
    for name, entry in files.items():
        if not _safe_relative(name):
            raise ArtifactError(f"{mpath}: files: {name!r} is not a path inside the model folder")
        if isinstance(entry, str):
            entry = {"sha256": entry}
        if not isinstance(entry, dict) or set(entry) != {"sha256"} or not _HEX64.fullmatch(str(entry["sha256"])):
            algos = ", ".join(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ArtifactError(f"{mpath}: files.{name}: expected {{\"sha256\": <64 hex digits>}} "
                                f"(got {algos}; this Lepton checks sha256 only)")
        out[name] = entry["sha256"]
    return out


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """``save_pretrained``, with the call-time padding and truncation that transformers leaves on
    a fast tokenizer's backend taken out of ``tokenizer.json``: read by the ``tokenizers`` library
    alone (CTranslate2's users, other runtimes), they would pad every batch with real tokens."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("padding") is not None or data.get("truncation") is not None:
            data.update(padding=None, truncation=None)
            atomic.write_text(path, json.dumps(data, ensure_ascii=False))


def _safe_relative(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _loads_in_transformers(format_name: str) -> bool:
    fmt = find_format(format_name)
    return fmt is not None and fmt.loads_in_transformers


def required_files(manifest: dict[str, Any]) -> list[str]:
    """The files a model of this manifest's format cannot load without: they must be listed (so
    deleting an entry cannot take a file out of the checks)."""
    runtime = manifest.get("runtime", "torch")
    fmt = find_format(manifest.get("format") or runtime_info(runtime).format)
    weights = fmt.weights_file if fmt is not None else None
    needed = ["config.json", "tokenizer_config.json"] + ([weights] if weights else [])
    heads = manifest.get("heads")
    if isinstance(heads, dict):
        needed += [h["file"] for h in heads.values() if isinstance(h, dict) and isinstance(h.get("file"), str)]
    return needed


def _loader_reads(name: str) -> bool:
    return Path(name).suffix.lower() in _LOADABLE_SUFFIXES


def unlisted_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Files in the folder the manifest does not list (the manifest and its signature aside)."""
    listed = set(manifest.get("files") or {})
    found = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    return [n for n in found if n not in listed and n not in (MANIFEST, SIGNATURE)]


def _inside(folder: Path, path: Path) -> None:
    """A link that stays inside the model folder points at a file that is itself checked; one
    that leaves it would make the checksums (and loading) vouch for a file nobody shipped."""
    root = os.path.realpath(folder)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ArtifactError(f"{path}: a link to {os.path.realpath(path)}, outside the model folder; a model's "
                            "files must be inside its folder (copy the file in instead of linking it)")


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every listed file present with its sha256; every required file listed; no unlisted file a
    loader would read (others are reported in the log)."""
    digests = file_digests(folder, manifest)
    missing = [n for n in required_files(manifest) if n not in digests]
    if missing:
        raise ArtifactError(f"{folder / MANIFEST}: does not list {missing[0]}, which this model needs; "
                            "the manifest was edited or is incomplete")
    for name, digest in digests.items():
        p = folder / name
        _inside(folder, p)
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in {MANIFEST} but missing")
        if sha256(p) != digest:
            raise ArtifactError(f"{p}: checksum mismatch (the file was changed after it was saved)")
    extra = unlisted_files(folder, manifest)
    readable = [n for n in extra if _loader_reads(n)]
    if readable:
        raise ArtifactError(f"{folder / readable[0]}: not listed in {MANIFEST}, and loading could read it; "
                            "remove it (files added after saving are refused)")
    if extra:
        log.warning("%s: files not covered by %s (not loaded, not verified): %s", folder, MANIFEST,
                    ", ".join(extra))


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True, device: str = "cpu",
                public_key: str | os.PathLike[str] | None = None) -> ModelBundle:
    from safetensors import SafetensorError

    from lepton.models import load_tokenizer

    folder = Path(path)
    manifest = read_manifest(folder, verify=verify, public_key=public_key)
    try:
        task = TaskSpec.model_validate(manifest.get("task"))
    except ValidationError as err:
        raise ArtifactError(f"{folder / MANIFEST}: task is malformed ({err.errors()[0]['msg']})") from None
    auto = kind_of(task).auto_model()
    structure = manifest.get("structure")
    runtime = manifest.get("runtime", "torch")
    format_name = manifest.get("format") or runtime_info(runtime).format
    fmt = find_format(format_name)
    if fmt is None:
        raise ArtifactError(f"{folder / MANIFEST}: unknown weights format {format_name!r}")
    try:
        model = fmt.load(folder, manifest, auto, structure, device)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # damaged, with verify=False
        raise ArtifactError(f"{folder}: cannot load the model ({str(err).splitlines()[0]})") from None
    heads = {}
    if manifest.get("heads"):
        from lepton.runtimes.heads import load_heads

        heads = load_heads(manifest["heads"], model, folder, fmt.runtime)
        if runtime_info(fmt.runtime).is_graph:
            outputs = {o.name for o in model.session().get_outputs()}
            missing = [n for n in heads if f"logits.{n}" not in outputs]
            if missing:
                raise ArtifactError(f"{folder / 'model.onnx'}: has no output for head {missing[0]!r}")
    return ModelBundle(model=model, tokenizer=load_tokenizer(str(folder)), task=task,
                       runtime=runtime, source=manifest.get("source_model", ""),
                       history=[StageRecord.model_validate(r) for r in manifest.get("history", [])],
                       heads=heads, main_task=str(manifest.get("main_task") or "main"))


class _Store:
    """This module as ``lepton.runtimes.saved`` knows it (see there why)."""

    loader = f"{__name__}:load_bundle"
    read_manifest = staticmethod(read_manifest)
    file_digests = staticmethod(file_digests)
    load_bundle = staticmethod(load_bundle)


register_store(_Store())
