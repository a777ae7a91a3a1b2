"""The agent's SQLite database failing under a running event: locked, read-only, full; corrupt at start-up.

Mid-event, the database is locked by another writer, turns read-only, or
fills up (sqlite's max_page_count on the agent's own connection: the file
cannot grow, exactly what a full disk looks like to SQLite), and stays so
past the event's end. The agent must keep the site safe: devices restored
on time from its in-memory mirror of the journal, no crash, no restart loop;
once the database heals, the event is settled and everything queued is
delivered with report `seq` running without a gap. A corrupt file at
start-up is moved aside, said loudly, and the agent starts clean.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from agent.platform.store import Store
from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto
from tests.faults.conftest import AgentProcess, Site, agent_in_process, observer, online, open_site


async def _on_store_thread(agent: Agent, fn: object) -> None:
    """Run `fn(store)` on the store's own thread, between two of its calls."""
    await agent.store.call(fn, agent.store.sync)  # type: ignore[arg-type]


def _read_only(store: Store) -> None:
    store.db.close()
    store.db = sqlite3.connect(
        f"file:{store.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )


def _writable(store: Store) -> None:
    store.db.close()
    store.db = sqlite3.connect(str(store.path), check_same_thread=False, isolation_level=None)
    store.db.execute("PRAGMA journal_mode=WAL")


def _full(store: Store) -> None:
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count={pages}")


def _room(store: Store) -> None:
    store.db.execute("PRAGMA max_page_count=1073741823")


class Lock:
    """Another process's writer holding the database (an EXCLUSIVE transaction) until released."""

    def __init__(self, site: Site) -> None:
        self.conn = sqlite3.connect(site.db_path, timeout=0, isolation_level=None)

    def take(self) -> None:
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize("fault", ["locked", "read-only", "full"])
async def test_database_fault_mid_event_and_through_the_end(broker: Mosquitto, tmp_path: Path, fault: str) -> None:
    duration = 180.0
    async with open_site(broker, tmp_path) as site, observer(site) as obs, agent_in_process(site) as agent:
        await obs.wait_online()
        start = await site.send_event(obs, "db-1", 60, duration)
        await site.wait_state(obs, "db-1", "active")
        await site.wait_shed(3)
        await site.sleep(30)
        lock = Lock(site)
        if fault == "locked":
            lock.take()
        elif fault == "read-only":
            await _on_store_thread(agent, _read_only)
        else:
            await _on_store_thread(agent, _full)
        try:
            if fault == "locked":
                # A lock costs the agent wall time (sqlite's busy timeout), not event time.
                await asyncio.sleep(3.0)
            else:
                # Through the end of the event: devices come back without a database.
                await site.wait_restored(duration + 60)
                assert site.clock.now() > start + duration
                # ... and past the recovery window: the settlement is due while it cannot be stored.
                await site.sleep(start + duration + 20 + 15 - site.clock.now())
        finally:
            if fault == "locked":
                lock.release()
            elif fault == "read-only":
                await _on_store_thread(agent, _writable)
            else:
                await _on_store_thread(agent, _room)
        assert not agent.supervisor.fatal
        await site.settled(obs, "db-1", 60)
        await site.wait_restored()
    site.check(obs, {"db-1": (start, duration)})


async def test_corrupt_database_at_startup_is_moved_aside(broker: Mosquitto, tmp_path: Path) -> None:
    async with open_site(broker, tmp_path) as site, observer(site) as obs:
        db = site.db_path
        db.parent.mkdir(parents=True, exist_ok=True)
        db.write_bytes(b"this is not a database; a power cut tore its header\x00" * 200)
        agent = AgentProcess(site)
        try:
            await agent.start()
            await online(obs)
            duration = 120.0
            start = await site.send_event(obs, "cr-1", 60, duration)
            await site.wait_state(obs, "cr-1", "active")
            await site.wait_shed(2)
            await site.settled(obs, "cr-1", 60)
            await site.wait_restored()
            assert await agent.stop() == 0
        finally:
            await agent.close()
        site.check(obs, {"cr-1": (start, duration)})
        aside = list(db.parent.glob(db.name + ".corrupt-*"))
        assert len(aside) == 1, list(db.parent.iterdir())
        assert aside[0].read_bytes().startswith(b"this is not a database")
        loud = [json.loads(line) for line in agent.log_text().splitlines() if "database_corrupt" in line]
        assert loud and loud[0]["level"] == "critical", loud
        assert str(aside[0]) in loud[0]["msg"]
        store = Store(db)
        try:
            assert any("corrupt" in row[3] for row in store.audit_log(1000))
        finally:
            store.close()


def test_torn_pages_inside_a_database_are_found_at_open(tmp_path: Path) -> None:
    """Garbage over a page in the middle (the header intact): sqlite's quick check catches it at open."""
    db = tmp_path / "agent.sqlite"
    store = Store(db)
    store.add_readings([("site-meter", float(t), 500.0 + t % 7) for t in range(20_000)])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with db.open("r+b") as f:
        f.seek(4096 * 5)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    reader = Store(db)  # a reading tool (report, status) leaves the file where it is
    reader.close()
    assert reader.moved_aside is None and db.exists()
    store = Store(db, recover_corrupt=True)
    try:
        assert store.moved_aside is not None and store.moved_aside.exists()
        assert store.readings("site-meter", 0, 1e9) == []
        assert any("corrupt" in row[3] for row in store.audit_log(10))
    finally:
        store.close()
