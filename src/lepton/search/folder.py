"""The output folder of a search, and the study journal in it.

A search writes only into a folder it created itself (or an empty one), recognised later by the
search marker ``lepton-search.json`` it writes first, as ``lepton run`` does with its run marker
(``lepton.core.outdir``). Running the same search again continues it, and any number of workers
share one folder, so a search folder holds no exclusive lock; what it refuses is a folder that
is not a search's: a user's folder with files in it (``-o ~/Documents``), a ``lepton run``
folder, a file, an empty name.

The journal (``study.journal``, Optuna's JSON-lines log) is checked before Optuna reads it: a
record cut short by a crash at the very end (the one kind of damage a write can leave) is
dropped, under the journal's lock, with a warning; any other damage is one line naming the file,
the line and how to go on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from lepton.core import __version__, atomic
from lepton.core.errors import OutputFolderError, SearchError
from lepton.core.outdir import MARKER as RUN_MARKER

log = logging.getLogger(__name__)

MARKER = "lepton-search.json"
# What an earlier search left, from before the marker: its log beside its study or its front.
_LEGACY = ("study.journal", "pareto.json")
# The marker's own temp file while a worker writes it (another worker starting at that moment).
_MARKER_TMP = re.compile(r"^\." + re.escape(MARKER) + r"\.tmp-")


def _is_search_folder(folder: Path) -> bool:
    return (folder / MARKER).is_file() or (
        (folder / "search.log").is_file() and any((folder / name).is_file() for name in _LEGACY))


def claim(out: str | os.PathLike[str]) -> Path:
    """Check that a search may write into ``out``, create it if needed and write the marker.

    A new or empty folder becomes a search folder; a previous search folder is continued (the
    study in it says what is done); anything else is refused in one line naming it."""
    text = os.fspath(out)
    if not text.strip():
        raise OutputFolderError("the output folder is an empty name (-o '' or output.dir: ''); "
                                "give a folder, e.g. -o runs/my-search")
    folder = Path(text).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: is a file, not a folder; give a new folder for the search")
    if folder.is_dir() and not _is_search_folder(folder):
        if (folder / RUN_MARKER).is_file():
            raise OutputFolderError(f"{folder}: holds a lepton run ({RUN_MARKER}), not a search; "
                                    "choose another -o for the search")
        try:
            entries = [p.name for p in folder.iterdir() if not _MARKER_TMP.match(p.name)]
        except OSError as err:
            raise OutputFolderError(f"{folder}: cannot read the folder ({atomic.describe(err)})") from None
        if entries:
            raise OutputFolderError(
                f"{folder}: exists and is not a Lepton search folder (no {MARKER}); a search writes only "
                "into a new or empty folder or a previous search's (to continue it), so nothing of yours "
                "is overwritten: choose another -o")
    with atomic.io_errors(folder, "create the output folder"):
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / MARKER).is_file():
            atomic.write_text(folder / MARKER, json.dumps({
                "lepton_version": __version__,
                "what": "a Lepton search folder: lepton search with this -o continues the search here; "
                        "to start over, delete the folder or choose another -o"}))
    return folder


def _record_problem(line: bytes) -> str | None:
    """None for a journal record (a JSON object with an op_code), else what is wrong with it."""
    try:
        value = atomic.loads_json(line)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError as err:  # JSONDecodeError, nesting too deep
        return f"not JSON: {str(err).split(':')[0]}"
    if not isinstance(value, dict) or not isinstance(value.get("op_code"), int):
        return "not an Optuna journal record"
    return None


def _scan(data: bytes) -> tuple[int, int, str | None, bool]:
    """(intact bytes, intact records, the first problem or None, whether the problem is only an
    unfinished last record: text that starts like a record, with no line end)."""
    offset = count = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:  # the last line has no line end: a write cut short, or garbage
            tail = data[offset:]
            torn = tail.lstrip().startswith(b"{")
            try:
                tail.decode("utf-8")
            except UnicodeDecodeError as err:  # a multi-byte character cut in two is fine at the end
                torn = torn and err.start >= len(tail) - 3 and err.reason == "unexpected end of data"
            return offset, count, "the last record is incomplete", torn
        problem = _record_problem(data[offset:end + 1])
        if problem is not None:
            return offset, count, problem, False
        offset, count = end + 1, count + 1
    return offset, count, None, False


def check_journal(path: Path) -> None:
    """Refuse a file that is not an Optuna journal, before Optuna appends to it or reads it.

    An unfinished last record (a worker killed while writing it) is dropped with a warning: Optuna
    skips it when reading, but the next record would be appended to it and damage both. Any other
    damage is an error naming the line and saying how to keep the records before it."""
    if not path.exists():
        return
    if path.is_dir():
        raise SearchError(f"{path}: is a folder, not a study journal file; give a file for --storage "
                          "(or leave --storage out)")
    with atomic.io_errors(path, "read the study journal"):
        data = path.read_bytes()
    intact, count, problem, torn = _scan(data)
    if problem is None:
        return
    if torn:
        _drop_unfinished_record(path)
        return
    if not count:
        raise SearchError(f"{path}: not a readable study journal (line 1: {problem}); to start the study "
                          "over, delete the file or choose another -o / --storage")
    raise SearchError(f"{path}: damaged study journal at line {count + 1} ({problem}); to keep the {count} "
                      f"intact records before it, cut the file there (truncate -s {intact} {path}); to start "
                      "the study over, delete the file or choose another -o")


def _drop_unfinished_record(path: Path) -> None:
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's own appends hold: no worker is writing
    lock.acquire()
    try:
        with atomic.io_errors(path, "repair the study journal"):
            data = path.read_bytes()
            intact, count, problem, torn = _scan(data)
            if problem is None:
                return  # another worker repaired it first
            if not torn:
                raise SearchError(f"{path}: damaged study journal at line {count + 1} ({problem}); "
                                  "delete the file or choose another -o to start the study over")
            with open(path, "r+b") as f:
                f.truncate(intact)
                f.flush()
                os.fsync(f.fileno())
    finally:
        lock.release()
    log.warning("%s: the last record was incomplete (a worker stopped while writing it?); dropped it "
                "(%d bytes), the %d records before it are kept", path, len(data) - intact, count)
