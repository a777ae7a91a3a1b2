"""The site meter misbehaving in the middle of an event: the agent holds, it never chases a bad reading.

Once the event has settled in its band, the meter goes stale (stops
answering), freezes at one value, spikes to ten times the load, or reads
zero. The agent must mark the event degraded and hold what it has shed:
no step added (chasing a spike into over-shedding) and none released
(chasing a zero into under-delivery), read from the simulators' registers
all the while. When the meter is good again the event goes on, ends on
time, restores everything and settles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.control.controller import METER_FROZEN_S
from drivers.sim.models import MeterModel
from drivers.sim.plant import SimulatedPlant
from tests.conftest import Mosquitto
from tests.faults.conftest import agent_in_process, fast_timeouts, observer, open_site

#: Registers that only move when a step is added or released (continuous actuators are trimmed).
STEPPED = {"setpoint_c", "level_pct"}


def _meter(plant: SimulatedPlant) -> MeterModel:
    m = plant.models[plant.meter_name]
    assert isinstance(m, MeterModel)
    return m


def _scaled(plant: SimulatedPlant, factor: float) -> Callable[[], None]:
    """The meter shows `factor` times the real load until the returned undo is called."""
    m = _meter(plant)
    real = m.show_total

    def show(now: float, total_kw: float, dt: float) -> None:
        real(now, total_kw * factor, dt)

    m.show_total = show  # type: ignore[method-assign]
    return lambda: setattr(m, "show_total", real)


def inject(plant: SimulatedPlant, fault: str) -> Callable[[], None]:
    """Start `fault` on the site meter; returns the function that ends it."""
    m = _meter(plant)
    if fault == "stale":
        bank = plant.banks[plant.meter_name]
        bank.offline = True
        return lambda: setattr(bank, "offline", False)
    if fault == "frozen":
        m._next_update = math.inf  # the registers keep their last value for good
        return lambda: setattr(m, "_next_update", -math.inf)
    if fault == "spike":
        return _scaled(plant, 10.0)
    if fault == "zero":
        return _scaled(plant, 0.0)
    raise ValueError(fault)


@pytest.mark.parametrize(("fault", "lasts_s"), [("stale", 90), ("frozen", 120), ("spike", 20), ("zero", 20)])
async def test_meter_fault_mid_event_holds(broker: Mosquitto, tmp_path: Path, fault: str, lasts_s: float) -> None:
    # The event outlasts the fault by minutes of simulated time: at 40x, a loaded machine may take
    # seconds of wall time to shed and settle, and an event that ended mid-fault holds nothing.
    duration = max(300.0, lasts_s + 300.0)
    async with (
        open_site(broker, tmp_path, tweak=fast_timeouts) as site,
        observer(site) as obs,
        agent_in_process(site) as agent,
    ):
        await obs.wait_online()
        start = await site.send_event(obs, "mt-1", 60, duration)
        await site.wait_state(obs, "mt-1", "active")
        await site.wait_shed(2)
        await site.sleep(90)  # settled in the band
        rec = agent.events["mt-1"]
        assert rec.control is not None
        held = {k for k in site.shed() if k[1] in STEPPED}
        steps = {a.step.id for a in rec.control.active}
        end_fault = inject(site.plant, fault)
        t0 = site.clock.now()
        # A frozen value looks like a steady load until it has not moved for METER_FROZEN_S: the
        # hold is owed from then on (plus meter_stale_s); every other fault is refused at once.
        grace = METER_FROZEN_S + site.cfg.control.meter_stale_s + 5 if fault == "frozen" else 0.0
        degraded = False
        # Through the fault (once it is over the agent acts on good readings again, as it should).
        while site.clock.now() < t0 + lasts_s - 1:
            await site.sleep(1)
            degraded |= rec.control.degraded
            if site.clock.now() < t0 + grace:
                held = {k for k in site.shed() if k[1] in STEPPED}
                steps = {a.step.id for a in rec.control.active}
                continue
            now_held = {k for k in site.shed() if k[1] in STEPPED}
            assert now_held == held, f"{fault}: the agent moved steps on a bad meter: {held} -> {now_held}"
            assert {a.step.id for a in rec.control.active} == steps, f"{fault}: steps changed"
        end_fault()
        assert site.clock.now() < start + duration - 30, "the test ran past the event"
        assert degraded, f"{fault}: the event never said it was holding on an unknown meter"
        await site.settled(obs, "mt-1", 60)
        await site.wait_restored()
        assert not rec.control.degraded, "the meter came back, the event did not"
    site.check(obs, {"mt-1": (start, duration)})
