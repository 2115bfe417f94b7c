"""Run a plain recipe's stages, reusing every prefix of stages an earlier trial already ran.

A prefix (the first k stages) is identified by a content hash of the starting model's files, the
loaded data, the task, the seed and the settings of those k stages. Its result is saved as a
normal Lepton snapshot under ``OUT/cache/prefix/<hash>``; the next trial whose recipe starts with
the same k stages loads it instead of running them. Only prefixes that several trials can share
are kept: those with no continuous (float) search setting in them, since a float is drawn anew
for every trial. The stages run through the registry (``lepton.stages.handler_for``), exactly as
``lepton.run`` runs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton.pipeline.recipe import Recipe
from lepton.runtimes.bundle import ModelBundle, RunContext, StageRecord
from lepton.runtimes.saved import MANIFEST, is_saved_model

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"


def _hash_files(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.relative_to(folder).as_posix().encode())
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _hash_splits(splits: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        s = splits[name]
        h.update(json.dumps([name, list(s.texts), s.text_pairs, s.labels], default=str).encode())
    return h.hexdigest()


@dataclass
class Workspace:
    """What every trial of one search process shares: data, device, the cache folder."""

    recipe: Recipe  # any plain recipe of the space: model, task, data and seed are the same in all
    splits: dict[str, Any]
    device: str
    out_dir: Path
    progress: bool = False
    base_key: str = ""
    _model: ModelBundle | None = field(default=None, repr=False)
    _verified: dict[Path, tuple] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, recipe: Recipe, out_dir: Path, *, progress: bool = False) -> Workspace:
        from lepton.models import resolve_model
        from lepton.pipeline.api import load_splits, resolve_device

        splits = load_splits(recipe)  # tokenized once per variant by the harness; loaded once here
        location = Path(resolve_model(recipe.model_source()))
        model_id = _hash_files(location) if location.is_dir() else recipe.model_source()
        base = json.dumps({"model": model_id, "task": recipe.task.model_dump(mode="json"),
                           "data": _hash_splits(splits), "seed": recipe.seed,
                           "trust_remote_code": recipe.trust_remote_code}, sort_keys=True)
        return cls(recipe=recipe, splits=splits, device=resolve_device(recipe.device), out_dir=out_dir,
                   progress=progress, base_key=hashlib.sha256(base.encode()).hexdigest())

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "cache" / "prefix"

    def prefix_key(self, recipe: Recipe, k: int) -> str:
        """The content hash of the first ``k`` stages of ``recipe`` (0: the starting model)."""
        settings = [s.model_dump(mode="json") for s in recipe.stages[:k]]
        text = json.dumps({"base": self.base_key, "stages": settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def cached(self, key: str) -> Path | None:
        """The cached snapshot of prefix ``key``, its files verified against their checksums like
        any saved model's; a damaged entry is discarded (with a warning) so that it is built again."""
        entry = self.cache_dir / key
        folder = entry / SNAPSHOT
        if not entry.exists():
            return None
        if is_saved_model(folder):
            problem = self._check(folder)
            if problem is None:
                _touch(entry)
                return folder
        else:  # entries appear whole (renamed into place): one without its manifest was damaged
            problem = f"{folder}: no {MANIFEST}"
        log.warning("cached prefix %s is damaged (%s): discarding it, its stages run again", entry, problem)
        discard(entry)
        return None

    def _check(self, folder: Path) -> str | None:
        """None when the snapshot's files match its manifest (remembered while they are unchanged)."""
        from lepton.core.errors import LeptonError
        from lepton.pipeline.artifact import read_manifest

        stamp = _stamp(folder)
        if self._verified.get(folder) == stamp:
            return None
        try:
            read_manifest(folder, verify=True)
        except LeptonError as err:
            return str(err)
        self._verified[folder] = stamp
        return None

    def starting_bundle(self, recipe: Recipe) -> ModelBundle:
        """The recipe's model with a fresh task head, as ``lepton.run`` builds it."""
        from lepton.pipeline.api import starting_model
        from lepton.tasks import build_task

        return starting_model(recipe, build_task(recipe.task, self.splits.get("train")), self.device)


