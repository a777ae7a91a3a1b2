"""SQLite store: readings, events, the revert journal, settlements and the MQTT outbox.

One connection, used from one worker thread, so the event loop never waits
on disk: async callers go through `AsyncStore`. The revert journal records
the value every write replaced, durably and before the write is sent, so a
restore after cancel, shutdown or a crash is exact. A shed's journal rows,
which its writes wait for anyway, commit on the event loop's thread through
the journal's own connection when that cannot wait (`DirectJournal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS readings(
    device TEXT NOT NULL, ts REAL NOT NULL, kw REAL NOT NULL,
    PRIMARY KEY(ts, device)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings_1m(
    device TEXT NOT NULL, minute INTEGER NOT NULL,
    kw_sum REAL NOT NULL, n INTEGER NOT NULL, kw_min REAL, kw_max REAL,
    PRIMARY KEY(device, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings_1m_others(
    minute INTEGER NOT NULL, device TEXT NOT NULL,
    kw_sum REAL NOT NULL, n INTEGER NOT NULL, kw_min REAL, kw_max REAL,
    PRIMARY KEY(minute, device)) WITHOUT ROWID;
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

#: The schema this code writes, kept in the file's `PRAGMA user_version`:
#: 0  before versioning: `readings` keyed (device, ts) in files created before the disk budget,
#:    and maybe without the columns of MIGRATIONS;
#: 1  `readings` keyed (ts, device) (a flush touches the pages at the table's end, not one per
#:    device), every column of MIGRATIONS;
#: 2  `readings_1m_others`: the 1-minute means of every key but the meter's and the outdoor
#:    temperature's, keyed (minute, device) for the same reason (their older rows in
#:    `readings_1m` age out there).
SCHEMA_VERSION = 2

#: meta key: the first minute of `readings_1m_others` not yet folded into `readings_15m`.
ROLLED_KEY = "readings_1m_others.rolled_to"

#: Columns added after the first release: (table, column, type); added in place on open.
MIGRATIONS = [("events", "runtime", "TEXT"), ("journal", "original_raw", "TEXT")]

#: sqlite's result codes for a file that is not, or no longer, a database.
CORRUPT_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})

log = logging.getLogger("dr_agent.store")


def _time_first(m: tuple[str, int, float, int, float, float]) -> tuple[int, str]:
    """A minute row's key in `readings_1m_others`: inserted in key order, pages fill in turn."""
    return m[1], m[0]


def _table_sql(db: sqlite3.Connection, name: str) -> str:
    """The CREATE statement of table `name`, "" when there is none."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
    return "" if row is None else str(row[0])


class CorruptDatabase(sqlite3.DatabaseError):
    """The database opened but its integrity check failed."""


class NewerDatabase(RuntimeError):
    """The file was written by a newer dr-agent (a higher schema version): left as it is.

    Not a sqlite3 error, so the daemon's corrupt-file recovery never moves it aside."""

    def __init__(self, path: Path, version: int) -> None:
        super().__init__(
            f"{path}: database schema version {version} is newer than this dr-agent's "
            f"({SCHEMA_VERSION}); it was left unchanged: run the dr-agent that wrote it, or point "
            "storage.path at another file"
        )
        self.path = path
        self.version = version


#: A journal row as `Store.journal_record_many` takes it: (device, role, original, written,
#: event_id, step, original_raw).
JournalRow = tuple[str, str, float | None, float | None, str | None, str | None, str | None]


@dataclass
class JournalEntry:
    id: int
    device: str
    role: str
    original: float | None
    written: float | None
    ts: float
    event_id: str | None
    step: str | None
    #: The original's exact registers (JSON, by point), written back verbatim on restore.
    original_raw: str | None = None


@dataclass
class OutboxMessage:
    seq: int
    topic: str
    payload: str
    qos: int
    retain: bool


