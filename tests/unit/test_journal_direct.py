"""A shed's journal rows commit on the event loop's thread when that cannot wait
(`DirectJournal`), and through the store's thread otherwise: behind a writer that holds the
database, behind journal changes already queued (in the order they were asked), and for the
real error of a database that cannot take them. Real SQLite files, read back on a connection
of their own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.platform.store import AsyncStore, Store


def row(device: str, original: float = 80.0) -> tuple[str, str, float, float, str, str, None]:
    return (device, "level_pct", original, 30.0, "ev-1", "lights/1", None)


def open_rows(path: Path) -> list[tuple[str, float]]:
    """(device, original) of the open journal rows, as another process would read them."""
    db = sqlite3.connect(path)
    try:
        return list(db.execute("SELECT device, original FROM journal WHERE restored_ts IS NULL ORDER BY id"))
    finally:
        db.close()


async def test_a_sheds_rows_do_not_wait_for_the_store_threads_work(tmp_path: Path) -> None:
    """The store's thread is half a second into something else (a flush, a settlement): the rows
    commit at once, durable for another connection, and the thread's work is left alone."""
    path = tmp_path / "agent.sqlite"
    store = AsyncStore(Store(path))
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(store.call(gate.wait, 0.5))
        await asyncio.sleep(0.05)  # the thread has taken it
        t0 = time.monotonic()
        await store.journal_record_many([row("zone-1"), row("zone-2")])
        assert time.monotonic() - t0 < 0.2
        assert not busy.done()
        assert open_rows(path) == [("zone-1", 80.0), ("zone-2", 80.0)]
    finally:
        gate.set()
        await store.close()


async def test_a_writer_holding_the_database_sends_the_rows_through_the_thread_and_the_loop_runs_on(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock (`dr-agent restore`, a backup) for 0.3 s: the rows wait
    for it on the store's thread, not on the event loop, and are all there after."""
    path = tmp_path / "agent.sqlite"
    store = AsyncStore(Store(path))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.ensure_future(ticker())
    try:
        release.start()
        t0 = time.monotonic()
        await store.journal_record_many([row("zone-1")])
        waited = time.monotonic() - t0
        assert waited >= 0.25  # it did wait for the writer
        assert ticks >= 10  # and the loop ran meanwhile (a blocked loop would not have ticked)
        assert open_rows(path) == [("zone-1", 80.0)]
    finally:
        tick.cancel()
        release.join()
        other.close()
        await store.close()


async def test_rows_wait_behind_journal_changes_already_queued(tmp_path: Path) -> None:
    """A restore's closing of zone-1's rows is queued on the busy thread when a new shed of zone-1
    journals its original: the new row must come after, and stay open. Committed at once it
    would land first and be closed by the restore: a device shed with no open row to undo it."""
    path = tmp_path / "agent.sqlite"
    store = AsyncStore(Store(path))
    await store.journal_record_many([row("zone-1", 80.0)])
    gate = threading.Event()
    try:
        busy = asyncio.ensure_future(store.call(gate.wait, 5))
        await asyncio.sleep(0.05)
        restored = asyncio.ensure_future(store.journal_restored("zone-1", "level_pct", "event ended"))
        await asyncio.sleep(0.01)  # the restore is queued
        shed = asyncio.ensure_future(store.journal_record_many([row("zone-1", 75.0)]))
        await asyncio.sleep(0.05)
        assert not shed.done()  # behind the restore, not on this thread
        gate.set()
        await asyncio.gather(busy, restored, shed)
        assert open_rows(path) == [("zone-1", 75.0)]
    finally:
        gate.set()
        await store.close()


async def test_a_database_that_cannot_take_the_rows_raises_its_own_error(tmp_path: Path) -> None:
    """A full disk: the direct commit gives way and the store's thread raises the real error;
    nothing is recorded."""
    path = tmp_path / "agent.sqlite"
    sync = Store(path)
    store = AsyncStore(sync)
    calls = 0
    real = sync.journal_record_many

    def full(rows: object, db: object = None) -> None:
        nonlocal calls
        calls += 1
        raise sqlite3.OperationalError("database or disk is full")

    sync.journal_record_many = full  # type: ignore[method-assign]
    try:
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await store.journal_record_many([row("zone-1")])
        assert calls == 2  # tried at once, then on the thread
        assert open_rows(path) == []
        sync.journal_record_many = real  # type: ignore[method-assign]
        await store.journal_record_many([row("zone-1")])
        assert open_rows(path) == [("zone-1", 80.0)]
    finally:
        await store.close()


async def test_an_in_memory_store_journals_through_its_thread() -> None:
    """A second connection to ":memory:" would be another, empty database: the rows go to the
    store's own connection, never tried elsewhere first."""
    sync = Store(":memory:")
    store = AsyncStore(sync)
    real = sync.journal_record_many
    given: list[object] = []

    def record(rows: Any, db: Any = None) -> None:
        given.append(db)
        real(rows, db)

    sync.journal_record_many = record  # type: ignore[method-assign]
    try:
        await store.journal_record_many([row("zone-1")])
        assert given == [None]
        assert [(e.device, e.original) for e in await store.journal_open()] == [("zone-1", 80.0)]
    finally:
        await store.close()


def test_a_commit_that_fails_rolls_back_and_leaves_the_write_lock_free(tmp_path: Path) -> None:
    """COMMIT itself fails (an I/O error): the transaction is rolled back, so the journal's own
    connection never keeps the write lock the store's thread needs; the next rows go in."""
    path = tmp_path / "agent.sqlite"
    store = Store(path)
    real = sqlite3.connect(path, isolation_level=None)

    class CommitFails:
        """The journal's connection, but its COMMIT raises (a fake: SQLite offers no such fault)."""

        def __init__(self) -> None:
            self.calls: list[str] = []

        def execute(self, sql: str, *args: object) -> object:
            self.calls.append(sql)
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

        def executemany(self, sql: str, rows: object) -> object:
            return real.executemany(sql, rows)  # type: ignore[arg-type]

        @property
        def in_transaction(self) -> bool:
            return real.in_transaction

    db = CommitFails()
    try:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            store.journal_record_many([row("zone-1")], db)  # type: ignore[arg-type]
        assert db.calls == ["BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"]
        assert not real.in_transaction
        store.journal_record_many([row("zone-2")])  # the store's connection takes the lock at once
        assert open_rows(path) == [("zone-2", 80.0)]
    finally:
        real.close()
        store.close()
