"""Atomic writes: nothing a reader can see is ever half written.

Files go to a temp name in the same folder and are renamed over the target; folders are built
under a temp name and swapped in, the old one removed only after the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing any folder already there."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def write_folder(dest: Path, fill: Callable[[Path], None]) -> Path:
    """``fill`` a fresh temp folder beside ``dest``, then swap it in; on any error remove it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 would leave a shipped folder unreadable to other users.
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
