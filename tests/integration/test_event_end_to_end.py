"""The walking skeleton against real parts: Mosquitto, Modbus TCP simulators, SQLite.

An event arrives over MQTT, the agent opts in, sheds real (simulated) devices
over Modbus TCP, holds the band, ends on time, restores every device to the
exact value it replaced, and publishes the settlement.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.platform.clock import ScaledClock
from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import Observer, event_payload

pytestmark = pytest.mark.integration

SHED_ROLES = ("setpoint_c", "level_pct", "current_limit_a", "power_setpoint_kw")


def controllable_state(plant: object) -> dict[tuple[str, str], float]:
    banks = plant.banks  # type: ignore[attr-defined]
    out = {}
    for name, bank in banks.items():
        for role in SHED_ROLES:
            if bank.has(role):
                out[(name, role)] = float(bank.get(role))
    return out


async def test_event_sheds_holds_band_restores_and_settles(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    tz = ZoneInfo(cfg.site.timezone)
    origin = datetime(2026, 7, 1, 10, 30, tzinfo=tz).timestamp()
    clock = ScaledClock(60.0, origin_sim=origin)
    plant, plant_task = await serve_plant(cfg, clock)
    before = controllable_state(plant)
    agent = Agent(cfg, clock)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            start = clock.now() + 180  # 3 simulated minutes of history for the baseline
            event = event_payload("it-1", start, 8 * 60)
            await obs.publish("in/event", event)
            resp = await obs.wait_for(lambda t, b: t.endswith("/out/response"), 10)
            assert resp["event_id"] == "it-1" and resp["opt"] == "in", resp
            assert resp["committed_kw"] == pytest.approx(100.0)

            # While active: devices are really shed over Modbus (bank values changed).
            await obs.wait_for(lambda t, b: t.endswith("/out/event/it-1") and b["state"] == "active", 15)
            await asyncio.sleep(3)  # 3 simulated minutes into the event
            during = controllable_state(plant)
            changed = {k for k in before if abs(during[k] - before[k]) > 1e-6}
            assert changed, "no device was shed"

            settlement = await obs.wait_for(lambda t, b: t.endswith("/out/settlement/it-1"), 30)
    finally:
        stop.set()
        await asyncio.wait_for(agent_task, 15)
        plant_task.cancel()
        await plant.stop()

    # Ended on time and every touched device is back at the exact value it had.
    after = controllable_state(plant)
    for key in changed:
        assert after[key] == pytest.approx(before[key]), f"{key} not restored"
    lo, hi = settlement["band_pct"]
    assert lo <= settlement["verified_reduction_pct_of_peak"] <= hi, settlement
    assert settlement["in_band_fraction"] >= 0.9, settlement
    assert settlement["end"] - settlement["start"] == pytest.approx(480)
    # Live reports were published during the event, each with a sequence number.
    reports = obs.on("out/report")
    assert len(reports) >= 10
    seqs = [r["seq"] for r in reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(r["event_id"] == "it-1" for r in reports)
