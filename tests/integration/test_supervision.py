"""Supervision in-process, over real Modbus TCP: hours of broker outage, and a silent device.

- The broker down for 2,000 reconnect attempts (the link's sleep patched, so
  the attempts take seconds, not hours) overflows nothing, and control goes
  on: devices are shed, cycles keep running, everything is restored after.
- One silent device on one endpoint costs the devices on every other
  endpoint nothing: each keeps its poll interval (max gap <= interval + 10 %).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config.model import SiteConfig
from agent.events.model import parse_event
from agent.platform.clock import ScaledClock, SystemClock
from agent.runtime.daemon import Agent, build_devices
from drivers.sim.server import free_port
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import event_payload
from tests.integration.test_event_end_to_end import SHED_ROLES

pytestmark = pytest.mark.integration


async def read_back(cfg: SiteConfig) -> dict[tuple[str, str], float]:
    """Every controllable value of the site, read over Modbus TCP by a fresh client."""
    transports, devices = build_devices(cfg)
    out = {}
    try:
        for name, d in devices.items():
            d.read_only = True
            assert await d.poll(), f"{name}: {d.health.last_error}"
            for role in SHED_ROLES:
                v = d.reading(role)
                if v is not None:
                    out[(name, role)] = v
    finally:
        for t in transports.values():
            await t.close()
    return out


def changed(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> set[tuple[str, str]]:
    return {k for k, v in after.items() if abs(v - before[k]) > 1e-6}


async def test_broker_down_for_2000_reconnects_overflows_nothing_and_control_goes_on(tmp_path: Path) -> None:
    cfg = site_config(free_port(), tmp_path)  # nothing listens there: every connect is refused
    tz = ZoneInfo(cfg.site.timezone)
    clock = ScaledClock(30.0, origin_sim=datetime(2026, 7, 1, 11, 0, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = await read_back(cfg)
    agent = Agent(cfg, clock, metrics=False)
    delays: list[float] = []

    async def outage_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    agent.mqtt_sleep = outage_sleep
    cycles = 0
    real_cycle = agent.control_cycle

    async def counted(now: float) -> None:
        nonlocal cycles
        cycles += 1
        await real_cycle(now)

    agent.control_cycle = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.polled_once.wait(), 20)
        await agent.handle_event(parse_event(event_payload("down-1", clock.now() + 30, 7200)))
        async with asyncio.timeout(60):
            while len(changed(before, await read_back(cfg))) < 2:  # noqa: ASYNC110 - polls Modbus
                await asyncio.sleep(0.2)
        async with asyncio.timeout(240):
            while agent.mqtt is None or agent.mqtt.failed_connects < 2000:
                assert not task.done(), task
                await asyncio.sleep(0.2)
        at_2000 = cycles
        await asyncio.sleep(3)  # control keeps cycling after hours' worth of reconnects
        assert cycles > at_2000
        assert agent.mqtt.backoff.attempt >= 2000
        assert max(delays) <= 30.0
        assert agent.supervisor.health["mqtt"].restarts == 0  # the link never crashed
        assert agent.supervisor.health["control"].restarts == 0
        assert changed(before, await read_back(cfg)), "control let go of the event"
        stop.set()
        await asyncio.wait_for(task, 60)
    finally:
        if not task.done():
            task.cancel()
        plant_task.cancel()
        after = await read_back(cfg)
        await plant.stop()
    assert after == pytest.approx(before)


async def test_a_silent_device_costs_only_its_own_endpoint(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    interval = cfg.modbus.poll_interval_s
    plant, plant_task = await serve_plant(cfg, SystemClock())
    silent = "chiller-1"
    plant.banks[silent].offline = True  # never answers: every poll of it costs a full timeout
    silent_ep = next(d.endpoint for d in cfg.devices if d.name == silent)
    watched = [d.name for d in cfg.devices if d.endpoint != silent_ep]
    assert watched
    agent = Agent(cfg, SystemClock(), metrics=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    seen: dict[str, list[float]] = {n: [] for n in watched}
    try:
        await asyncio.wait_for(agent.polled_once.wait(), 20)
        t_end = time.monotonic() + 10 * interval
        while time.monotonic() < t_end:
            for n in watched:
                ts = agent.devices[n].health.last_ok_ts
                if ts is not None and (not seen[n] or ts != seen[n][-1]):
                    seen[n].append(ts)
            await asyncio.sleep(0.01)
        assert not agent.devices[silent].health.available
        assert agent.devices[silent].health.failures >= 3
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        plant_task.cancel()
        await plant.stop()
    for n, stamps in seen.items():
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert len(gaps) >= 8, (n, stamps)
        assert max(gaps) <= interval * 1.1, f"{n}: poll gaps {[round(g, 3) for g in gaps]}"
