"""The monitor on PostgreSQL: the same engine, the same SQL, a real server.

The server: ``LEPTON_TEST_POSTGRES_URL`` (a database the test may fill and empty) if set; else,
running as root where Debian's PostgreSQL tools are installed, the local cluster is started
(``pg_ctlcluster``), a login role ``lepton_test`` made and a fresh database created (and dropped
afterwards). Skipped, saying why, where neither works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("scipy")

from tests.monitor_fakes import synthetic_items
from tests.test_monitor_engine import SURGE, feed, make_monitor

pytestmark = pytest.mark.timeout(180)

ROLE = "lepton_test"


def _as_postgres(sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                          capture_output=True, text=True, timeout=60)


def _local_cluster() -> str:
    """Start the local cluster and make a fresh database; returns its URL (or skips)."""
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or not shutil.which("runuser"):
        pytest.skip("no PostgreSQL server: set LEPTON_TEST_POSTGRES_URL, or run as root where Debian's "
                    "postgresql package is installed")
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.split()
    if len(listing) < 3:
        pytest.skip("PostgreSQL is installed but has no cluster (pg_createcluster 15 main)")
    version, name, port = listing[0], listing[1], listing[2]
    started = subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True, text=True)
    if started.returncode not in (0, 2):  # 2: already running
        pytest.skip(f"cannot start PostgreSQL {version}/{name}: {started.stderr.strip()[:300]}")
    made = _as_postgres(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
                        f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE}'; END IF; END $$;")
    if made.returncode != 0:
        pytest.skip(f"cannot create a PostgreSQL role: {made.stderr.strip()[:300]}")
    db = f"lepton_monitor_{uuid.uuid4().hex[:8]}"
    created = _as_postgres(f"CREATE DATABASE {db} OWNER {ROLE}")
    if created.returncode != 0:
        pytest.skip(f"cannot create a PostgreSQL database: {created.stderr.strip()[:300]}")
    return f"postgresql://{ROLE}:{ROLE}@127.0.0.1:{port}/{db}"


@pytest.fixture()
def postgres_url():
    url = os.environ.get("LEPTON_TEST_POSTGRES_URL")
    made = url is None
    if made:
        url = _local_cluster()
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("DROP TABLE IF EXISTS items, windows, alerts, outbox, offsets, drift_windows")
    except psycopg.Error as err:
        pytest.skip(f"cannot connect to PostgreSQL at {url.split('@')[-1]}: {err}")
    yield url
    if made:
        _as_postgres(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


def test_postgres_store_runs_the_monitor_end_to_end(tmp_path: Path, postgres_url: str) -> None:
    items = synthetic_items(4000, surge=SURGE)
    first = make_monitor(tmp_path, url=postgres_url)
    assert first.store.postgres
    feed(first, items[:2520])  # the surge has begun: an alert is open
    first.stop()
    assert [a["status"] for a in first.store.alerts()] == ["open"]
    first.store.close()

    second = make_monitor(tmp_path, url=postgres_url)  # a restart on the same database
    assert second.detectors["business"].in_episode
    results = feed(second, items[2400:])  # 120 items sent again: stored once
    second.stop()
    store = second.store
    assert sum(r.duplicates for r in results) == 120
    assert store.count_items() == 4000
    assert store.query("SELECT SUM(n) FROM windows")[0][0] == 4000
    alerts = store.alerts()
    assert len(alerts) == 1 and alerts[0]["status"] == "closed" and alerts[0]["topic"] == "business"
    top = store.alert_items(alerts[0]["id"], 5)
    assert len(top) == 5 and all(i["sentiment"] == "negative" for i in top)
    store.close()


def test_postgres_store_keeps_the_drift_windows(tmp_path: Path, postgres_url: str, tiny_model_dir: Path) -> None:
    from lepton.models import load_tokenizer
    from tests.test_monitor_drift import BASE, WIDTH, DriftClassifier, reference_of, shifted_stream, texts

    tokenizer = load_tokenizer(str(tiny_model_dir))
    classifier = DriftClassifier(reference_of(tokenizer, texts(300, seed=99)), tokenizer)
    stream = shifted_stream()
    first = make_monitor(tmp_path, classifier, url=postgres_url, window={"width_s": WIDTH})
    feed(first, stream[:200])
    first.stop()
    before = first.store.drift_windows()
    assert [w["start"] for w in before] == [BASE + 2 * WIDTH, BASE + WIDTH, BASE]
    first.store.close()

    second = make_monitor(tmp_path, classifier, url=postgres_url, window={"width_s": WIDTH})
    feed(second, stream[200:])
    second.stop()
    after = second.store.drift_windows()
    assert after[2:] == before and [w["drift"] for w in after] == [False, True, False, False, False]
    assert {"input_length", "tokens"} <= {t["name"] for t in after[1]["tests"] if t["flagged"]}
    second.store.close()
