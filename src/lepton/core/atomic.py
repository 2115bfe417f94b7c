"""Durable, atomic writes: nothing a reader can see is ever half written, and nothing written is
lost to a power cut once the call returns.

Files go to a temp name in the same folder, are flushed and fsynced, then renamed over the
target, and the folder itself is fsynced so the rename survives a crash (rename alone only
orders the metadata in memory). Folders are built under a temp name, every file and folder in
them fsynced, then swapped in; the old one is removed only after the new one is in place, and
put back if the swap fails half-way.

A write that fails on the file system (disk full, read-only, permission ...) raises
:class:`~lepton.core.errors.StorageError` naming the path and the cause, and leaves the target as it
was. Temp folders a killed process left behind are removed by the next write of the same
target (only those of processes that no longer run).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from lepton.core.errors import StorageError

log = logging.getLogger(__name__)

_CAUSES = {
    errno.ENOSPC: "disk full (no space left on the device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a file is in the way where a folder is needed",
    errno.EISDIR: "a folder is in the way where a file is needed",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.EIO: "input/output error (a failing disk?)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
}
# safetensors (Rust) reports an OS error inside its message: "... (os error 28)".
_RUST_OS_ERROR = re.compile(r"os error (\d+)")


def describe(err: BaseException) -> str:
    """A short cause for an I/O error: 'disk full ...', 'read-only file system', ..."""
    code = getattr(err, "errno", None)
    if code is None:
        found = _RUST_OS_ERROR.search(str(err))
        code = int(found.group(1)) if found else None
    if code in _CAUSES:
        return _CAUSES[code]
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def is_io_error(err: BaseException) -> bool:
    """OSError, or safetensors' own error type when it wraps an OS error."""
    if isinstance(err, OSError):
        return True
    return type(err).__name__ == "SafetensorError" and _RUST_OS_ERROR.search(str(err)) is not None


@contextlib.contextmanager
def io_errors(path: Path | str, action: str = "write") -> Iterator[None]:
    """Turn an I/O failure inside the block into one StorageError line naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        if not is_io_error(err):
            raise
        where = getattr(err, "filename", None) or path
        raise StorageError(f"{where}: cannot {action}: {describe(err)}") from err


class TooDeepError(ValueError):
    """JSON nested deeper than Python's parser recurses (a file of 100,000 ``[``)."""


def loads_json(text: str | bytes) -> object:
    """``json.loads`` for files a user can hand Lepton: nesting too deep for the parser is a
    ValueError like any other malformed JSON, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeepError("JSON nested too deeply") from None


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; nothing more can be done there
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first), under ``root``."""
    folders = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        folders.extend(Path(dirpath) / d for d in dirnames)
    for folder in reversed(folders):
        fsync_dir(folder)


def _tmp_name(dest: Path, kind: str) -> Path:
    # The pid lets a later writer tell a dead process's leftover from a live writer's folder.
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    write_file(path, lambda tmp: tmp.write_bytes(data))


def write_file(path: Path, fill: Callable[[Path], None]) -> Path:
    """``fill(tmp)`` writes a file beside ``path``; when it returns, the file is synced and moved to
    ``path`` (a crash or error leaves ``path`` as it was and no temporary file behind)."""
    path = Path(path)
    tmp = _tmp_name(path, "tmp")
    with io_errors(path):
        try:
            fill(tmp)
            fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(path.parent)
    return path


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def cleanup_leftovers(dest: Path) -> list[Path]:
    """Remove temp folders of ``dest`` left by killed writers; put back an old ``dest`` that a
    crash between the two renames of a swap left aside. Returns what was removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    removed, olds = [], []
    for entry in dest.parent.iterdir():
        m = _LEFTOVER.match(entry.name)
        if not m or m.group("name") != dest.name:
            continue
        pid = m.group("pid")
        if pid is not None and _pid_alive(int(pid)):
            continue  # a writer that is still running
        if m.group("kind") == "old":
            olds.append(entry)
        else:
            removed.append(entry)
    if olds and not dest.exists():
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, dest)
        log.warning("%s: restored from %s (an interrupted replace had moved it aside)", dest, newest.name)
        olds.remove(newest)
    for entry in removed + olds:
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", entry)
    return removed + olds


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing any folder already there; if the
    second rename fails, the old folder is put back."""
    if dest.exists():
        old = _tmp_name(dest, "old")
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        fsync_dir(dest.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
        fsync_dir(dest.parent)


def write_folder(dest: Path, fill: Callable[[Path], None]) -> Path:
    """``fill`` a fresh temp folder beside ``dest``, fsync it, then swap it in; on any error remove
    it and leave ``dest`` as it was (I/O failures become a StorageError naming ``dest``)."""
    dest = Path(dest)
    with io_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        cleanup_leftovers(dest)
        # Not tempfile.mkdtemp: its 0700 would leave a shipped folder unreadable to other users.
        tmp = _tmp_name(dest, "tmp")
        tmp.mkdir()
        try:
            fill(tmp)
            fsync_tree(tmp)
            swap_into_place(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest
