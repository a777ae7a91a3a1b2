"""An event that starts at once has its first stage's current values read ahead, while it is
persisted and answered (Actuator.read_ahead): a shed takes that read as its original only while
it is young and nothing was written to the device since, else it reads again. Every case reads
the device back over Modbus after the restore. Real simulators over Modbus TCP, a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import pytest

from agent.control import actuator as actuator_mod
from agent.control.actuator import Actuator, Shed
from agent.events.model import parse_event
from agent.platform.clock import ScaledClock
from agent.runtime.daemon import POLL_HOLD_S, Agent
from drivers.device import Device
from drivers.modbus import ModbusTransport
from tests.conftest import Mosquitto, agent_on_plant, polled, serve_plant, site_config
from tests.helpers import Observer, event_payload
from tests.integration.test_parallel_shed import _read_back

if TYPE_CHECKING:
    from tests.conftest import Rig

KEY = ("lights-warehouse", "level_pct")


def _requests(dev: Device) -> int:
    """Modbus requests sent so far on the device's endpoint."""
    return cast(ModbusTransport, dev.transport).stats.requests


async def _settled(act: Actuator) -> None:
    """Wait for the reads ahead under way (each ends in a simulator's answer or an error), and for
    the open journal's read with them."""
    tasks: list[asyncio.Future[Any]] = [t for _, _, t in act._ahead.values()]
    if act._ahead_journal is not None:
        tasks.append(act._ahead_journal[2])
    if tasks:
        await asyncio.wait(tasks)


async def test_a_read_ahead_is_the_original_and_saves_the_shed_a_round_trip(rig: Rig) -> None:
    cfg, _plant, devices, act, store = rig
    before = (await _read_back(cfg, [KEY]))[KEY]
    dev = devices[KEY[0]]
    assert act.read_ahead([KEY]) == 1
    await _settled(act)
    requests = _requests(dev)
    assert await act.shed_many([Shed(*KEY, 50, "ev-1", "s")]) == [50]
    assert _requests(dev) - requests == 2  # the write and its read-back, no read first
    assert [(e.device, e.role, e.original) for e in await store.journal_open()] == [(*KEY, before)]
    assert (await _read_back(cfg, [KEY]))[KEY] == 50
    assert await act.restore(*KEY, "test over")
    assert (await _read_back(cfg, [KEY]))[KEY] == before


async def test_a_write_after_the_read_ahead_makes_the_shed_read_again(rig: Rig) -> None:
    """A restore (or any write of ours) lands between the read ahead and the shed: the value read
    ahead is no longer the device's, and taking it would restore the wrong value later."""
    cfg, _plant, devices, act, store = rig
    assert act.read_ahead([KEY]) == 1
    await _settled(act)
    await devices[KEY[0]].write_role(KEY[1], 70)  # e.g. an earlier event's restore
    requests = _requests(devices[KEY[0]])
    assert await act.shed_many([Shed(*KEY, 50, "ev-1", "s")]) == [50]
    assert _requests(devices[KEY[0]]) - requests == 3  # read fresh, write, read back
    assert [e.original for e in await store.journal_open()] == [70]
    assert await act.restore(*KEY, "test over")
    assert (await _read_back(cfg, [KEY]))[KEY] == 70


async def test_a_read_ahead_too_old_is_not_taken(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changed by hand after an old read ahead: the shed reads the hand's value, and the restore puts it back."""
    cfg, plant, _devices, act, store = rig
    assert act.read_ahead([KEY]) == 1
    await _settled(act)
    plant.banks[KEY[0]].set(KEY[1], 85)
    monkeypatch.setattr(actuator_mod, "READ_AHEAD_MAX_AGE_S", 0.0)
    assert await act.shed_many([Shed(*KEY, 50, "ev-1", "s")]) == [50]
    assert [e.original for e in await store.journal_open()] == [85]
    assert await act.restore(*KEY, "test over")
    assert (await _read_back(cfg, [KEY]))[KEY] == 85


async def test_an_event_starting_now_reads_its_first_stage_ahead_and_restores_it(tmp_path: Path) -> None:
    """Through the lifecycle: the event's arrival starts the reads of its first stage (lighting),
    the cycle's sheds take them, and everything reads back shed, then restored."""
    roles = {"lights-warehouse": "level_pct", "lights-office": "level_pct"}
    async with agent_on_plant(tmp_path) as (cfg, clock, _plant, agent):
        read: list[tuple[str, str]] = []
        real = agent.actuator.read_ahead

        def spy(keys: Iterable[tuple[str, str]]) -> int:
            keys = list(keys)
            read.extend(keys)
            return real(keys)

        agent.actuator.read_ahead = spy  # type: ignore[method-assign]
        before = await _read_back(cfg, list(roles.items()))
        await polled(agent, clock)
        ev = event_payload(
            "ahead-1", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20}
        )
        await agent.handle_event(parse_event(ev))
        assert set(read) == set(roles.items())  # the strategy's first stage, read on arrival
        await agent.control_cycle(clock.now())
        assert agent.actuator._ahead == {}  # taken by the sheds
        shed = await _read_back(cfg, list(roles.items()))
        assert shed[("lights-warehouse", "level_pct")] == 50
        assert shed[("lights-office", "level_pct")] == 60
        originals = {(e.device, e.role): e.original for e in await agent.store.journal_open()}
        assert {k: originals[k] for k in roles.items()} == before
        assert await agent.actuator.restore_all("test over") == []
        assert await _read_back(cfg, list(roles.items())) == before


