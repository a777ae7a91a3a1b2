"""A stage entering sheds its devices at once (Actuator.shed_many): every original is journalled
before its write reaches the device, refusals stay per device, and everything reads back over
Modbus and restores exactly. Real simulators over Modbus TCP, a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.config.model import SiteConfig
from agent.control.actuator import Actuator, LimitViolation, Shed
from agent.platform.clock import SystemClock
from agent.platform.store import AsyncStore, Store
from agent.runtime.daemon import build_devices
from drivers.codec import Value
from drivers.device import WriteError
from tests.conftest import agent_on_plant, polled, serve_plant, site_config
from tests.faults.proxy import ModbusFaultProxy

if TYPE_CHECKING:
    from tests.conftest import Rig


async def _read_back(
    cfg: SiteConfig, names_roles: list[tuple[str, str]]
) -> dict[tuple[str, str], float | None]:
    """Each (device, role) as a fresh connection reads it from the simulator now."""
    transports, devices = build_devices(cfg)
    try:
        for name in {n for n, _ in names_roles}:
            await devices[name].poll()
        return {(n, r): devices[n].reading(r) for n, r in names_roles}
    finally:
        for t in transports.values():
            await t.close()


async def test_a_stage_sheds_in_parallel_journal_first_and_restores(rig: Rig, tmp_path: Path) -> None:
    cfg, plant, _devices, act, store = rig
    db_path = tmp_path / "agent.sqlite"  # the rig's database, read behind the store's back
    sheds = [
        Shed("lights-warehouse", "level_pct", 50, "ev-1", "lighting/1:lights-warehouse"),
        Shed("lights-office", "level_pct", 30, "ev-1", "lighting/2:lights-office"),  # below min 50
        Shed("ev-1", "current_limit_a", 8, "ev-1", "chargers/1:ev-1"),
        Shed("ev-3", "current_limit_a", 16, "ev-1", "chargers/2:ev-3"),
    ]
    before = await _read_back(cfg, [(s.device, s.role) for s in sheds])
    # At the moment a write reaches a simulator, its original must already be journalled.
    unjournalled: list[str] = []
    written: set[str] = set()

    def watch(name: str) -> None:
        inner = plant.banks[name].on_write

        def hook(key: str, value: Value) -> None:
            with sqlite3.connect(db_path) as db:
                n = db.execute(
                    "SELECT COUNT(*) FROM journal WHERE device=? AND restored_ts IS NULL", (name,)
                ).fetchone()[0]
            written.add(name)
            if n == 0:
                unjournalled.append(f"{name}.{key}")
            if inner:
                inner(key, value)

        plant.banks[name].on_write = hook

    for s in sheds:
        watch(s.device)
    results = await act.shed_many(sheds)

    assert isinstance(results[1], LimitViolation)
    assert [r for i, r in enumerate(results) if i != 1] == [50, 8, 16]
    assert written == {"lights-warehouse", "ev-1", "ev-3"}
    assert unjournalled == []
    after = await _read_back(cfg, [(s.device, s.role) for s in sheds])
    assert after[("lights-warehouse", "level_pct")] == 50
    assert after[("ev-1", "current_limit_a")] == 8
    assert after[("ev-3", "current_limit_a")] == 16
    assert after[("lights-office", "level_pct")] == before[("lights-office", "level_pct")]
    opened = {(e.device, e.role): e.original for e in await store.journal_open()}
    assert set(opened) == {
        ("lights-warehouse", "level_pct"),
        ("ev-1", "current_limit_a"),
        ("ev-3", "current_limit_a"),
    }
    for key, original in opened.items():
        assert original == before[key]

    # A second stage entering deepens an open shed: the journal keeps the first original.
    again = await act.shed_many(
        [
            Shed("lights-warehouse", "level_pct", 45, "ev-1", "x"),
            Shed("lights-office", "level_pct", 60, "ev-1", "y"),
        ]
    )
    assert again == [45, 60]
    opened = {(e.device, e.role): e.original for e in await store.journal_open()}
    assert opened[("lights-warehouse", "level_pct")] == before[("lights-warehouse", "level_pct")]

    for device, role in list(opened):
        assert await act.restore(device, role, "test over")
    restored = await _read_back(cfg, [(s.device, s.role) for s in sheds])
    assert restored == before
    assert await store.journal_open() == []


async def test_an_unreachable_device_is_refused_alone_and_the_same_point_twice_goes_in_turn(rig: Rig) -> None:
    cfg, plant, _devices, act, store = rig
    plant.fail("ev-2")  # answers every request with an exception from now on
    results = await act.shed_many(
        [
            Shed("ev-1", "current_limit_a", 8, "e", "a"),
            Shed("ev-2", "current_limit_a", 8, "e", "b"),
        ]
    )
    assert results[0] == 8
    assert isinstance(results[1], WriteError)
    opened = {(e.device, e.role) for e in await store.journal_open()}
    assert opened == {("ev-1", "current_limit_a")}  # nothing journalled for what was never written

    twice = await act.shed_many(
        [
            Shed("ev-3", "current_limit_a", 16, "e", "c"),
            Shed("ev-3", "current_limit_a", 10, "e", "d"),
        ]
    )
    assert twice == [16, 10]
    back = await _read_back(cfg, [("ev-3", "current_limit_a")])
    assert back[("ev-3", "current_limit_a")] == 10
    assert await act.restore_all("test over") == []
    assert await store.journal_open() == []
    await asyncio.sleep(0)


async def test_a_cycle_sheds_stage_by_stage_each_stage_at_once(tmp_path: Path) -> None:
    """A large target adds several stages in one cycle: each stage goes out as one batch, in
    the decision's order, so a later stage never queues ahead of an earlier one on a shared
    endpoint; every device reads back shed over Modbus, then restored."""
    from agent.events.model import parse_event
    from tests.helpers import event_payload

    async with agent_on_plant(tmp_path) as (cfg, clock, _plant, agent):
        batches: list[list[str]] = []
        real_many, real_one = agent.actuator.shed_many, agent.actuator.shed

        async def many(sheds: list[Shed]) -> list[float | BaseException]:
            batches.append([s.step for s in sheds])
            return await real_many(sheds)

        async def one(device: str, role: str, value: float | bool, event_id: str | None, step: str) -> float:
            batches.append([step])
            return await real_one(device, role, value, event_id, step)

        agent.actuator.shed_many = many  # type: ignore[method-assign,assignment]
        agent.actuator.shed = one  # type: ignore[method-assign]
        roles = {
            "lights-warehouse": "level_pct",
            "lights-office": "level_pct",
            "ev-1": "current_limit_a",
            "ev-2": "current_limit_a",
            "ev-3": "current_limit_a",
            "ev-4": "current_limit_a",
        }
        before = await _read_back(cfg, list(roles.items()))
        await polled(agent, clock)
        ev = event_payload(
            "stages-1", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20}
        )
        await agent.handle_event(parse_event(ev))
        await agent.control_cycle(clock.now())
        assert batches, "nothing was shed"
        stage_of = {s.id: s.stage for s in agent.lifecycle.running().control.steps}  # type: ignore[union-attr]
        stages = [{stage_of.get(st, st.split("/")[0]) for st in b} for b in batches]
        assert all(len(s) == 1 for s in stages), batches  # one stage per batch
        assert len(batches[0]) > 1 and stages[0] == {"lighting"}, batches
        order = [next(iter(s)) for s in stages]
        assert len(order) == len(set(order)), order  # each stage once, no stage split around another
        shed = await _read_back(cfg, list(roles.items()))
        assert shed[("lights-warehouse", "level_pct")] == 50
        assert shed[("lights-office", "level_pct")] == 60
        assert await agent.actuator.restore_all("test over") == []
        assert await _read_back(cfg, list(roles.items())) == before


async def test_a_slow_endpoint_holds_back_only_its_own_devices(tmp_path: Path) -> None:
    """A stage across a fast endpoint and a slow one (a serial bus behind a gateway: 0.5 s a
    request): the fast endpoint's device is journalled and written while the slow one is still
    being read, not after it. Both read back shed over Modbus, then restored."""
    cfg = site_config(1883, tmp_path)
    plant, task = await serve_plant(cfg, SystemClock())
    carpark = next(e for e in cfg.modbus.endpoints if e.name == "carpark")
    proxy = ModbusFaultProxy(carpark.port)
    port = await proxy.start()
    endpoints = [
        e.model_copy(update={"port": port, "timeout_s": 2.0}) if e.name == "carpark" else e
        for e in cfg.modbus.endpoints
    ]
    slow = cfg.model_copy(update={"modbus": cfg.modbus.model_copy(update={"endpoints": endpoints})})
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    transports, devices = build_devices(slow)
    keys = [("lights-warehouse", "level_pct"), ("ev-1", "current_limit_a")]
    try:
        for d in devices.values():
            await d.poll()
        before = await _read_back(cfg, keys)
        landed: dict[str, float] = {}
        for name, _role in keys:

            def hook(_key: str, _value: Value, name: str = name) -> None:
                landed.setdefault(name, time.monotonic())

            plant.banks[name].on_write = hook
        proxy.delay_s = 0.5
        t0 = time.monotonic()
        results = await Actuator(devices, store).shed_many(
            [
                Shed("lights-warehouse", "level_pct", 50, "ev-1", "a"),
                Shed("ev-1", "current_limit_a", 8, "ev-1", "b"),
            ]
        )
        assert results == [50, 8]
        assert landed["lights-warehouse"] - t0 < 0.3, "the fast device waited for the slow one's read"
        assert landed["ev-1"] - t0 >= 0.5
        assert await _read_back(cfg, keys) == {keys[0]: 50, keys[1]: 8}
        proxy.delay_s = 0.0
        assert await Actuator(devices, store).restore_all("test over") == []
        assert await _read_back(cfg, keys) == before
    finally:
        for t in transports.values():
            await t.close()
        await store.close()
        await proxy.stop()
        task.cancel()
        await plant.stop()


async def test_an_original_the_database_cannot_journal_is_not_written(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal write fails (a full disk): no device of the stage is written, each shed says
    why, and nothing reads back changed over Modbus."""
    cfg, _plant, _devices, act, store = rig
    keys = [("lights-warehouse", "level_pct"), ("ev-1", "current_limit_a")]
    before = await _read_back(cfg, keys)

    def full(*_args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.sync, "journal_record_many", full)
    results = await act.shed_many(
        [Shed("lights-warehouse", "level_pct", 50, "e", "a"), Shed("ev-1", "current_limit_a", 8, "e", "b")]
    )
    assert [type(r) for r in results] == [sqlite3.OperationalError, sqlite3.OperationalError]
    assert await _read_back(cfg, keys) == before
    monkeypatch.undo()
    assert await store.journal_open() == []


