"""Sources other than HTTP: a JSONL file replayed with its timestamps, a file followed as it
grows, and standard input. Each runs in its own thread and feeds the engine.

File sources store their byte offset in the same transaction as the items read up to it, and key
each line by its byte offset, so a restart resumes exactly where the last commit ended: nothing
acknowledged is read twice, nothing read is skipped. A malformed line is logged with its file and
line number, counted in ``lepton_monitor_bad_items`` and skipped; it never stops the stream.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lepton.monitor.config import MonitorConfigError
from lepton.monitor.engine import Monitor, RawItem, StoppedError
from lepton.monitor.items import BadItemError, item_model, parse_line
from lepton.monitor.store import Offset

log = logging.getLogger(__name__)

KINDS = ("http", "replay", "follow", "stdin")


@dataclass
class SourceSpec:
    kind: str  # "replay" | "follow" | "stdin" ("http" is the server, always on with it)
    path: Path | None = None


def parse_source(spec: str) -> SourceSpec:
    """``http``, ``stdin`` (or ``-``), ``replay:FILE.jsonl``, ``follow:FILE.jsonl``."""
    kind, _, path = spec.partition(":")
    if spec == "-":
        kind = "stdin"
    if kind not in KINDS:
        from lepton.core.registry import suggest

        raise MonitorConfigError(f"--source {spec!r}: unknown kind {kind!r}{suggest(kind, KINDS)} "
                                 "(http, stdin, replay:FILE, follow:FILE)")
    if kind in ("replay", "follow"):
        if not path:
            raise MonitorConfigError(f"--source {spec!r}: give the file, e.g. {kind}:stream.jsonl")
        p = Path(path).expanduser()
        if (kind == "replay" or p.exists()) and not p.is_file():
            raise MonitorConfigError(f"--source {spec!r}: {p} is not a file")
        if p.exists() and not os.access(p, os.R_OK):
            raise MonitorConfigError(f"--source {spec!r}: {p} is not readable (permission denied)")
        return SourceSpec(kind, p.resolve())
    if path:
        raise MonitorConfigError(f"--source {spec!r}: {kind} takes no file")
    return SourceSpec(kind)


class FileSource:
    """Replay (``follow=False``: paced by the items' timestamps, ``speed`` times faster than real
    time, 0 = as fast as the model goes; ends at the end of the file) or follow (waits at the end
    of the file for more lines, as ``tail -f``; restarts from the top when the file shrinks)."""

    def __init__(self, monitor: Monitor, path: Path, *, follow: bool, speed: float = 0.0,
                 poll_s: float = 0.2) -> None:
        self.monitor = monitor
        self.path = path
        self.follow = follow
        self.speed = speed
        self.poll_s = poll_s
        self.name = f"{'follow' if follow else 'replay'}:{path}"
        self.stop = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.read = 0  # items handed to the engine by this run
        self._model = item_model(monitor.cfg.ingest.max_chars)

    def run(self) -> None:
        try:
            self._run()
        except StoppedError:
            pass
        except BaseException as err:  # noqa: BLE001 - reported by whoever waits on the source
            self.error = err
            log.error("source %s stopped: %s", self.name, err)
        finally:
            self.done.set()

    def _wait_for_file(self) -> bool:
        while not self.path.exists():
            if not self.follow or self.stop.wait(self.poll_s):
                return False
        return True

    def _run(self) -> None:
        if not self._wait_for_file():
            raise MonitorConfigError(f"{self.path}: not found")
        stored = self.monitor.store.offset(self.name)
        offset, generation = (stored.byte_offset, stored.generation) if stored else (0, 0)
        if offset:
            log.info("%s: resuming at byte %d (stored offset)", self.name, offset)
        line_no = None  # unknown after a resume; messages then give the byte offset
        clock: tuple[float, float] | None = None  # (first item's time, wall time it was sent)
        batch_size = self.monitor.cfg.ingest.max_batch
        while not self.stop.is_set():
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < offset:
                    generation += 1
                    log.warning("%s: the file shrank below the stored offset %d; reading it from the top "
                                "as a new file", self.name, offset)
                    offset, line_no = 0, 1
                if offset == 0:
                    line_no = 1
                fh.seek(offset)
                offset, line_no, clock, ended = self._read(fh, offset, generation, line_no, clock, batch_size)
            if ended and not self.follow:
                log.info("%s: end of file (%d items this run)", self.name, self.read)
                return
            if ended:
                self.stop.wait(self.poll_s)

    def _read(self, fh: IO[bytes], offset: int, generation: int, line_no: int | None,
              clock: tuple[float, float] | None, batch_size: int):
        """Read and submit complete lines until the end of the file; returns the new state. A
        replayed file's last line counts without its newline; a followed file's waits for it
        (it may still be being written)."""
        channel = self.name.split(":")[0]
        max_line = self.monitor.cfg.ingest.max_body_bytes
        while not self.stop.is_set():
            items: list[RawItem] = []
            end = offset
            while len(items) < batch_size:
                line = fh.readline(max_line + 1)
                where = f"{self.path}:{line_no}" if line_no else f"{self.path}@byte{end}"
                if len(line) > max_line and not line.endswith(b"\n"):
                    skipped = self._skip_long_line(fh, where, channel, max_line)
                    if skipped is None:  # a followed file: its end is not written yet
                        fh.seek(end)
                        break
                    end += len(line) + skipped
                    line_no = line_no + 1 if line_no else None
                    continue
                if not line or (self.follow and not line.endswith(b"\n")):  # end of file, or a line
                    fh.seek(end)                                                # still being written
                    break
                key = f"{self.name}:{generation}:{end}"
                if not line.strip():
                    end += len(line)
                    line_no = line_no + 1 if line_no else None
                    continue
                try:
                    item = parse_line(line, where, self._model)
                except BadItemError as err:
                    self._bad(channel, f"skipped: {err}")
                    end += len(line)
                    line_no = line_no + 1 if line_no else None
                    continue
                problem = self.monitor.timestamp_problem(item.timestamp)
                if problem is not None:  # never paced to, never stored, never moves the watermark
                    self.monitor.refused(channel, where, problem)
                    end += len(line)
                    line_no = line_no + 1 if line_no else None
                    continue
                if self.speed > 0 and item.timestamp is not None:
                    clock, later = self._pace(item.timestamp, clock, holding=bool(items))
                    if later:  # send what is due now; this line is read again next time
                        fh.seek(end)
                        break
                end += len(line)
                line_no = line_no + 1 if line_no else None
                source = item.source if item.source != "http" else channel
                items.append(RawItem(text=item.text, ts=item.timestamp, item_id=item.id, source=source, key=key,
                                     channel=channel))
            if end == offset:
                return offset, line_no, clock, True
            # One job in flight: its offset is committed before the next is read, in order (a job of
            # skipped lines only stores how far they reach).
            self.monitor.submit(items, [Offset(self.name, end, generation)], block=True).result()
            self.read += len(items)
            offset = end
        return offset, line_no, clock, False

    def _bad(self, channel: str, message: str) -> None:
        log.warning("%s", message)
        self.monitor.metrics.bad_items.labels(channel=channel).inc()

    def _skip_long_line(self, fh: IO[bytes], where: str, channel: str, max_line: int) -> int | None:
        """Skip (log, count) the rest of a line over ``max_line`` bytes: the bytes skipped; None
        in a followed file whose line has no newline yet (read it again later)."""
        skipped, whole = self._skip_line(fh)
        if not whole and self.follow:
            return None
        self._bad(channel, f"skipped: {where}: a line over ingest.max_body_bytes ({max_line} bytes)")
        return skipped

    def _pace(self, ts: float, clock: tuple[float, float] | None,
              holding: bool) -> tuple[tuple[float, float], bool]:
        """Replay at ``speed``: (the clock, True when the item stamped ``ts`` is not due yet and
        the items ``holding`` should go first). Holding none, waits until it is due."""
        if clock is None:
            clock = (ts, time.time())
        due = clock[1] + (ts - clock[0]) / self.speed
        if due > time.time():
            if holding:
                return clock, True
            self.stop.wait(due - time.time())
        return clock, False

    @staticmethod
    def _skip_line(fh: IO[bytes], chunk: int = 1 << 20) -> tuple[int, bool]:
        """Read past the rest of an over-long line: (bytes skipped, whether its newline came)."""
        skipped = 0
        while True:
            part = fh.readline(chunk)
            skipped += len(part)
            if part.endswith(b"\n"):
                return skipped, True
            if len(part) < chunk:
                return skipped, False


class StdinSource:
    """Lines from standard input (JSON objects, or plain text lines); each line is sent as its own
    job and the engine batches them. There is no offset to resume from: only lines with an ``id``
    are protected from being counted twice when they are sent again."""

    name = "stdin"

    def __init__(self, monitor: Monitor, stream: IO[str] | None = None) -> None:
        self.monitor = monitor
        self.stream = stream or sys.stdin
        self.stop = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.read = 0
        self._model = item_model(monitor.cfg.ingest.max_chars)

    def run(self) -> None:
        futures = []
        try:
            for n, line in enumerate(self.stream, 1):
                if self.stop.is_set():
                    break
                if not line.strip():
                    continue
                if line.lstrip().startswith("{"):
                    try:
                        item = parse_line(line.encode(), f"<stdin>:{n}", self._model)
                    except BadItemError as err:
                        log.warning("skipped: %s", err)
                        self.monitor.metrics.bad_items.labels(channel="stdin").inc()
                        continue
                    problem = self.monitor.timestamp_problem(item.timestamp)
                    if problem is not None:
                        self.monitor.refused("stdin", f"<stdin>:{n}", problem)
                        continue
                    raw = RawItem(text=item.text, ts=item.timestamp, item_id=item.id,
                                  source=item.source if item.source != "http" else "stdin", channel="stdin")
                else:
                    raw = RawItem(text=line.rstrip("\n")[: self.monitor.cfg.ingest.max_chars], source="stdin",
                                  channel="stdin")
                futures.append(self.monitor.submit([raw], block=True))
                self.read += 1
                futures = [f for f in futures if not f.done()]
            for f in futures:
                f.result()
        except StoppedError:
            pass
        except BaseException as err:  # noqa: BLE001
            self.error = err
            log.error("source stdin stopped: %s", err)
        finally:
            self.done.set()


def start_sources(monitor: Monitor, specs: list[SourceSpec], speed: float) -> list:
    """Start a thread per non-HTTP source; returns the source objects (``done``, ``error``)."""
    sources = []
    for spec in specs:
        if spec.kind == "http":
            continue
        if spec.kind == "stdin":
            src = StdinSource(monitor)
        else:
            src = FileSource(monitor, spec.path, follow=spec.kind == "follow", speed=speed)
        threading.Thread(target=src.run, name=f"lepton-monitor-{spec.kind}", daemon=True).start()
        sources.append(src)
    return sources
