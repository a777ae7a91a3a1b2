"""A provider's modification mid-event is a new target, against real parts (Mosquitto, Modbus TCP, SQLite).

The demo site and its event (15 minutes of meter history first, 10 % of
peak); three minutes in, the provider raises the target to 16 %. Within 60 s
(agent clock) the response, the retained state and the live reports carry
the new commitment, the metered curtailment is in the new target's range
(`target_kw`: the commitment ± the deadband) and more is shed than before,
read back over Modbus. After the settlement, control's real-time baseline
and the settlement's `realtime_15min` agree to the watt.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.runtime.daemon import Agent
from tests.conftest import Mosquitto, serve_plant, site_config
from tests.helpers import FastForwardClock, Observer, event_payload
from tests.integration.test_event_end_to_end import controllable_state
from tests.integration.test_supervision import changed, read_back

pytestmark = pytest.mark.integration

EVENT = "mod-1"


async def test_modification_from_10_to_16_pct_reaches_the_new_target_within_60_s(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = site_config(mosquitto.port, tmp_path)
    tz = ZoneInfo(cfg.site.timezone)
    clock = FastForwardClock(30.0, origin_sim=datetime(2026, 7, 1, 10, 30, tzinfo=tz).timestamp())
    plant, plant_task = await serve_plant(cfg, clock)
    before = await read_back(cfg)
    agent = Agent(cfg, clock, metrics=False)
    stop = asyncio.Event()
    agent_task = asyncio.create_task(agent.run(stop))
    metered: list[tuple[float, float]] = []

    async def sample_meter() -> None:
        # The site meter's value as the plant holds it, on the agent's clock.
        while True:
            metered.append((clock.now(), plant.site_kw()))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample_meter())
    try:
        async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root) as obs:
            await obs.wait_online()
            start = clock.now() + 16 * 60  # the demo's 15 minutes of history for the real-time baseline
            event = event_payload(EVENT, start, 8 * 60, recovery_s=120)
            await obs.publish("in/event", event)
            first = await obs.wait_for(lambda t, b: t.endswith("/out/response"), 10)
            assert first["committed_kw"] == pytest.approx(100.0)
            # The history (polls only, nothing controlled) at 120x; the event at the test's 30x.
            await clock.fast_forward(start - 60)
            await obs.wait_for(lambda t, b: t.endswith(f"/out/event/{EVENT}") and b["state"] == "active", 60)
            await clock.sleep(start + 180 - clock.now())  # in band on the first target
            at_10 = controllable_state(plant)  # from the banks: a Modbus read here would slow the agent

            t_mod = clock.now()
            await obs.publish(
                "in/event", {**event, "modification_number": 1, "target": {"reduce_pct_of_peak": 16}}
            )
            resp = await obs.wait_for(
                lambda t, b: t.endswith("/out/response") and b.get("modification_number") == 1, 10
            )
            assert resp["opt"] == "in" and resp["committed_kw"] == pytest.approx(160.0), resp
            await clock.sleep(t_mod + 60 - clock.now())

            # The retained state: a fresh subscriber sees the new commitment.
            async with Observer(mosquitto.host, mosquitto.port, cfg.topic_root, "late-subscriber") as late:
                state = await late.wait_for(lambda t, b: t.endswith(f"/out/event/{EVENT}"), 10)
            assert state["modification_number"] == 1 and state["state"] == "active", state
            assert state["committed_kw"] == pytest.approx(160.0), state

            # Every live report from one report interval after the modification carries it.
            later = [r for r in obs.on("out/report") if r["ts"] >= t_mod + cfg.control.report_interval_s]
            assert later, "no live report after the modification"
            assert all(r["committed_kw"] == pytest.approx(160.0) for r in later), later[:3]
            lo, hi = later[-1]["target_kw"]
            assert lo <= 160.0 <= hi
            baseline = later[-1]["baseline_kw"]

            # The metered curtailment (10-s mean ending 60 s after the modification) is in that range.
            window = [kw for ts, kw in metered if t_mod + 50 <= ts < t_mod + 60]
            assert len(window) >= 5
            realized = baseline - sum(window) / len(window)
            assert lo <= realized <= hi, f"{realized:.1f} kW metered curtailment, target {lo}-{hi} kW"

            # More is shed than before the modification, read back over Modbus.
            at_16 = await read_back(cfg)
            assert {k for k, v in at_16.items() if abs(v - at_10[k]) > 1e-6}, "nothing more was shed"

            settlement = await obs.wait_for(lambda t, b: t.endswith(f"/out/settlement/{EVENT}"), 120)
            # Everything is back at the exact value it had, read over Modbus.
            assert not changed(before, await read_back(cfg))
    finally:
        sampler.cancel()
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent_task, 20)
        plant_task.cancel()
        await plant.stop()

    assert settlement["committed_kw"] == pytest.approx(160.0)
    # Control and settlement ran on the same real-time baseline, to the watt.
    assert settlement["control_baseline_kw"] == pytest.approx(baseline, abs=1e-3)
    assert settlement["baselines"]["realtime_15min"]["mean_kw"] == pytest.approx(
        settlement["control_baseline_kw"], abs=1e-3
    )