def _stamp(folder: Path) -> tuple:
    """Every file's name, size and modification time: a file written since changes it."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out.append((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


USED = "used"  # an entry's file whose modification time is its last use (eviction removes the oldest)


def _touch(entry: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only or vanished entry only loses its place in the order
        (entry / USED).touch()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _last_use(path: Path) -> float:
    used = path / USED
    try:
        return (used if used.exists() else path).stat().st_mtime
    except OSError:
        return 0.0


@dataclass
class Eviction:
    removed: list[str]
    freed_bytes: int
    size_bytes: int  # what the cache holds afterwards
    over: bool  # still over the limit: what is left is in use or kept


def evict(cache_root: Path, max_bytes: int, keep: AbstractSet[str] = frozenset()) -> Eviction:
    """Remove the least recently used entries of ``cache_root`` (``prefix/<key>`` snapshots and
    ``teacher/<key>.safetensors`` files) until it holds at most ``max_bytes``.

    Never removed: the keys in ``keep`` (the baseline's prefixes, which every trial starts from) and
    a prefix entry a worker is using (a trial holds a shared lock on ``<key>.pin`` for each entry
    it loaded or made, until it ends; eviction takes that lock without waiting and skips the entry
    when it cannot).
    A teacher file is read whole when a distill stage starts, so removing it is always safe.
    """
    entries: list[tuple[float, Path, str]] = []
    for folder, kind in ((cache_root / "prefix", "prefix"), (cache_root / "teacher", "teacher")):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") or p.suffix in (".lock", ".pin") or p.name.endswith(".tmp"):
                continue
            key = p.name.split(".", 1)[0]
            if key in keep:
                continue
            entries.append((_last_use(p), p, kind))
    total = _size(cache_root) if cache_root.is_dir() else 0
    removed, freed = [], 0
    for _, path, kind in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        size = _size(path)
        if kind == "prefix":
            with _flock(path.parent / f"{path.name}.pin", wait=False) as got:
                if not got:
                    continue
                discard(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        total -= size
        freed += size
        removed.append(f"{kind}/{path.name}")
    if removed:
        log.info("search cache: removed %d least recently used entries (%.1f MB) to stay under %.1f MB",
                 len(removed), freed / 1e6, max_bytes / 1e6)
    return Eviction(removed=removed, freed_bytes=freed, size_bytes=total, over=total > max_bytes)


def discard(entry: Path) -> None:
    """Remove a cache entry: renamed away first (one step other workers see whole), then deleted."""
    gone = entry.parent / f".{entry.name}.damaged-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, gone)
    except FileNotFoundError:
        return  # another worker discarded it first
    except OSError as err:
        from lepton.core.atomic import describe
        from lepton.core.errors import StorageError

        raise StorageError(f"{entry}: cannot discard the damaged cache entry: {describe(err)}") from None
    if gone.is_dir() and not gone.is_symlink():
        shutil.rmtree(gone, ignore_errors=True)
    else:
        gone.unlink(missing_ok=True)


@contextlib.contextmanager
def _flock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """A lock on ``path`` across processes: exclusive (two workers never build one prefix twice) or
    shared (a trial pins an entry it uses). Without ``wait`` it yields False at once when taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, at worst work done twice
            yield True
            return
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def save_into_cache(ws: Workspace, bundle: ModelBundle, key: str, recipe: Recipe, k: int) -> Path:
    from lepton.pipeline.artifact import save_artifact

    folder = ws.cache_dir / key
    tmp = ws.cache_dir / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    save_artifact(bundle, tmp / SNAPSHOT, recipe=recipe.resolved_dict())
    (tmp / "prefix.json").write_text(json.dumps(
        {"stages": [s.model_dump(mode="json") for s in recipe.stages[:k]], "model": recipe.model_source()},
        indent=2))
    _touch(tmp)
    try:
        os.rename(tmp, folder)  # fails if another worker got there first: keep theirs
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / SNAPSHOT


@dataclass
class PipelineResult:
    bundle: ModelBundle
    reused: int  # stages loaded from the cache
    ran: int  # stages run in this trial
    seconds: float


def cacheable_stages(recipe_stage_count: int, float_stages: set[int]) -> int:
    """How many leading stages may be cached: up to (not including) the first with a float setting."""
    return min([recipe_stage_count, *float_stages])


def run_stages(ws: Workspace, recipe: Recipe, work: Path, *, shareable: int,
               cache_last: bool = False) -> PipelineResult:
    """Run ``recipe``'s stages into a bundle, loading the longest cached prefix first and caching
    each new prefix of the first ``shareable`` stages (the last one only with ``cache_last``: a
    trial's own last stage is seldom shared; the baseline's always is). Every cache entry the
    trial reads or makes is pinned (kept from eviction) until it returns."""
    with contextlib.ExitStack() as pins:
        return _run_stages(ws, recipe, work, shareable, cache_last, pins)


def _pin(ws: Workspace, key: str, pins: contextlib.ExitStack, pinned: set[str]) -> None:
    """Keep cache entry ``key`` from eviction until this trial ends."""
    if key not in pinned:
        pins.enter_context(_flock(ws.cache_dir / f"{key}.pin", shared=True))
        pinned.add(key)


def _longest_cached(ws: Workspace, keys: list[str], names: list[str], limit: int, pins: contextlib.ExitStack,
                    pinned: set[str]) -> tuple[int, ModelBundle | None, dict[str, Path]]:
    """The longest cached prefix (its stage count and model; 0 and None when none is) and the
    snapshots of the stages before it (teachers for later stages), each pinned."""
    from lepton.pipeline.artifact import load_bundle

    start, bundle = 0, None
    for k in range(limit, 0, -1):
        _pin(ws, keys[k], pins, pinned)
        found = ws.cached(keys[k])
        if found is not None:
            bundle = load_bundle(found, verify=False, device=ws.device)
            start = k
            break
    snapshots: dict[str, Path] = {}
    for j in range(start):
        _pin(ws, keys[j + 1], pins, pinned)
        found = ws.cached(keys[j + 1])
        if found is not None:
            snapshots[names[j]] = found
    return start, bundle, snapshots


def _run_stages(ws: Workspace, recipe: Recipe, work: Path, shareable: int, cache_last: bool,
                pins: contextlib.ExitStack) -> PipelineResult:
    from lepton.pipeline.artifact import load_bundle, now_iso, save_artifact
    from lepton.stages import handler_for

    started_all = time.perf_counter()
    names = recipe.stage_names()
    n = len(recipe.stages)
    limit = min(shareable, n if cache_last else n - 1)
    keys = [ws.prefix_key(recipe, k) for k in range(n + 1)]
    teachers = {getattr(s, "teacher", None) for s in recipe.stages}
    pinned: set[str] = set()
    start, bundle, snapshots = _longest_cached(ws, keys, names, limit, pins, pinned)
    if bundle is None:
        bundle = ws.starting_bundle(recipe)
    i = start
    while i < n:
        stage, name = recipe.stages[i], names[i]
        share = i < limit and not bundle.train_hooks
        if share:
            _pin(ws, keys[i + 1], pins, pinned)
        lock = _flock(ws.cache_dir / f"{keys[i + 1]}.lock") if share else contextlib.nullcontext()
        with lock:
            found = ws.cached(keys[i + 1]) if share else None
            if found is not None:  # another worker built it while this one waited
                bundle = load_bundle(found, verify=False, device=ws.device)
            else:
                ctx = RunContext(splits=ws.splits, seed=recipe.seed, device=ws.device, out_dir=ws.out_dir,
                                 work_dir=work, progress=ws.progress, stage_dir=work / f"stage-{i}-{stage.kind}",
                                 stage_index=i, stage_name=name, snapshots=dict(snapshots),
                                 columns=recipe.task.columns(), select=recipe.data.selection())
                log.info("stage %d (%s) starts", i, name)
                started, t0 = now_iso(), time.perf_counter()
                bundle = handler_for(stage, bundle.family, f"stages.{i}")(bundle, stage, ctx)
                bundle.history.append(StageRecord(
                    index=i, kind=stage.kind, name=name, settings=stage.model_dump(mode="json"),
                    started=started, seconds=round(time.perf_counter() - t0, 2), summary=ctx.stage_summary))
                log.info("stage %d (%s) done in %.1f s", i, name, bundle.history[-1].seconds)
                if share and not bundle.train_hooks:
                    found = save_into_cache(ws, bundle, keys[i + 1], recipe, i + 1)
                elif name in teachers:  # a later distill reads it from disk
                    found = save_artifact(bundle, work / f"stage-{i}-{stage.kind}" / SNAPSHOT,
                                          recipe=recipe.resolved_dict())
        if found is not None:
            snapshots[name] = found
        i += 1
    return PipelineResult(bundle=bundle, reused=start, ran=n - start,
                          seconds=time.perf_counter() - started_all)