class Store:
    """Synchronous store; use from one thread (AsyncStore does that)."""

    def __init__(self, path: str | Path, *, recover_corrupt: bool = False) -> None:
        """Open (and create or migrate) the database at `path`.

        `recover_corrupt` (the daemon): a file that is not a database or fails sqlite's quick
        check is moved aside (`<name>.corrupt-<UTC time>`, with its -wal/-shm), said loudly, and
        the agent starts on a clean one: a torn file after a power cut must not keep the site's
        agent down. Tools that only read (report, status) leave a corrupt file where it is.
        """
        self.path = Path(path)
        #: Where a corrupt database was moved at open, if it was.
        self.moved_aside: Path | None = None
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open(check=recover_corrupt)
        except sqlite3.DatabaseError as exc:
            corrupt = (
                isinstance(exc, CorruptDatabase) or getattr(exc, "sqlite_errorname", "") in CORRUPT_ERRORS
            )
            if not (recover_corrupt and corrupt and str(path) != ":memory:"):
                raise
            self.moved_aside = self._move_aside()
            log.critical(
                "event=database_corrupt path=%s moved_to=%s error=%r action=started_clean"
                " (events, journal and history of the old file are not carried over)",
                self.path,
                self.moved_aside,
                str(exc),
            )
            self.db = self._open(check=False)
            self.audit(
                f"database corrupt at start-up ({exc}): moved aside to {self.moved_aside}; started clean"
            )

    def _open(self, check: bool) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            # Before anything writes (even the journal mode): a newer file is left as it is.
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise NewerDatabase(self.path, version)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # The WAL is cut back to this after a checkpoint: it counts against the disk budget.
            db.execute("PRAGMA journal_size_limit=4194304")
            if check:
                rows = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)")]
                if rows != ["ok"]:
                    raise CorruptDatabase("; ".join(rows))
            if version < SCHEMA_VERSION:
                self._upgrade(db)
        except BaseException:
            db.close()
            raise
        return db

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Create a new file's schema, or bring an older one to SCHEMA_VERSION in place, in one
        transaction: an interrupted upgrade (a crash, a power cut) leaves the file as it was, and
        the next open starts it again. Every row is kept."""
        db.execute("BEGIN IMMEDIATE")  # the write lock first: two openers cannot both upgrade
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version >= SCHEMA_VERSION:  # another process did it while this one waited
                db.execute("COMMIT")
                return
            fresh = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
            t0 = time.monotonic()
            if not fresh:
                log.warning(
                    "event=database_upgrading path=%s from_version=%d to_version=%d",
                    self.path,
                    version,
                    SCHEMA_VERSION,
                )
            rekeyed = 0
            raw_sql = _table_sql(db, "readings")
            if raw_sql and "PRIMARY KEY(ts, device)" not in raw_sql:
                # (device, ts) -> (ts, device): a copy in key order, then the old table goes.
                db.execute("ALTER TABLE readings RENAME TO readings_v0")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            if _table_sql(db, "readings_v0"):
                rekeyed = db.execute(
                    "INSERT INTO readings(device, ts, kw) SELECT device, ts, kw FROM readings_v0 ORDER BY ts, device"
                ).rowcount
                db.execute("DROP TABLE readings_v0")
            for table, column, kind in MIGRATIONS:
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if not fresh:
            log.warning(
                "event=database_upgraded path=%s version=%d readings_rekeyed=%d seconds=%.2f",
                self.path,
                SCHEMA_VERSION,
                rekeyed,
                time.monotonic() - t0,
            )

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("-wal", "-shm", ""):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return aside

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self, db: sqlite3.Connection | None = None, begin: str = "BEGIN") -> Iterator[None]:
        """One real transaction on `db` (the store's connection unless given): `with self.db` does
        not BEGIN on an autocommit connection (isolation_level=None), so a batch would be one
        commit per row (5x slower) and not atomic. A COMMIT that fails is rolled back too: the
        connection never keeps the write lock."""
        conn = self.db if db is None else db
        conn.execute(begin)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            # sqlite rolls back by itself on some errors (SQLITE_FULL): a second ROLLBACK would
            # raise "no transaction is active" and hide the real error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- readings -------------------------------------------------------------

    def add_readings(self, rows: Iterable[tuple[str, float, float]]) -> None:
        """Insert (device, ts, kw) rows and fold them into 1-minute and 15-minute aggregates."""
        rows = list(rows)
        if not rows:
            return
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO readings VALUES (?,?,?)", rows)
            for table, col, step in (("readings_1m", "minute", 60), ("readings_15m", "quarter", 900)):
                agg: dict[tuple[str, int], list[float]] = {}
                for dev, ts, kw in rows:
                    a = agg.setdefault((dev, int(ts // step)), [0.0, 0, kw, kw])
                    a[0] += kw
                    a[1] += 1
                    a[2] = min(a[2], kw)
                    a[3] = max(a[3], kw)
                self.db.executemany(
                    f"""INSERT INTO {table} VALUES (?,?,?,?,?,?)
                       ON CONFLICT(device, {col}) DO UPDATE SET
                       kw_sum = kw_sum + excluded.kw_sum, n = n + excluded.n,
                       kw_min = min(kw_min, excluded.kw_min), kw_max = max(kw_max, excluded.kw_max)""",
                    [(d, m, a[0], a[1], a[2], a[3]) for (d, m), a in agg.items()],
                )

    def add_batch(
        self,
        raw: Iterable[tuple[str, float, float]],
        minutes: Iterable[tuple[str, int, float, int, float, float]],
        full_rate: Collection[str] | None = None,
    ) -> None:
        """One flush of the daemon in one transaction: poll-rate rows (device, ts, kw) as they
        are kept, and closed 1-minute aggregates (device, minute, kw_sum, n, kw_min, kw_max).
        An aggregate already stored (a minute split by a restart) is added to, not replaced.

        The minutes of `full_rate` keys (all, when None) go to `readings_1m`, keyed by device
        (the baselines read weeks of one key), folded into `readings_15m` at once. Every other
        key's go to `readings_1m_others`, keyed by time, so a batch of 1,000 devices' minutes
        fills a few pages at the table's end instead of touching one page per device; their
        15-minute means are folded later, many quarters at a time (`rollup_quarters`)."""
        raw = list(raw)
        minutes = list(minutes)
        if not raw and not minutes:
            return
        keyed = [m for m in minutes if full_rate is None or m[0] in full_rate]
        others = [m for m in minutes if not (full_rate is None or m[0] in full_rate)]
        with self.transaction():
            if raw:
                self.db.executemany("INSERT OR REPLACE INTO readings(device, ts, kw) VALUES (?,?,?)", raw)
            if others:
                others.sort(key=_time_first)
                self.db.executemany(
                    """INSERT INTO readings_1m_others(device, minute, kw_sum, n, kw_min, kw_max)
                       VALUES (?,?,?,?,?,?) ON CONFLICT(minute, device) DO UPDATE SET
                       kw_sum = kw_sum + excluded.kw_sum, n = n + excluded.n,
                       kw_min = min(kw_min, excluded.kw_min), kw_max = max(kw_max, excluded.kw_max)""",
                    others,
                )
                # A minute that arrives after its quarter was folded (a batch held back by a
                # database error) is folded now, on its own.
                rolled = self._rolled_to()
                keyed += [m for m in others if rolled is not None and m[1] < rolled]
            quarters: dict[tuple[str, int], list[float]] = {}
            for dev, minute, kw_sum, n, lo, hi in keyed:
                q = quarters.setdefault((dev, minute // 15), [0.0, 0, lo, hi])
                q[0] += kw_sum
                q[1] += n
                q[2] = min(q[2], lo)
                q[3] = max(q[3], hi)
            self._upsert_aggregates(
                "readings_1m", "minute", [m for m in keyed if full_rate is None or m[0] in full_rate]
            )
            self._upsert_aggregates("readings_15m", "quarter", [(d, k, *a) for (d, k), a in quarters.items()])

    def _upsert_aggregates(self, table: str, col: str, rows: list[tuple[Any, ...]]) -> None:
        self.db.executemany(
            f"""INSERT INTO {table} VALUES (?,?,?,?,?,?)
               ON CONFLICT(device, {col}) DO UPDATE SET
               kw_sum = kw_sum + excluded.kw_sum, n = n + excluded.n,
               kw_min = min(kw_min, excluded.kw_min), kw_max = max(kw_max, excluded.kw_max)""",
            rows,
        )

    def _rolled_to(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (ROLLED_KEY,)).fetchone()
        return None if row is None else int(row[0])

    def rollup_quarters(self, before: float) -> int:
        """Fold the 1-minute means of `readings_1m_others` of the quarters that end by `before`
        (s) and were not folded yet into `readings_15m`, in one transaction: one page per device
        for all those quarters. Returns the 15-minute rows written."""
        end = int(before // 900) * 15
        with self.transaction():
            start = self._rolled_to()
            if start is None:
                row = self.db.execute("SELECT MIN(minute) FROM readings_1m_others").fetchone()
                start = end if row[0] is None else int(row[0])
            if end <= start:
                return 0
            rows = list(
                self.db.execute(
                    """SELECT device, minute / 15, SUM(kw_sum), SUM(n), MIN(kw_min), MAX(kw_max)
                       FROM readings_1m_others WHERE minute >= ? AND minute < ?
                       GROUP BY device, minute / 15 ORDER BY device, minute / 15""",
                    (start, end),
                )
            )
            self._upsert_aggregates("readings_15m", "quarter", rows)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (ROLLED_KEY, str(end)))
        return len(rows)

    def oldest_others_minute(self) -> float | None:
        """The time of the oldest row of `readings_1m_others` (s), or None."""
        row = self.db.execute("SELECT MIN(minute) FROM readings_1m_others").fetchone()
        return None if row[0] is None else float(row[0]) * 60

    def prune_others_minutes(self, before: float) -> int:
        """Drop the rows of `readings_1m_others` older than `before` (s) whose quarter has been
        folded into `readings_15m` (a range on the key's time)."""
        with self.transaction():
            cut = min(int(before // 60), self._rolled_to() or 0)
            return self.db.execute("DELETE FROM readings_1m_others WHERE minute < ?", (cut,)).rowcount

    def others_minute_means(self, device: str, start: float, end: float) -> list[tuple[int, float]]:
        """(minute index, mean kW) of `device`'s rows of `readings_1m_others` in [start, end): a scan
        of that time range over every device (for a look at one load, not for weeks of it)."""
        cur = self.db.execute(
            "SELECT minute, kw_sum / n FROM readings_1m_others WHERE minute>=? AND minute<? AND device=?"
            " ORDER BY minute",
            (int(start // 60), int(end // 60), device),
        )
        return [(int(a), float(b)) for a, b in cur]

    # -- what the history costs, and the disk budget ------------------------------------

    def usage_bytes(self) -> int:
        """Bytes the database holds: pages in use plus its write-ahead log."""
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        wal = Path(f"{self.path}-wal")
        return (pages - free) * page + (wal.stat().st_size if wal.exists() else 0)

    def keys(self, table: str) -> list[str]:
        """The devices (series keys) `table` holds rows of: one index seek each on a table keyed
        by device first; a scan of `readings`, keyed by time first (short, thinned)."""
        if table == "readings":
            return [r[0] for r in self.db.execute("SELECT DISTINCT device FROM readings")]
        out: list[str] = []
        row = self.db.execute(f"SELECT device FROM {table} ORDER BY device LIMIT 1").fetchone()
        while row is not None:
            out.append(str(row[0]))
            row = self.db.execute(
                f"SELECT device FROM {table} WHERE device > ? ORDER BY device LIMIT 1", (row[0],)
            ).fetchone()
        return out

    def oldest(self, table: str, device: str) -> float | None:
        """The time of `device`'s oldest row in `table` (s), or None."""
        col, step = {"readings": ("ts", 1), "readings_1m": ("minute", 60), "readings_15m": ("quarter", 900)}[
            table
        ]
        row = self.db.execute(f"SELECT MIN({col}) FROM {table} WHERE device=?", (device,)).fetchone()
        return None if row is None or row[0] is None else float(row[0]) * step

    def oldest_raw(self, keys: Collection[str], *, others: bool = False) -> float | None:
        """The time of the oldest poll-rate row of `keys` (or, `others`, of every other key): the
        first matching row in the table's time order, a short walk."""
        marks = ",".join("?" * len(keys))
        q = f"SELECT ts FROM readings WHERE device {'NOT IN' if others else 'IN'} ({marks}) ORDER BY ts LIMIT 1"
        row = self.db.execute(q, tuple(keys)).fetchone()
        return None if row is None else float(row[0])

    def prune_raw(self, before: float, keys: Collection[str] | None = None, *, others: bool = False) -> int:
        """Drop poll-rate rows older than `before`: of every key, of `keys`, or (`others`) of every
        key but `keys`. A range on the key's time, not a table scan."""
        args: tuple[str, ...] = ()
        cond = ""
        if keys is not None:
            marks = ",".join("?" * len(keys))
            cond, args = f" AND device {'NOT IN' if others else 'IN'} ({marks})", tuple(keys)
        with self.transaction():
            return self.db.execute(f"DELETE FROM readings WHERE ts < ?{cond}", (before, *args)).rowcount

    def prune_aggregates(self, table: str, device: str, before: float) -> int:
        """Drop `device`'s rows of readings_1m or readings_15m older than `before` (s)."""
        col, step = {"readings_1m": ("minute", 60), "readings_15m": ("quarter", 900)}[table]
        with self.transaction():
            return self.db.execute(
                f"DELETE FROM {table} WHERE device=? AND {col}<?", (device, int(before // step))
            ).rowcount

    def prune_bookkeeping(self, delivered_before: float, closed_before: float) -> int:
        """Outbox rows delivered before `delivered_before`; closed journal rows and audit lines
        older than `closed_before`. Never an undelivered message, an open journal row or a
        settlement."""
        with self.transaction():
            n = self.db.execute(
                "DELETE FROM outbox WHERE sent_ts IS NOT NULL AND sent_ts < ?", (delivered_before,)
            ).rowcount
            n += self.db.execute(
                "DELETE FROM journal WHERE restored_ts IS NOT NULL AND restored_ts < ?", (closed_before,)
            ).rowcount
            n += self.db.execute("DELETE FROM audit WHERE ts < ?", (closed_before,)).rowcount
        return n

    def readings(self, device: str, start: float, end: float) -> list[tuple[float, float]]:
        cur = self.db.execute(
            "SELECT ts, kw FROM readings WHERE device=? AND ts>=? AND ts<? ORDER BY ts",
            (device, start, end),
        )
        return [(float(a), float(b)) for a, b in cur]

    def minute_means(self, device: str, start: float, end: float) -> list[tuple[int, float]]:
        cur = self.db.execute(
            "SELECT minute, kw_sum / n FROM readings_1m WHERE device=? AND minute>=? AND minute<? ORDER BY minute",
            (device, int(start // 60), int(end // 60)),
        )
        return [(int(a), float(b)) for a, b in cur]

    def quarter_means(self, device: str, start: float, end: float) -> list[tuple[int, float]]:
        """(quarter-hour index = ts // 900, mean kW) of the 15-minute aggregates in [start, end)."""
        cur = self.db.execute(
            "SELECT quarter, kw_sum / n FROM readings_15m WHERE device=? AND quarter>=? AND quarter<? ORDER BY quarter",
            (device, int(start // 900), int(end // 900)),
        )
        return [(int(a), float(b)) for a, b in cur]

    # -- events ----------------------------------------------------------------

    def save_event(
        self,
        event_id: str,
        modification_number: int,
        payload: dict[str, Any],
        state: str,
        opt: str | None,
        code: str | None,
        reason: str | None,
        effective_start: float | None,
    ) -> None:
        now = time.time()
        with self.transaction():
            self.db.execute(
                """INSERT INTO events(event_id, modification_number, payload, state, opt, code, reason,
                   effective_start, received_ts, updated_ts) VALUES (?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(event_id) DO UPDATE SET modification_number=excluded.modification_number,
                   payload=excluded.payload, state=excluded.state, opt=excluded.opt, code=excluded.code,
                   reason=excluded.reason, effective_start=excluded.effective_start, updated_ts=excluded.updated_ts""",
                (
                    event_id,
                    modification_number,
                    json.dumps(payload),
                    state,
                    opt,
                    code,
                    reason,
                    effective_start,
                    now,
                    now,
                ),
            )

    def set_event_state(self, event_id: str, state: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE events SET state=?, updated_ts=? WHERE event_id=?", (state, time.time(), event_id)
            )

    def set_event_runtime(self, event_id: str, runtime: dict[str, Any]) -> None:
        """What a restart needs to resume the event (baseline, commitment, control start, ...)."""
        with self.transaction():
            self.db.execute(
                "UPDATE events SET runtime=?, updated_ts=? WHERE event_id=?",
                (json.dumps(runtime), time.time(), event_id),
            )

    def events(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        q = "SELECT event_id, modification_number, payload, state, opt, code, reason, effective_start, updated_ts, runtime FROM events"
        args: tuple[Any, ...] = ()
        if states is not None:
            st = list(states)
            q += f" WHERE state IN ({','.join('?' * len(st))})"
            args = tuple(st)
        q += " ORDER BY received_ts"
        out = []
        for row in self.db.execute(q, args):
            out.append(
                {
                    "event_id": row[0],
                    "modification_number": row[1],
                    "payload": json.loads(row[2]),
                    "state": row[3],
                    "opt": row[4],
                    "code": row[5],
                    "reason": row[6],
                    "effective_start": row[7],
                    "updated_ts": row[8],
                    "runtime": json.loads(row[9]) if row[9] else {},
                }
            )
        return out

    # -- revert journal --------------------------------------------------------

    def journal_open(self, device: str | None = None, role: str | None = None) -> list[JournalEntry]:
        q = (
            "SELECT id, device, role, original, written, ts, event_id, step, original_raw FROM journal"
            " WHERE restored_ts IS NULL"
        )
        args: list[Any] = []
        if device is not None:
            q += " AND device=?"
            args.append(device)
        if role is not None:
            q += " AND role=?"
            args.append(role)
        q += " ORDER BY id"
        return [JournalEntry(*row) for row in self.db.execute(q, args)]

    def journal_record(
        self,
        device: str,
        role: str,
        original: float | None,
        written: float | None,
        event_id: str | None,
        step: str | None,
        original_raw: str | None = None,
    ) -> int:
        """Record a write before it is sent. The first open entry of a (device, role) keeps the original."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO journal(device, role, original, written, ts, event_id, step, original_raw)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (device, role, original, written, time.time(), event_id, step, original_raw),
            )
        return int(cur.lastrowid or 0)

    def journal_record_many(
        self,
        rows: Iterable[JournalRow],
        db: sqlite3.Connection | None = None,
    ) -> None:
        """Record several writes before they are sent, in one transaction:
        (device, role, original, written, event_id, step, original_raw) each. On `db` if given
        (the journal's own connection, `DirectJournal`), else on the store's."""
        now = time.time()
        values = [(d, r, o, w, now, e, s, raw) for d, r, o, w, e, s, raw in rows]
        insert = (
            "INSERT INTO journal(device, role, original, written, ts, event_id, step, original_raw)"
            " VALUES (?,?,?,?,?,?,?,?)"
        )
        conn = self.db if db is None else db
        # On the journal's own connection, IMMEDIATE: a busy database fails at once, before any work.
        with self.transaction(conn, "BEGIN" if db is None else "BEGIN IMMEDIATE"):
            conn.executemany(insert, values)

    def journal_restored(self, device: str, role: str, note: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE journal SET restored_ts=?, restore_note=? WHERE device=? AND role=? AND restored_ts IS NULL",
                (time.time(), note, device, role),
            )

    # -- settlements, audit ------------------------------------------------------

    def save_settlement(self, event_id: str, body: dict[str, Any]) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO settlements VALUES (?,?,?)", (event_id, time.time(), json.dumps(body))
            )

    def settlements(self, limit: int = 100) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT body FROM settlements ORDER BY ts DESC LIMIT ?", (limit,))
        return [json.loads(r[0]) for r in cur]

    def settlement(self, event_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM settlements WHERE event_id=?", (event_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def audit(self, what: str, event_id: str | None = None, device: str | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO audit(ts, event_id, device, what) VALUES (?,?,?,?)",
                (time.time(), event_id, device, what),
            )

    def audit_log(self, limit: int = 100) -> list[tuple[float, str | None, str | None, str]]:
        cur = self.db.execute(
            "SELECT ts, event_id, device, what FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return list(cur)

    # -- outbox ----------------------------------------------------------------

    def outbox_put(self, topic: str, payload: str, qos: int, retain: bool) -> int:
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO outbox(topic, payload, qos, retain, created_ts) VALUES (?,?,?,?,?)",
                (topic, payload, qos, int(retain), time.time()),
            )
        return int(cur.lastrowid or 0)

    def outbox_put_numbered(
        self, topic: str, payload: dict[str, Any], counter: str, retain: bool = False
    ) -> int:
        """Queue `payload` with the next number of `counter` as its `seq`, in one transaction."""
        with self.transaction():
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (counter,)).fetchone()
            seq = (int(row[0]) if row else 0) + 1
            body = json.dumps({**payload, "seq": seq}, separators=(",", ":"))
            self.db.execute(
                "INSERT INTO outbox(topic, payload, qos, retain, created_ts) VALUES (?,?,?,?,?)",
                (topic, body, 1, int(retain), time.time()),
            )
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (counter, str(seq)))
        return seq

    def outbox_pending(self, limit: int = 100) -> list[OutboxMessage]:
        cur = self.db.execute(
            "SELECT seq, topic, payload, qos, retain FROM outbox WHERE sent_ts IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [OutboxMessage(r[0], r[1], r[2], r[3], bool(r[4])) for r in cur]

    def outbox_sent(self, seqs: Iterable[int]) -> None:
        now = time.time()
        with self.transaction():
            self.db.executemany("UPDATE outbox SET sent_ts=? WHERE seq=?", [(now, s) for s in seqs])

    def nonce_seen(self, nonce: str, ts: float, now: float, window_s: float) -> bool:
        """True if `nonce` was already used within the window; records it otherwise (replay defence)."""
        with self.transaction():
            self.db.execute("DELETE FROM nonces WHERE ts < ?", (now - window_s,))
            cur = self.db.execute("INSERT OR IGNORE INTO nonces VALUES (?,?)", (nonce, ts))
        return cur.rowcount == 0

    def meta_get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))


#: Store calls on the path from an event to its writes: the revert journal. They go ahead of
#: queued bookkeeping (readings flushes, the outbox, event rows) on the store's one thread.
URGENT_CALLS = frozenset({"journal_open", "journal_record", "journal_record_many", "journal_restored"})
#: Store calls that change the revert journal (`AsyncStore.journal_changes` counts them).
JOURNAL_CHANGES = frozenset({"journal_record", "journal_record_many", "journal_restored"})


class _StoreThread:
    """One thread that runs the store's calls: in the order they came, the urgent ones first.

    Reordering is safe: an urgent call touches only the journal, and calls of one kind keep
    their order (the outbox its sequence, a flush before the prune after it)."""

    URGENT, NORMAL, STOP = 0, 1, 2

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None]]
        self._queue = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._run, name="sqlite", daemon=True)
        self._thread.start()

    def submit(self, urgent: bool, work: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((self.URGENT if urgent else self.NORMAL, next(self._order), work, future))
        return future

    def _run(self) -> None:
        while True:
            _, _, work, future = self._queue.get()
            if work is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Stop once every call queued before this one has run."""
        self._queue.put((self.STOP, next(self._order), None, None))
        self._thread.join()


class DirectJournal:
    """The revert journal's own connection, used on the event loop's thread for a shed's rows.

    The writes of a shed wait for their journal rows; through the store's thread they would
    also wait for the thread to wake and for whatever it is running (a readings flush, a
    settlement). Here they commit at once (about 50 us: WAL, synchronous=NORMAL, no fsync), and
    only when that cannot block: the write lock is taken without waiting (another writer means
    SQLITE_BUSY at once), and this connection never checkpoints (the store's connection does).
    Any error returns False: the caller goes through the store's thread instead, which waits
    for the lock or raises the real error (a full disk)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db: sqlite3.Connection | None = None

    def record(self, rows: Sequence[JournalRow]) -> bool:
        try:
            if self._db is None:
                db = sqlite3.connect(str(self._store.path), timeout=0, isolation_level=None)
                db.execute("PRAGMA synchronous=NORMAL")  # as the store's: no fsync per commit
                db.execute("PRAGMA wal_autocheckpoint=0")
                self._db = db
            self._store.journal_record_many(rows, self._db)
        except sqlite3.Error as exc:
            log.debug("event=journal_direct_declined error=%r", str(exc))
            if self._db is not None and self._db.in_transaction:
                self.close()  # could not even roll back: start again with a new connection
            return False
        return True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class AsyncStore:
    """Runs Store calls on one dedicated thread, so SQLite never blocks the event loop (a shed's
    journal rows excepted, when they can commit at once: `DirectJournal`)."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._thread = _StoreThread()
        #: Calls that changed the revert journal so far, counted when made (before they run): a
        #: read of the open journal is current while this count has not moved since it was asked.
        self.journal_changes = 0
        #: Journal changes submitted to the thread and not yet done: a shed's rows then queue
        #: behind them, so the journal changes in the order they were asked (a restore's closing
        #: of a device's rows must not land after a new shed's row of that device).
        self._journal_queued = 0
        in_memory = str(store.path) == ":memory:"  # a second connection would be another database
        self._direct = None if in_memory else DirectJournal(store)

    async def call(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        return await asyncio.wrap_future(self._thread.submit(urgent, lambda: fn(*args)))

    async def journal_record_many(self, rows: Sequence[JournalRow]) -> None:
        """A shed's journal rows, committed before its writes go out: at once on this thread when
        nothing else is changing the journal and the database is free (`DirectJournal`), else
        through the store's thread (ahead of bookkeeping)."""
        self.journal_changes += 1
        if self._journal_queued == 0 and self._direct is not None and self._direct.record(rows):
            return
        await self._queued_journal_change(self.sync.journal_record_many, rows)

    async def _queued_journal_change(self, fn: Callable[..., T], *args: Any) -> T:
        """A journal change on the store's thread, ahead of bookkeeping; counted while queued."""
        self._journal_queued += 1
        try:
            return await self.call(fn, *args, urgent=True)
        finally:
            self._journal_queued -= 1

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.sync, name)
        urgent = name in URGENT_CALLS
        changes_journal = name in JOURNAL_CHANGES

        async def wrapper(*args: Any) -> Any:
            if not changes_journal:
                return await self.call(fn, *args, urgent=urgent)
            self.journal_changes += 1
            return await self._queued_journal_change(fn, *args)

        return wrapper

    async def close(self) -> None:
        if self._direct is not None:
            self._direct.close()  # first: the store's connection, closed last, checkpoints
        await self.call(self.sync.close)
        self._thread.shutdown()
