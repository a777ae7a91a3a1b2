"""The daemon survives its database failing, numbers reports durably, and never leaves orphans shed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from agent.cli.simulate import loopback_transports
from agent.config.load import load_site_config
from agent.platform.clock import ManualClock
from agent.platform.store import Store
from agent.runtime.daemon import ORPHAN_GRACE_S, Agent
from drivers.sim.plant import SimulatedPlant
from tests.conftest import DEMO_CONFIG


def make_agent(tmp_path: Path) -> tuple[Agent, SimulatedPlant]:
    cfg, _ = load_site_config(DEMO_CONFIG)
    plant = SimulatedPlant.build(cfg.devices, peak_kw=cfg.contract.peak_kw, meter_name=cfg.site.meter)
    clock = ManualClock(1_782_000_000.0)
    plant.step(clock.now())
    agent = Agent(
        cfg, clock, metrics=False, transports=loopback_transports(cfg, plant), store_path=str(tmp_path / "a.sqlite")
    )
    return agent, plant


def test_numbered_outbox_messages_never_reuse_a_number_across_restarts(tmp_path: Path) -> None:
    s = Store(tmp_path / "o.sqlite")
    assert [s.outbox_put_numbered("t", {"x": i}, "report_seq") for i in range(3)] == [1, 2, 3]
    s.close()
    s = Store(tmp_path / "o.sqlite")  # a restart (or a crash right after the put)
    assert s.outbox_put_numbered("t", {"x": 9}, "report_seq") == 4
    payloads = [m.payload for m in s.outbox_pending()]
    assert payloads[-1] == '{"x":9,"seq":4}'
    s.close()


async def test_readings_are_kept_while_the_database_refuses_writes(tmp_path: Path) -> None:
    agent, _plant = make_agent(tmp_path)
    try:
        await agent.poll_all()
        assert agent.pending.rows
        real = agent.store.sync.add_batch

        def full_disk(raw: object, minutes: object, full_rate: object = None) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        agent.store.sync.add_batch = full_disk  # type: ignore[method-assign]
        await agent.flush(final=True)  # must not raise
        kept = agent.buffer.pending()
        assert kept > 0 and agent.readings_dropped == 0
        agent.store.sync.add_batch = real  # type: ignore[method-assign]
        await agent.flush()
        assert agent.buffer.pending() == 0
        rows = await agent.store.readings(agent.meter.name, 0, 2e9)
        assert len(rows) == 1
        minutes = await agent.store.minute_means(agent.meter.name, 0, 2e9)
        assert len(minutes) == 1
    finally:
        await agent.store.close()


async def test_control_loop_survives_a_failing_cycle(tmp_path: Path) -> None:
    agent, _plant = make_agent(tmp_path)
    calls = 0

    async def failing(now: float) -> None:
        nonlocal calls
        calls += 1
        raise sqlite3.OperationalError("disk I/O error")

    agent.control_cycle = failing  # type: ignore[method-assign]
    task = asyncio.create_task(agent._control_loop())
    try:
        await asyncio.sleep(0.1)
        assert not task.done(), "the control loop died"
        assert calls >= 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await agent.store.close()


async def test_orphaned_sheds_are_restored_after_the_grace_period(tmp_path: Path) -> None:
    agent, plant = make_agent(tmp_path)
    try:
        await agent.poll_all()
        before = plant.banks["lights-office"].get("level_pct")
        await agent.actuator.shed("lights-office", "level_pct", 60, "diagnose-test-shed", "test-shed.lights-office")
        assert plant.banks["lights-office"].get("level_pct") == 60
        assert await agent.restore_orphans() == []  # fresh: a test-shed may still be running
        # Age the journal entry past the grace period, as if the test-shed was interrupted.
        agent.store.sync.db.execute("UPDATE journal SET ts = ts - ?", (ORPHAN_GRACE_S + 1,))
        assert await agent.restore_orphans() == ["lights-office.level_pct"]
        assert plant.banks["lights-office"].get("level_pct") == before
        assert await agent.store.journal_open() == []
    finally:
        await agent.store.close()


async def test_restore_works_from_memory_when_the_database_fails(tmp_path: Path) -> None:
    agent, plant = make_agent(tmp_path)
    try:
        await agent.poll_all()
        before = plant.banks["ev-1"].get("current_limit_a")
        await agent.actuator.shed("ev-1", "current_limit_a", 8.0, "e1", "chargers/1:ev-1")
        assert plant.banks["ev-1"].get("current_limit_a") == 8.0

        def broken(*args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        agent.store.sync.journal_open = broken  # type: ignore[method-assign,assignment]
        agent.store.sync.journal_restored = broken  # type: ignore[method-assign,assignment]
        assert await agent.actuator.restore("ev-1", "current_limit_a", "event ended", "e1")
        assert plant.banks["ev-1"].get("current_limit_a") == before
    finally:
        await agent.store.close()