async def test_a_cycle_whose_journal_fails_writes_nothing_and_sheds_on_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database cannot journal a stage's originals (a full disk) while an event begins: the
    cycle fails (the control loop holds it and tries again), no device is written, and no step is
    skipped for good; once the database takes writes the next cycle sheds them."""
    from agent.events.model import parse_event
    from tests.helpers import event_payload

    keys = [("lights-warehouse", "level_pct"), ("lights-office", "level_pct")]
    async with agent_on_plant(tmp_path) as (cfg, clock, _plant, agent):
        before = await _read_back(cfg, keys)
        await polled(agent, clock)

        def full(*_args: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(agent.store.sync, "journal_record_many", full)
        ev = event_payload("full-1", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20})
        await agent.handle_event(parse_event(ev))
        with pytest.raises(sqlite3.OperationalError):
            await agent.control_cycle(clock.now())
        assert await _read_back(cfg, keys) == before
        control = agent.lifecycle.running().control  # type: ignore[union-attr]
        assert control is not None and control.skipped == {}
        monkeypatch.undo()
        await agent.control_cycle(clock.now())
        shed = await _read_back(cfg, keys)
        assert shed[keys[0]] == 50 and shed[keys[1]] == 60
        assert await agent.actuator.restore_all("test over") == []
        assert await _read_back(cfg, keys) == before
