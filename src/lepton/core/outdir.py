"""The output folder of a run: Lepton writes only into a folder it created itself (or an empty
one), recognised later by the run marker file it leaves there.

- A new or empty folder is claimed: the marker ``lepton-run.json`` is written first.
- A folder holding a marker is a previous Lepton run: ``--resume`` continues it, ``--force``
  replaces it on purpose; without either it is refused, so a finished run is never replaced by
  accident.
- Anything else (a folder with other files, a file, an empty name) is refused in one line naming
  the folder: ``-o ~/Documents`` can never lose a document.

While a run writes, it holds an exclusive lock on the marker, so two runs never share a folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lepton.core import __version__, atomic
from lepton.core.errors import OutputFolderError

log = logging.getLogger(__name__)

MARKER = "lepton-run.json"


def state(folder: Path) -> str:
    """'interrupted' (work/ left by an unfinished run), 'finished' (a model, no work/) or 'empty'."""
    if (folder / "work").exists():
        return "interrupted"
    if (folder / "model").exists():
        return "finished"
    return "empty"


def inside(base: Path, *parts: str) -> Path:
    """``base / parts``, refusing any result that would leave ``base`` (names are validated as
    plain names in the recipe; this is the second line of defence where they become paths)."""
    path = base.joinpath(*parts)
    root = os.path.realpath(base)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise OutputFolderError(f"{path}: leaves the output folder {base}; names must be plain names")
    return path


@dataclass
class RunFolder:
    path: Path
    resume: bool
    _lock: IO[str] | None = None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None


def claim(out: str | os.PathLike[str], *, resume: bool = False, force: bool = False) -> RunFolder:
    """Check that Lepton may write into ``out``, create it if needed, write the marker and lock it.

    Returns the folder and whether a resume applies (``--resume`` with an interrupted run)."""
    text = os.fspath(out)
    if not text.strip():
        raise OutputFolderError("the output folder is an empty name (-o '' or output.dir: ''); "
                                "give a folder, e.g. -o runs/my-run")
    folder = Path(text).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: is a file, not a folder; give a new folder for the run")
    marker = folder / MARKER
    if folder.is_dir():
        # Only the marker makes a folder Lepton's. Files that merely look like a run (a
        # work/recipe.json, a model/lepton.json) do not: --force would delete what sits beside them.
        known = marker.is_file()
        if not known and any(folder.iterdir()):
            raise OutputFolderError(
                f"{folder}: exists and is not a Lepton run folder (no {MARKER}); Lepton writes only into "
                "a new or empty folder or a previous run's, so nothing of yours is overwritten: "
                "choose another -o")
        if known:
            _check_reuse(folder, resume=resume, force=force)
    with atomic.io_errors(folder, "create the output folder"):
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            atomic.write_text(marker, json.dumps({"lepton_version": __version__,
                                                  "what": "a Lepton run folder: lepton run may write here"}))
        lock = marker.open("r")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OutputFolderError(f"{folder}: another lepton run is writing to this folder; wait for it "
                                "to finish or choose another -o") from None
    with atomic.io_errors(folder, "clean up"):
        atomic.cleanup_leftovers(folder / "model")
    return RunFolder(folder, resume and state(folder) == "interrupted", lock)


def _check_reuse(folder: Path, *, resume: bool, force: bool) -> None:
    found = state(folder)
    if force:
        if found != "empty":
            log.info("--force: replacing the previous run in %s", folder)
        return
    if resume:
        if found == "finished":
            raise OutputFolderError(f"{folder}: holds a finished run, there is nothing to resume; "
                                    "use --force to run it again, or choose another -o")
        return
    if found == "interrupted":
        raise OutputFolderError(f"{folder}: holds an interrupted run; use --resume to continue it, "
                                "--force to start it over, or choose another -o")
    if found == "finished":
        raise OutputFolderError(f"{folder}: holds a finished run; use --force to replace it, "
                                "or choose another -o")
