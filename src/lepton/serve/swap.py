"""Hot swap of the served model: what the prediction app (``lepton.serve.app``) needs to replace its
model while it serves, and what the generative app needs to refuse it.

A swap is asked for by ``POST /v1/admin/swap {"model": PATH}`` (with ``--admin-token``; without a
token the route answers 404) or by SIGHUP (the same path again: a folder the operator replaced
atomically, as ``lepton update -o`` does). The new artifact is loaded in a thread, its manifest
and files verified (and its signature, with ``--require-signature``), checked against the served
one (``check_compatible``), warmed up with one prediction, and only then put in service; requests
already queued on the old model finish there, then the old one is released. Every refusal is a
``SwapRefused`` (409 with the reason) and the old model keeps serving.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from lepton.core import __version__
from lepton.core.errors import LeptonError

ENV_ADMIN_TOKEN = "LEPTON_ADMIN_TOKEN"
MANIFEST_FILE = "lepton.json"  # lepton.runtimes.saved.MANIFEST, without importing the runtimes here
DIGEST_KEY = "manifest_sha256"  # lepton.pipeline.artifact.DIGEST_KEY


class SwapRefused(LeptonError):
    """A swap that cannot be made: the reason is the message; the old model keeps serving.
    ``status``: the HTTP answer (409; 503 while shutting down)."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class SwapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, max_length=4096,
                       description="the folder of the updated Lepton model, as the server sees it")


class Artifact(BaseModel):
    """Which artifact a server answers with: ``/healthz``, ``/readyz``, ``/v1/model`` name it."""

    path: str
    sha256: str  # the manifest's digest (lepton.json's manifest_sha256, else the file's sha256)
    lepton_version: str | None  # the Lepton that wrote the artifact
    signature_verified: bool  # the server requires a signature and this artifact's verified


class Health(BaseModel):
    status: str
    server_version: str = __version__
    artifact: Artifact | None = None


def manifest_checksum(folder: Path, manifest: dict[str, Any]) -> str:
    """The manifest's own digest; for manifests written before they carried one, lepton.json's sha256."""
    digest = manifest.get(DIGEST_KEY)
    if isinstance(digest, str) and digest:
        return digest
    return hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest()


def artifact_of(path: str | os.PathLike[str], manifest: dict[str, Any], *, signed: bool) -> Artifact:
    folder = Path(path)
    return Artifact(path=str(folder.absolute()), sha256=manifest_checksum(folder, manifest),
                    lepton_version=manifest.get("lepton_version"), signature_verified=signed)


def check_compatible(old: Any, new: Any) -> None:
    """Refuse a swap the running server could not answer for in the same shape: another task
    kind, text pairs where texts were served (or the reverse), other tasks of a multi-task model,
    or a label the served model has that the new one lacks (new labels may be added: an update
    that learned a new class keeps the old rows)."""
    o, n = old.task, new.task
    if n.kind != o.kind:
        raise SwapRefused(f"the new model is a {n.kind} model; this server serves {o.kind} "
                          "(start a new server for another task kind)")
    if bool(n.pair) != bool(o.pair):
        want = "text pairs" if o.pair else "single texts"
        raise SwapRefused(f"the new model takes {'text pairs' if n.pair else 'single texts'}; this server takes {want}")
    old_tasks, new_tasks = list(getattr(old, "tasks", [])), list(getattr(new, "tasks", []))
    if old_tasks[1:] != new_tasks[1:]:
        raise SwapRefused(f"the new model's extra tasks {new_tasks[1:]} differ from the served {old_tasks[1:]}")
    for task_name in [None, *old_tasks[1:]]:
        old_labels, new_labels = (p.task.labels if task_name is None else p.head(task_name).task.labels
                                  for p in (old, new))
        missing = [label for label in old_labels if label not in new_labels]
        if missing:
            where = f" of task {task_name!r}" if task_name else ""
            raise SwapRefused(f"the new model lacks the label{'s' if len(missing) > 1 else ''}{where} "
                              f"{', '.join(map(repr, missing))} that the served model predicts")


def admin_guard(token: str | None):
    """A FastAPI dependency for the admin routes: 404 when the server has no admin token (the
    routes are off), 401 without ``Authorization: Bearer TOKEN``, 403 with another token."""

    async def guard(request: Request) -> None:
        if not token:
            raise HTTPException(404, "Not Found")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPException(401, "admin routes need 'Authorization: Bearer TOKEN' (the server's --admin-token)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(403, "wrong admin token")

    return guard
