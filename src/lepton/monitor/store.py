"""Storage: every item with its predictions, every window aggregate, every alert, the webhook
outbox and the file sources' offsets, in SQLite (WAL, the default) or PostgreSQL.

The SQL is written once for both (``?`` placeholders, rewritten to ``%s`` for psycopg; both
databases take ``INSERT ... ON CONFLICT``). Each thread gets its own connection. A batch of items,
its window counts and its source's offset go in one transaction, so after a crash either all of
them are there or none: an acknowledged item is never lost, and an item is never counted twice
(items with an id, and file lines by their byte offset, have a unique key).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton.core.errors import LeptonError, MissingExtraError

log = logging.getLogger(__name__)


class StoreError(LeptonError):
    """The database cannot be opened or used (the message names it)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq {serial},
    item_key TEXT UNIQUE,
    item_id TEXT,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    topic TEXT NOT NULL,
    topic_score DOUBLE PRECISION NOT NULL,
    sentiment TEXT NOT NULL,
    sentiment_score DOUBLE PRECISION NOT NULL,
    negative_score DOUBLE PRECISION NOT NULL,
    negative INTEGER NOT NULL,
    scores TEXT NOT NULL,
    wstart DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS items_window ON items (topic, wstart, negative_score);
CREATE TABLE IF NOT EXISTS windows (
    topic TEXT NOT NULL,
    wstart DOUBLE PRECISION NOT NULL,
    n INTEGER NOT NULL,
    negative INTEGER NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    baseline_n INTEGER,
    baseline_negative INTEGER,
    p_value DOUBLE PRECISION,
    fired INTEGER NOT NULL DEFAULT 0,
    alert_id BIGINT,
    PRIMARY KEY (topic, wstart)
);
CREATE TABLE IF NOT EXISTS alerts (
    id {serial},
    topic TEXT NOT NULL,
    status TEXT NOT NULL,
    first_start DOUBLE PRECISION NOT NULL,
    last_fired DOUBLE PRECISION NOT NULL,
    closed_at DOUBLE PRECISION,
    windows INTEGER NOT NULL,
    n INTEGER NOT NULL,
    negative INTEGER NOT NULL,
    peak_share DOUBLE PRECISION NOT NULL,
    min_p DOUBLE PRECISION NOT NULL,
    baseline_share DOUBLE PRECISION,
    opened_wall DOUBLE PRECISION NOT NULL,
    updated_wall DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id {serial},
    alert_id BIGINT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    delivered_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS drift_windows (
    wstart DOUBLE PRECISION PRIMARY KEY,
    wend DOUBLE PRECISION NOT NULL,
    head TEXT NOT NULL,
    n INTEGER NOT NULL,
    tested INTEGER NOT NULL,
    drift INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    result TEXT NOT NULL,
    checked_wall DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    source TEXT PRIMARY KEY,
    byte_offset BIGINT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL
);
"""


def _schema_columns() -> dict[str, list[str]]:
    """Each table's columns, read from the schema above."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in _SCHEMA.splitlines():
        words = line.split()
        if line.startswith("CREATE TABLE"):
            current = tables.setdefault(words[5], [])
        elif line.startswith("    ") and current is not None and words[0] != "PRIMARY":
            current.append(words[0])
        elif line.startswith(")"):
            current = None
    return tables


_COLUMNS = _schema_columns()


@dataclass
class NewItem:
    """An item to store: what came in and what the models said about it."""

    key: str | None  # unique key (source + id, or file + byte offset); None: never deduplicated
    item_id: str | None
    source: str
    text: str
    ts: float
    received_at: float
    topic: str
    topic_score: float
    sentiment: str
    sentiment_score: float
    negative_score: float
    negative: bool
    scores: dict[str, float]
    wstart: float


@dataclass
class Offset:
    source: str
    byte_offset: int
    generation: int = 0


class Store:
    """One database; ``url``: ``sqlite:///path`` or ``postgresql://...``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        if not self.postgres:
            self.path = Path(url[len("sqlite:///"):])
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.transaction() as cur:
                serial = "BIGSERIAL PRIMARY KEY" if self.postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
                for statement in _SCHEMA.format(serial=serial).split(";"):
                    if statement.strip():
                        cur.execute(statement)
            for table, columns in _COLUMNS.items():  # a database of someone else's with these names
                self.query(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0")
        except StoreError:
            self.close()
            raise
        except Exception as err:  # noqa: BLE001 - sqlite3 or psycopg: not a monitor database
            self.close()
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StoreError(f"store {self.where}: not a Lepton monitor database, or not usable ({cause})") from None

    @property
    def where(self) -> str:
        """The database for messages, without a password."""
        if not self.postgres:
            return str(self.path)
        head, _, tail = self.url.partition("@")
        return (head.split(":")[0] + ":" + head.split(":")[1] + "@" + tail) if tail else self.url

    # ------------------------------------------------------------------ connections

    def _connect(self) -> Any:
        if self.postgres:
            try:
                import psycopg
            except ImportError as err:
                raise MissingExtraError("psycopg is needed for a PostgreSQL store: "
                                        "pip install 'lepton[monitor]'") from err
            try:
                return psycopg.connect(self.url, autocommit=False)
            except psycopg.Error as err:
                cause = " ".join(str(err).split()) or type(err).__name__  # one line
                raise StoreError(f"store {self.where}: cannot connect ({cause})") from None
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL would be faster, but a power cut could then lose the last commits: an
            # acknowledged item must survive, so every commit is synced.
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        except sqlite3.Error as err:
            raise StoreError(f"store {self.path}: cannot open ({err})") from None

    def connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing on shutdown, another thread's
                    pass
            self._all.clear()
        self._local = threading.local()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction: committed on success, rolled back on any error."""
        conn = self.connection()
        cur = _Cursor(conn.cursor(), self._sql)
        if not self.postgres:
            cur.execute("BEGIN IMMEDIATE")  # take the write lock now, not half-way through
        try:
            yield cur
        except BaseException:
            conn.rollback() if self.postgres else cur.execute("ROLLBACK")
            raise
        else:
            conn.commit() if self.postgres else cur.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        conn = self.connection()
        cur = conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        rows = cur.fetchall()
        if self.postgres:
            conn.commit()  # end the read transaction, so the next read sees new commits
        return [tuple(r) for r in rows]

    # ------------------------------------------------------------------ writes

    def add_items(self, items: Sequence[NewItem], offsets: Sequence[Offset] = ()) -> list[bool]:
        """Store items, add them to their windows and move the sources' offsets, atomically.
        Returns per item whether it was new (False: its key was stored before; not counted)."""
        now = time.time()
        new: list[bool] = []
        counts: dict[tuple[str, float], list[int]] = {}
        with self.transaction() as cur:
            for it in items:
                cur.execute(
                    "INSERT INTO items (item_key, item_id, source, text, ts, received_at, stored_at, topic, "
                    "topic_score, sentiment, sentiment_score, negative_score, negative, scores, wstart) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (item_key) DO NOTHING",
                    (it.key, it.item_id, it.source, it.text, it.ts, it.received_at, now, it.topic,
                     it.topic_score, it.sentiment, it.sentiment_score, it.negative_score, int(it.negative),
                     json.dumps(it.scores), it.wstart))
                fresh = cur.rowcount == 1
                new.append(fresh)
                if fresh:
                    c = counts.setdefault((it.topic, it.wstart), [0, 0])
                    c[0] += 1
                    c[1] += int(it.negative)
            for (topic, wstart), (n, k) in counts.items():
                cur.execute("INSERT INTO windows (topic, wstart, n, negative) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (topic, wstart) DO UPDATE SET n = windows.n + excluded.n, "
                            "negative = windows.negative + excluded.negative", (topic, wstart, n, k))
            for off in offsets:
                cur.execute("INSERT INTO offsets (source, byte_offset, generation, updated_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (source) DO UPDATE SET byte_offset = excluded.byte_offset, "
                            "generation = excluded.generation, updated_at = excluded.updated_at",
                            (off.source, off.byte_offset, off.generation, now))
        return new

    def offset(self, source: str) -> Offset | None:
        rows = self.query("SELECT byte_offset, generation FROM offsets WHERE source = ?", (source,))
        return Offset(source, int(rows[0][0]), int(rows[0][1])) if rows else None

    # ------------------------------------------------------------------ reads

    def open_windows(self) -> list[tuple[str, float, int, int]]:
        return [(r[0], float(r[1]), int(r[2]), int(r[3])) for r in self.query(
            "SELECT topic, wstart, n, negative FROM windows WHERE closed = 0 ORDER BY wstart, topic")]

    def max_ts(self) -> float | None:
        rows = self.query("SELECT MAX(ts) FROM items")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def count_items(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM items")[0][0])

    def counted(self) -> int:
        """Items counted in windows (every stored item, once): cheaper than counting the items."""
        rows = self.query("SELECT SUM(n) FROM windows")
        return int(rows[0][0] or 0)

    def topics(self) -> list[str]:
        return [r[0] for r in self.query("SELECT DISTINCT topic FROM windows ORDER BY topic")]

    def series(self, since: float | None = None, limit: int = 2000) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT topic, wstart, n, negative, closed, p_value, fired, alert_id, baseline_n, baseline_negative "
            "FROM windows WHERE wstart >= ? ORDER BY wstart DESC LIMIT ?",
            (since if since is not None else -1e18, limit))
        keys = ("topic", "start", "n", "negative", "closed", "p_value", "fired", "alert_id",
                "baseline_n", "baseline_negative")
        return [dict(zip(keys, r)) for r in reversed(rows)]

    _ALERT_COLUMNS = ("id", "topic", "status", "first_start", "last_fired", "closed_at", "windows", "n",
                      "negative", "peak_share", "min_p", "baseline_share", "opened_wall", "updated_wall")

    def alerts(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.query(f"SELECT {', '.join(self._ALERT_COLUMNS)} FROM alerts ORDER BY id DESC LIMIT ?",
                          (limit,))
        return [dict(zip(self._ALERT_COLUMNS, r)) for r in rows]

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        rows = self.query(f"SELECT {', '.join(self._ALERT_COLUMNS)} FROM alerts WHERE id = ?", (alert_id,))
        return dict(zip(self._ALERT_COLUMNS, rows[0])) if rows else None

    def alert_items(self, alert_id: int, limit: int) -> list[dict[str, Any]]:
        """The most negative items of the windows that fired in this alert: what drove it."""
        rows = self.query(
            "SELECT i.item_id, i.source, i.text, i.ts, i.sentiment, i.sentiment_score, i.negative_score, "
            "i.topic_score FROM items i JOIN windows w ON w.topic = i.topic AND w.wstart = i.wstart "
            "WHERE w.alert_id = ? AND w.fired = 1 ORDER BY i.negative_score DESC, i.seq LIMIT ?",
            (alert_id, limit))
        keys = ("id", "source", "text", "ts", "sentiment", "sentiment_score", "negative_score", "topic_score")
        return [dict(zip(keys, r)) for r in rows]


    # The stored label and score of each head the drift check can describe (fixed names, never input).
    _HEAD_COLUMNS = {"sentiment": ("sentiment", "sentiment_score"), "topic": ("topic", "topic_score")}

    def window_items(self, start: float, head: str) -> tuple[list[str], list[str], list[float]]:
        """The texts, ``head``'s predicted labels and their scores (the top probability) of every
        item stored in the time window starting at ``start``, across all topics, in arrival order."""
        label, score = self._HEAD_COLUMNS[head]
        rows = self.query(  # per topic through the (topic, wstart) index
            f"SELECT text, {label}, {score} FROM items WHERE wstart = ? AND topic IN "
            "(SELECT topic FROM windows WHERE wstart = ?) ORDER BY seq", (start, start))
        return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]

    _DRIFT_COLUMNS = ("wstart", "wend", "head", "n", "tested", "drift", "verdict", "result", "checked_wall")

    def drift_windows(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest drift-checked windows, newest first: start, end, head, items, whether it was
        tested, drift, the verdict, the reasons, every test and the skipped ones."""
        rows = self.query(f"SELECT {', '.join(self._DRIFT_COLUMNS)} FROM drift_windows ORDER BY wstart DESC "
                          "LIMIT ?", (limit,))
        out = []
        for r in rows:
            row = dict(zip(self._DRIFT_COLUMNS, r))
            result = json.loads(row.pop("result"))
            out.append({"start": row["wstart"], "end": row["wend"], "head": row["head"], "n": row["n"],
                        "tested": bool(row["tested"]), "drift": bool(row["drift"]), "verdict": row["verdict"],
                        "reasons": result.get("reasons", []), "alpha": result.get("alpha"),
                        "tests": result.get("tests", []), "skipped": result.get("skipped", {}),
                        "checked_at": row["checked_wall"]})
        return out


class _Cursor:
    """A DB-API cursor that rewrites ``?`` placeholders for the database at hand."""

    def __init__(self, cur: Any, sql: Any) -> None:
        self._cur, self._sql = cur, sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(self._sql(sql), tuple(params))

    def fetchall(self) -> list[tuple]:
        return self._cur.fetchall()

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


def store_url(url: str | None, output: Path) -> str:
    """The configured URL, or SQLite in the output folder."""
    return url if url else f"sqlite:///{(output / 'monitor.db').resolve()}"


def _episode_row(ep: Any) -> tuple:
    return (ep.last_fired, ep.closed_at, ep.windows, ep.n, ep.negative, ep.peak_share, ep.min_p)


def apply_closures(store: Store, steps: Sequence[tuple], webhook: bool) -> None:
    """Persist, in one transaction and in order, what a close pass decided: ``("event", Event)``
    (an alert opened, updated or closed; with ``webhook`` also queued for delivery) and
    ``("window", topic, start, WindowTest, Episode | None)`` (a window closed; the episode it
    belongs to, if any) and ``("drift", start, end, head, result dict)`` (a time window's drift
    check, stored with its topic windows: after a crash both are there or neither). An episode gets
    its id when its "opened" event is stored."""
    now = time.time()
    with store.transaction() as cur:
        for step in steps:
            if step[0] == "drift":
                _, start, end, head, result = step
                store_drift(cur, start, end, head, result, now)
                continue
            if step[0] == "window":
                _, topic, start, test, episode = step
                cur.execute("UPDATE windows SET closed = 1, baseline_n = ?, baseline_negative = ?, p_value = ?, "
                            "fired = ?, alert_id = ? WHERE topic = ? AND wstart = ?",
                            (test.baseline_n, test.baseline_negative, test.p_value, int(test.fired),
                             episode.id if episode is not None else None, topic, start))
                continue
            event = step[1]
            ep = event.episode
            if event.kind == "opened":
                cur.execute("INSERT INTO alerts (topic, status, first_start, last_fired, closed_at, windows, n, "
                            "negative, peak_share, min_p, baseline_share, opened_wall, updated_wall) "
                            "VALUES (?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                            (ep.topic, ep.first_start, *_episode_row(ep), ep.baseline_share, now, now))
                ep.id = int(cur.fetchone()[0])
            else:
                cur.execute("UPDATE alerts SET status = ?, last_fired = ?, closed_at = ?, windows = ?, n = ?, "
                            "negative = ?, peak_share = ?, min_p = ?, updated_wall = ? WHERE id = ?",
                            ("closed" if event.kind == "closed" else "open", *_episode_row(ep), now, ep.id))
            if webhook:
                payload = {"event": event.kind, "alert": {**ep.as_dict(), "status": "closed" if event.kind ==
                                                          "closed" else "open"}, "window": event.window}
                cur.execute("INSERT INTO outbox (alert_id, event, payload, next_at) VALUES (?, ?, ?, ?)",
                            (ep.id, event.kind, json.dumps(payload), now))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float made None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def store_drift(cur: Any, start: float, end: float, head: str, result: dict[str, Any], now: float) -> None:
    """One window's drift result (``DriftResult.to_dict()``); a window stored before stays as it was."""
    cur.execute("INSERT INTO drift_windows (wstart, wend, head, n, tested, drift, verdict, result, checked_wall) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (wstart) DO NOTHING",
                (start, end, head, int(result["n_new"]), int(bool(result["tests"])), int(bool(result["drift"])),
                 str(result["verdict"]), json.dumps(_finite(result)), now))


def restore_detectors(store: Store, cfg: Any, width: float) -> dict[str, Any]:
    """Each topic's detector as the database left it: its baseline windows and open episode."""
    from lepton.monitor.surge import Episode, TopicDetector

    detectors = {}
    for topic in store.topics():
        rows = store.query("SELECT wstart, n, negative FROM windows WHERE topic = ? AND closed = 1 AND "
                           "alert_id IS NULL ORDER BY wstart DESC LIMIT ?", (topic, cfg.baseline_windows))
        detectors[topic] = TopicDetector(topic, cfg, width,
                                         baseline=[(float(s), int(n), int(k)) for s, n, k in reversed(rows)])
    for a in store.alerts(limit=10_000):
        if a["status"] == "open" and a["topic"] in detectors:
            detectors[a["topic"]].episode = Episode(
                topic=a["topic"], first_start=a["first_start"], last_fired=a["last_fired"], windows=a["windows"],
                n=a["n"], negative=a["negative"], peak_share=a["peak_share"], min_p=a["min_p"],
                baseline_share=a["baseline_share"], id=a["id"])
    return detectors
