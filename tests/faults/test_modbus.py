"""A Modbus endpoint misbehaving under a running event, through a fault-injecting proxy.

The `bms` endpoint (the HVAC units and the lighting) sits behind
tests/faults/proxy.py. Mid-event it stalls (accepts, never answers), answers
with exception codes, returns garbage or truncated frames, and it stays that
way past the event's end, so the restore meets the fault too. Then it heals:
the agent must have kept the event going on the other endpoints, must put
every device back by itself once the endpoint answers, and must deliver
every report and the settlement. A write cut off mid-way (the device applied
it, the answer was lost with the connection) must not leave a device shed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.faults.conftest import agent_in_process, fast_timeouts, observer, open_site, wait_until
from tests.faults.proxy import Mode

BMS = ("chiller-1", "ahu-office", "ahu-workshop", "lights-warehouse", "lights-office")


@pytest.mark.parametrize("mode", ["stall", "exception", "garbage", "truncated"])
async def test_endpoint_fault_mid_event_and_through_the_restore(
    broker: Mosquitto, tmp_path: Path, mode: Mode
) -> None:
    duration = 180.0
    async with (
        open_site(broker, tmp_path, proxy=("bms",), tweak=fast_timeouts) as site,
        observer(site) as obs,
        agent_in_process(site) as agent,
    ):
        proxy = site.proxies["bms"]
        await obs.wait_online()
        start = await site.send_event(obs, "mb-1", 60, duration)
        await site.wait_state(obs, "mb-1", "active")
        shed = await site.wait_shed(3)
        assert any(dev in BMS for dev, _ in shed), f"nothing on the faulty endpoint was shed: {shed}"
        proxy.set(mode, exception_code=4)
        # Every device behind the proxy is found out (a timeout costs wall time, not event time) ...
        await wait_until(lambda: not any(agent.devices[d].health.available for d in BMS), 20)
        # ... and the fault lasts past the end of the event, into the restore.
        await site.sleep(start + duration + 15 - site.clock.now())
        assert not agent.supervisor.fatal
        assert all(agent.devices[d].health.available for d in ("site-meter", "ev-1", "battery"))
        if mode in ("stall", "exception"):  # nothing reaches the devices: they cannot be back yet
            assert {k for k in site.shed() if k[0] in BMS}, "restored through a dead endpoint?"
        proxy.set("pass")
        await site.settled(obs, "mb-1", 60)
        await site.wait_restored()
        # Each device is retried on its own backoff (capped at 30 s of the agent's time).
        await wait_until(lambda: all(agent.devices[d].health.available for d in BMS), site.at(60) + 5)
    site.check(obs, {"mb-1": (start, duration)})


async def test_write_cut_off_mid_way_leaves_nothing_shed(broker: Mosquitto, tmp_path: Path) -> None:
    duration = 150.0
    async with (
        open_site(broker, tmp_path, proxy=("bms",), tweak=fast_timeouts) as site,
        observer(site) as obs,
        agent_in_process(site),
    ):
        proxy = site.proxies["bms"]
        await obs.wait_online()
        start = await site.send_event(obs, "mw-1", 60, duration)
        proxy.set("drop_write", drop_writes=2)  # the first two writes to the BMS: applied, never answered
        await site.wait_state(obs, "mw-1", "active")
        await site.wait_shed(3)
        await site.settled(obs, "mw-1", 60)
        await site.wait_restored()
        assert proxy.dropped == 2, proxy.dropped
    site.check(obs, {"mw-1": (start, duration)})