async def test_the_step_is_worked_out_from_the_value_read_ahead_not_a_stale_poll(tmp_path: Path) -> None:
    """Dimmed by hand at the last poll, back up a moment before the event: the zone is shed from
    its real level (journalled as the original) instead of skipped as "already dimmed"."""
    async with agent_on_plant(tmp_path) as (cfg, clock, plant, agent):
        before = (await _read_back(cfg, [KEY]))[KEY]
        assert before is not None and before > 50
        await polled(agent, clock)
        plant.banks[KEY[0]].set(KEY[1], 40)  # by hand, below the step's 50 %
        await agent.poll_all()
        assert agent.devices[KEY[0]].reading(KEY[1]) == 40
        plant.banks[KEY[0]].set(KEY[1], before)  # and back, before the next poll
        ev = event_payload(
            "ahead-2", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20}
        )
        await agent.handle_event(parse_event(ev))
        await agent.control_cycle(clock.now())
        running = agent.lifecycle.running()
        assert running is not None and running.control is not None
        control = running.control
        assert not any(KEY[0] in step for step in control.skipped), control.skipped
        assert (await _read_back(cfg, [KEY]))[KEY] == 50
        originals = {(e.device, e.role): e.original for e in await agent.store.journal_open()}
        assert originals[KEY] == before
        assert await agent.actuator.restore_all("test over") == []
        assert (await _read_back(cfg, [KEY]))[KEY] == before


async def test_an_event_starting_now_is_answered_after_its_first_stage_is_written(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """With the control loop running, nothing waits between the event and its first stage's
    writes: the answer (and the persisted event) follow them. At the moment the provider sees the
    opt-in, the first stage already reads shed at the device; a cancel puts it back."""
    cfg = site_config(mosquitto.port, tmp_path)
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    bank = plant.banks[KEY[0]]
    before = float(bank.get(KEY[1]))
    at_answer: list[float] = []
    agent = Agent(cfg, clock)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            record = obs._record

            def seen(m: Any) -> None:  # the device as the answer arrives
                if str(m.topic).endswith("/out/response"):
                    at_answer.append(float(bank.get(KEY[1])))
                record(m)

            obs._record = seen  # type: ignore[method-assign]
            await obs.wait_online()
            await asyncio.sleep(0.2)  # a few polls: the meter is known
            ev = event_payload(
                "path-1", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20}
            )
            await obs.publish("in/event", ev)
            resp = await obs.wait_for(lambda t, b: t.endswith("/out/response"), 10)
            assert resp["opt"] == "in", resp
            assert at_answer == [50.0], at_answer  # written before the answer went out
            stored = await agent.store.events()
            assert [r["event_id"] for r in stored] == ["path-1"]
            await obs.publish("in/event", {**ev, "modification_number": 1, "status": "cancelled"})
            await obs.wait_for(
                lambda t, b: t.endswith("/out/event/path-1") and b.get("state") == "cancelled", 10
            )
            assert float(bank.get(KEY[1])) == before  # released before the cancellation is published
            states = [b.get("state") for b in obs.on("out/event/path-1")]
            assert states.count("active") == 1, states  # published once, by the arrival's bookkeeping
        stop.set()
        await asyncio.wait_for(agent_task, 15)
        assert (await _read_back(cfg, [KEY]))[KEY] == before
    finally:
        stop.set()
        await asyncio.wait_for(agent_task, 15)
        plant_task.cancel()
        await plant.stop()


async def test_the_open_journal_read_ahead_saves_the_shed_a_database_trip(rig: Rig) -> None:
    """The open journal is read with the values (is a device shed already?), so the shed that
    takes them reads nothing more: neither the device nor the database."""
    cfg, _plant, devices, act, store = rig
    before = (await _read_back(cfg, [KEY]))[KEY]
    reads: list[str] = []
    real = store.sync.journal_open

    def counted(*args: Any) -> Any:
        reads.append("journal_open")
        return real(*args)

    store.sync.journal_open = counted  # type: ignore[method-assign]
    assert act.read_ahead([KEY]) == 1
    await _settled(act)
    assert reads == ["journal_open"]
    requests = _requests(devices[KEY[0]])
    assert await act.shed_many([Shed(*KEY, 50, "ev-1", "s")]) == [50]
    assert reads == ["journal_open"]  # none more for the shed
    assert _requests(devices[KEY[0]]) - requests == 2  # the write and its read-back
    assert [(e.device, e.role, e.original) for e in await store.journal_open()] == [(*KEY, before)]
    assert await act.restore(*KEY, "test over")
    assert (await _read_back(cfg, [KEY]))[KEY] == before


