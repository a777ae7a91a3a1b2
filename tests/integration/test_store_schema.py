"""The database's schema version on real SQLite files: a file from before versioning (poll-rate
rows keyed device first) is upgraded in place with every row kept, also after an upgrade killed
half-way; a current file opens unchanged; a newer one is refused, named, and left as it was."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.platform.store import SCHEMA_VERSION, NewerDatabase, Store
from tests.conftest import site_config
from tests.helpers import dr_agent, write_config

pytestmark = pytest.mark.integration

#: The schema as it was before the disk budget (git show 348de03^:agent/store.py): `readings`
#: keyed (device, ts), no user_version, and the first release's columns only.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS readings(
    device TEXT NOT NULL, ts REAL NOT NULL, kw REAL NOT NULL,
    PRIMARY KEY(device, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings_1m(
    device TEXT NOT NULL, minute INTEGER NOT NULL,
    kw_sum REAL NOT NULL, n INTEGER NOT NULL, kw_min REAL, kw_max REAL,
    PRIMARY KEY(device, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings_15m(
    device TEXT NOT NULL, quarter INTEGER NOT NULL,
    kw_sum REAL NOT NULL, n INTEGER NOT NULL, kw_min REAL, kw_max REAL,
    PRIMARY KEY(device, quarter)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
    event_id TEXT PRIMARY KEY, modification_number INTEGER NOT NULL, payload TEXT NOT NULL,
    state TEXT NOT NULL, opt TEXT, code TEXT, reason TEXT,
    effective_start REAL, received_ts REAL NOT NULL, updated_ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS journal(
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, role TEXT NOT NULL,
    original REAL, written REAL, ts REAL NOT NULL, event_id TEXT, step TEXT,
    restored_ts REAL, restore_note TEXT);
CREATE INDEX IF NOT EXISTS journal_open ON journal(restored_ts) WHERE restored_ts IS NULL;
CREATE TABLE IF NOT EXISTS settlements(event_id TEXT PRIMARY KEY, ts REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_ts REAL NOT NULL, sent_ts REAL);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(seq) WHERE sent_ts IS NULL;
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, event_id TEXT, device TEXT, what TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces(nonce TEXT PRIMARY KEY, ts REAL NOT NULL) WITHOUT ROWID;
"""

T0 = 1_700_000_000.0
DEVICES = ("chiller-1", "main-meter", "pump-2")
TABLES = ("readings", "readings_1m", "readings_15m", "events", "journal", "settlements", "outbox", "meta")


def old_database(path: Path) -> None:
    """A database as the release before versioning left it, WAL and all, with rows in every table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO readings VALUES (?,?,?)",
        [(d, T0 + t, i * 100 + t * 0.5) for t in range(3000) for i, d in enumerate(DEVICES)],
    )
    db.executemany(
        "INSERT INTO readings_1m VALUES (?,?,?,?,?,?)",
        [(d, int(T0 // 60) + m, 60.0 * m, 60, m - 1.0, m + 1.0) for m in range(50) for d in DEVICES],
    )
    db.execute("INSERT INTO readings_15m VALUES ('main-meter', ?, 900.0, 900, 0.5, 1.5)", (int(T0 // 900),))
    db.execute(
        "INSERT INTO events VALUES ('e-1', 0, '{}', 'completed', 'in', NULL, NULL, ?, ?, ?)", (T0, T0, T0)
    )
    db.execute(
        "INSERT INTO journal(device, role, original, written, ts) VALUES ('chiller-1', 'setpoint_c', 24, 26, ?)",
        (T0,),
    )
    db.execute("INSERT INTO settlements VALUES ('e-1', ?, '{\"event_id\": \"e-1\"}')", (T0,))
    db.execute(
        "INSERT INTO outbox(topic, payload, qos, retain, created_ts) VALUES ('t', '{}', 1, 0, ?)", (T0,)
    )
    db.execute("INSERT INTO meta VALUES ('report_seq', '41')")
    db.execute("COMMIT")
    db.close()


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the tables the upgrade must keep, in a fixed order (columns of the old schema)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {}
        for t in TABLES:
            cols = [
                r[1] for r in db.execute(f"PRAGMA table_info({t})") if r[1] not in ("runtime", "original_raw")
            ]
            out[t] = sorted(db.execute(f"SELECT {', '.join(cols)} FROM {t}"), key=repr)
        return out
    finally:
        db.close()


def readings_sql(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(db.execute("SELECT sql FROM sqlite_master WHERE name='readings'").fetchone()[0])
    finally:
        db.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_from_before_versioning_is_rekeyed_in_place_with_every_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.sqlite"
    old_database(path)
    before = dump(path)
    assert "PRIMARY KEY(device, ts)" in readings_sql(path) and user_version(path) == 0

    with caplog.at_level(logging.INFO, logger="dr_agent.store"):
        s = Store(path, recover_corrupt=True)
    try:
        assert s.moved_aside is None
        # The table's own order (a scan without ORDER BY walks the key) is time first now.
        scanned = list(s.db.execute("SELECT ts, device FROM readings"))
        assert scanned == sorted(scanned) and scanned[:3] == [(T0, d) for d in sorted(DEVICES)]
        assert {r[1] for r in s.db.execute("PRAGMA table_info(events)")} >= {"runtime"}
        assert {r[1] for r in s.db.execute("PRAGMA table_info(journal)")} >= {"original_raw"}
        # What the agent reads of them still reads the same.
        assert s.readings("pump-2", T0, T0 + 3) == [(T0, 200.0), (T0 + 1, 200.5), (T0 + 2, 201.0)]
        assert [e.device for e in s.journal_open()] == ["chiller-1"]
        assert s.settlement("e-1") == {"event_id": "e-1"} and s.meta_get("report_seq") == "41"
        assert s.prune_raw(T0 + 1000, {"main-meter"}) == 1000
        s.add_batch([("main-meter", T0 + 999, 5.0)], [])
    finally:
        s.close()
    after = dump(path)
    before["readings"] = sorted(
        [r for r in before["readings"] if r[0] != "main-meter" or r[1] >= T0 + 1000]  # type: ignore[operator]
        + [("main-meter", T0 + 999, 5.0)],
        key=repr,
    )
    assert after == before
    assert "PRIMARY KEY(ts, device)" in readings_sql(path) and user_version(path) == SCHEMA_VERSION
    assert not {t for (t,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")} - {
        *TABLES,
        "readings_1m_others",
        "readings_15m",
        "audit",
        "nonces",
        "journal_open",
        "outbox_pending",
        "sqlite_sequence",
        "sqlite_autoindex_meta_1",
        "sqlite_autoindex_events_1",
        "sqlite_autoindex_settlements_1",
    }, "a table of the upgrade was left behind"
    lines = [r.getMessage() for r in caplog.records]
    assert any("event=database_upgrading" in m and str(path) in m and "from_version=0" in m for m in lines)
    done = next(m for m in lines if "event=database_upgraded" in m)
    assert f"readings_rekeyed={3000 * len(DEVICES)}" in done and f"version={SCHEMA_VERSION}" in done


#: Opens the database with a connection that kills its own process once the upgrade has copied
#: the rows and is dropping the old table: a crash half-way through the transaction.
KILL_MID_UPGRADE = """
import os, sqlite3, sys
from agent.platform import store
real = sqlite3.connect
def connect(*a, **kw):
    db = real(*a, **kw)
    db.set_trace_callback(lambda sql: os._exit(9) if sql.startswith("DROP TABLE readings_v0") else None)
    return db
