"""Saved Lepton models as the layers below the pipeline see them.

The artifact format (``lepton.pipeline.artifact``) sits above the stages and the evaluation, yet a
stage may start from a saved model (a distillation teacher in a folder) and the memory probe loads
one in a fresh process. Instead of importing upwards, they ask the store registered here: the
artifact module registers itself when it is imported (the pipeline always imports it before a
stage runs). A fresh process gets the loader's ``module:function`` name from its parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

MANIFEST = "lepton.json"  # a folder holding this file is a saved Lepton model


class SavedModelStore(Protocol):
    # "module:function" of the loader, for a fresh process (the memory probe)
    loader: str

    def read_manifest(self, path: Path, *, verify: bool = True) -> dict[str, Any]: ...

    def file_digests(self, folder: Path, manifest: dict[str, Any]) -> dict[str, str]: ...

    def load_bundle(self, path: Path, *, verify: bool = True, device: str = "cpu") -> Any: ...


_store: list[SavedModelStore] = []


def register_store(store: SavedModelStore) -> None:
    _store[:] = [store]


def store() -> SavedModelStore:
    """The registered store; a programming error (not a user one) when nothing registered it."""
    if not _store:
        raise RuntimeError("no saved-model store registered: import lepton.pipeline.artifact first")
    return _store[0]


def is_saved_model(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()