async def test_a_journal_change_after_the_read_ahead_makes_the_shed_read_it_again(rig: Rig) -> None:
    """Another shed of the device is journalled between the read ahead (which found it not shed)
    and this shed: the journal is read again, so this shed keeps the first original instead of
    journalling the shed value as one; the restore puts the real original back."""
    cfg, _plant, _devices, act, store = rig
    before = (await _read_back(cfg, [KEY]))[KEY]
    assert act.read_ahead([KEY]) == 1
    await _settled(act)
    assert await act.shed(*KEY, 60, "ev-0", "first") == 60  # e.g. an earlier event's stage
    assert await act.shed_many([Shed(*KEY, 50, "ev-1", "s")]) == [50]
    assert [(e.event_id, e.original) for e in await store.journal_open()] == [
        ("ev-0", before),
        ("ev-1", before),
    ]
    assert (await _read_back(cfg, [KEY]))[KEY] == 50
    assert await act.restore(*KEY, "test over")
    assert (await _read_back(cfg, [KEY]))[KEY] == before


async def test_a_new_events_first_stage_is_on_the_wire_before_its_contract_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reads of a new event's first stage go out before the contract is even decided; one the
    contract refuses changes nothing (no journal row, the zones as they were)."""
    from agent.events import lifecycle as lifecycle_mod

    roles = {"lights-warehouse": "level_pct", "lights-office": "level_pct"}
    async with agent_on_plant(tmp_path) as (cfg, clock, _plant, agent):
        assert agent.devices["lights-office"].transport is agent.devices[KEY[0]].transport
        before = await _read_back(cfg, list(roles.items()))
        await polled(agent, clock)
        bms = cast(ModbusTransport, agent.devices[KEY[0]].transport)
        sent_at_decision: list[int] = []
        real_decide = lifecycle_mod.decide_opt

        def decide(*args: Any, **kw: Any) -> Any:
            sent_at_decision.append(bms.stats.requests)
            return real_decide(*args, **kw)

        monkeypatch.setattr(lifecycle_mod, "decide_opt", decide)
        # Longer than the contract allows a realtime event: refused, after its reads went out.
        requests = bms.stats.requests
        refused = event_payload(
            "early-0", clock.now(), 3600, program="realtime", target={"reduce_pct_of_peak": 20}
        )
        await agent.handle_event(parse_event(refused))
        assert agent.lifecycle.events["early-0"].opt.code == "event_too_long"
        assert sent_at_decision[-1] - requests >= 1  # both zones are on one endpoint: the first is out
        await agent.control_cycle(clock.now())
        assert await agent.store.journal_open() == []
        assert await _read_back(cfg, list(roles.items())) == before

        requests = bms.stats.requests
        ev = event_payload(
            "early-1", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20}
        )
        await agent.handle_event(parse_event(ev))
        assert agent.lifecycle.events["early-1"].opt.opt == "in"
        assert sent_at_decision[-1] - requests >= 1
        await agent.control_cycle(clock.now())
        assert (await _read_back(cfg, [KEY]))[KEY] == 50
        assert await agent.actuator.restore_all("test over") == []
        assert await _read_back(cfg, list(roles.items())) == before


async def test_a_new_event_holds_the_polls_until_its_first_writes_are_out(tmp_path: Path) -> None:
    """From a new event's reads ahead to its first writes no device starts a poll: a poll burst
    would stand on the endpoints and in the event loop between the event and its writes. The
    hold ends with the cycle that writes the first stage (or by itself after POLL_HOLD_S)."""
    roles = {"lights-warehouse": "level_pct", "lights-office": "level_pct"}
    async with agent_on_plant(tmp_path) as (cfg, clock, _plant, agent):
        before = await _read_back(cfg, list(roles.items()))
        await polled(agent, clock)
        ev = event_payload("hold-1", clock.now(), 1800, program="realtime", target={"reduce_pct_of_peak": 20})
        await agent.handle_event(parse_event(ev))
        bms = [d for d in agent.devices.values() if d.config.endpoint == "bms"]
        polls = [d.health.polls for d in bms]
        poller = asyncio.create_task(agent._poll_endpoint(bms))
        await asyncio.sleep(0.05)
        assert [d.health.polls for d in bms] == polls  # held: the event's writes go first
        await agent.control_cycle(clock.now())
        shed = await _read_back(cfg, list(roles.items()))
        assert shed[("lights-warehouse", "level_pct")] == 50
        await asyncio.wait_for(poller, 5)  # released by the first writes
        assert all(d.health.polls > n for d, n in zip(bms, polls, strict=True))

        # A refused or stuck event does not hold the polls for longer than POLL_HOLD_S.
        agent.hold_polls()
        polls = [d.health.polls for d in bms]
        await asyncio.wait_for(agent._poll_endpoint(bms), POLL_HOLD_S + 2)
        assert all(d.health.polls > n for d, n in zip(bms, polls, strict=True))
        assert await agent.actuator.restore_all("test over") == []
        assert await _read_back(cfg, list(roles.items())) == before