store.sqlite3.connect = connect
store.Store(sys.argv[1])
"""


def test_an_upgrade_killed_half_way_leaves_the_old_file_and_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    old_database(path)
    before = dump(path)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_UPGRADE, str(path)], cwd=Path(__file__).parents[2], timeout=60
    )
    assert proc.returncode == 9, "the upgrade was not interrupted where the test meant to"
    # The crash left a hot WAL or journal: a reader rolls it back and sees the old file, untouched.
    assert dump(path) == before
    assert "PRIMARY KEY(device, ts)" in readings_sql(path) and user_version(path) == 0
    Store(path).close()
    assert dump(path) == before
    assert "PRIMARY KEY(ts, device)" in readings_sql(path) and user_version(path) == SCHEMA_VERSION


def test_a_current_database_opens_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "agent.sqlite"
    s = Store(path)
    s.add_readings([("meter", T0 + t, 1.0) for t in range(100)])
    s.close()
    assert user_version(path) == SCHEMA_VERSION
    was = digest(path)
    with caplog.at_level(logging.INFO, logger="dr_agent.store"):
        s = Store(path, recover_corrupt=True)
        assert len(s.readings("meter", T0, T0 + 100)) == 100
        s.close()
    assert digest(path) == was
    assert not [r for r in caplog.records if "database_upgrad" in r.getMessage()]


def newer_database(path: Path) -> str:
    s = Store(path)
    s.add_readings([("meter", T0, 1.0)])
    s.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    return digest(path)


def test_a_newer_database_is_refused_by_name_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    was = newer_database(path)
    with pytest.raises(NewerDatabase) as err:
        Store(path, recover_corrupt=True)  # the daemon's open: not taken for a corrupt file
    msg = str(err.value)
    assert str(path) in msg and f"version {SCHEMA_VERSION + 1}" in msg and f"({SCHEMA_VERSION})" in msg
    assert digest(path) == was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.sqlite"]


def test_dr_agent_run_on_a_newer_database_says_so_and_exits(tmp_path: Path) -> None:
    cfg = site_config(1, tmp_path)  # never reached: the database is opened first
    path = Path(cfg.storage.path)
    was = newer_database(path)
    proc = subprocess.run(
        [*dr_agent(), "run", "-c", str(write_config(cfg, tmp_path / "site.yaml"))],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    assert f"dr-agent: {path}: database schema version {SCHEMA_VERSION + 1}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(path) == was


def test_a_version_1_database_gains_the_time_first_minutes_of_other_devices(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    s = Store(path)
    s.add_readings([("meter", T0 + t, 1.0) for t in range(120)])
    s.db.execute("DROP TABLE readings_1m_others")  # the schema as version 1 had it
    s.db.execute("PRAGMA user_version=1")
    s.close()
    before = dump(path)
    s = Store(path)
    try:
        s.add_batch([], [("pump", int(T0 // 60), 6.0, 2, 3.0, 3.0)], {"meter"})
        assert s.others_minute_means("pump", T0, T0 + 60) == [(int(T0 // 60), 3.0)]
    finally:
        s.close()
    assert dump(path) == before and user_version(path) == SCHEMA_VERSION
