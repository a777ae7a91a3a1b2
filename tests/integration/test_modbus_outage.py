"""Devices dropping off the bus mid-run, over real Modbus TCP, polled by the daemon's own poll loop.

A silent unit on a shared endpoint is marked unavailable within 3 cycles,
costs the others at most one timeout per cycle, and comes back by itself; a
stopped simulator (a dead gateway) fails fast, and its devices recover when
it returns on the same port.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from agent.platform.clock import SystemClock
from agent.runtime.daemon import Agent
from drivers.device import Device
from drivers.modbus import ModbusTransport
from drivers.profile import load_profile
from drivers.registry import kinds
from drivers.sim.bank import RegisterBank
from drivers.sim.server import SimServer

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.3


def meters(transport: ModbusTransport, units: list[int]) -> list[Device]:
    k = kinds()["meter"]
    out = []
    for u in units:
        cfg = k.config(
            name=f"m{u}", kind="meter", endpoint=transport.name, unit_id=u, profile="eastron_sdm630"
        )
        d = k.device(cfg, transport, load_profile("eastron_sdm630"))
        d.retry_cap_s = 1.0  # retry an unavailable device at least every second (default 30 s)
        out.append(d)
    return out


async def cycle(devices: list[Device]) -> float:
    """One poll cycle of one endpoint, exactly as the daemon runs it; returns its duration."""
    polls_go = asyncio.Event()
    polls_go.set()  # no event's first stage holding the polls
    t0 = time.monotonic()
    await Agent._poll_endpoint(SimpleNamespace(clock=SystemClock(), _polls_go=polls_go), devices)  # type: ignore[arg-type]
    return time.monotonic() - t0


async def test_silent_unit_on_a_shared_endpoint() -> None:
    banks = {u: RegisterBank(load_profile("eastron_sdm630")) for u in (1, 2, 3, 4)}
    for u, b in banks.items():
        b.set("power_kw", 10.0 * u)
    server = SimServer(banks)
    port = await server.start()
    transport = ModbusTransport("panel", host="127.0.0.1", port=port, timeout_s=TIMEOUT_S)
    devs = meters(transport, [1, 2, 3, 4])
    dead = devs[1]
    try:
        healthy = max([await cycle(devs) for _ in range(3)])
        assert all(d.health.available for d in devs)
        banks[2].offline = True  # pulled off the bus mid-run
        durations = []
        for n in range(1, 4):
            durations.append(await cycle(devs))
            others = [d for d in devs if d is not dead]
            # The others are read every cycle, with fresh values.
            assert all(d.power_kw() == pytest.approx(10.0 * d.unit_id) for d in others)
            assert dead.power_kw() is None  # invalidated at once, never the stale value
            if n == 3:
                assert not dead.health.available
        # At most one timeout per cycle on top of a healthy cycle.
        assert max(durations) <= healthy + TIMEOUT_S + 0.25, durations
        assert transport.connected  # a silent unit does not cost the others their connection
        # Backed off: some cycles skip the dead unit entirely.
        fast = 0
        for _ in range(6):
            if await cycle(devs) < TIMEOUT_S / 2:
                fast += 1
            await asyncio.sleep(0.1)
        assert fast >= 1
        banks[2].offline = False
        deadline = time.monotonic() + 5
        while not dead.health.available and time.monotonic() < deadline:
            await cycle(devs)
            await asyncio.sleep(0.1)
        assert dead.health.available, "the device did not come back by itself"
        assert dead.power_kw() == pytest.approx(20.0)
    finally:
        await transport.close()
        await server.stop()


async def test_stopped_simulator_fails_fast_and_recovers_on_its_own() -> None:
    bank_a = RegisterBank(load_profile("eastron_sdm630"))
    bank_b = RegisterBank(load_profile("eastron_sdm630"))
    bank_a.set("power_kw", 100.0)
    bank_b.set("power_kw", 5.0)
    server_a, server_b = SimServer({1: bank_a}), SimServer({1: bank_b})
    await server_a.start()
    port_b = await server_b.start()
    ta = ModbusTransport("a", host="127.0.0.1", port=server_a.port, timeout_s=TIMEOUT_S)
    tb = ModbusTransport("b", host="127.0.0.1", port=port_b, timeout_s=TIMEOUT_S, backoff_cap_s=1.0)
    (ma,), (mb,) = meters(ta, [1]), meters(tb, [1])
    try:
        await cycle([ma])
        await cycle([mb])
        await server_b.stop()  # the gateway dies
        for _ in range(3):
            assert await cycle([ma]) < TIMEOUT_S
            t = await cycle([mb])
            assert t < TIMEOUT_S * 2 + 0.1  # refused connections fail fast
            await asyncio.sleep(0.05)
        assert not mb.health.available and mb.power_kw() is None
        assert ma.health.available and ma.power_kw() == pytest.approx(100.0)
        server_b = SimServer({1: bank_b}, port=port_b)
        await server_b.start()
        deadline = time.monotonic() + 6
        while not mb.health.available and time.monotonic() < deadline:
            await cycle([mb])
            await asyncio.sleep(0.1)
        assert mb.health.available, f"no recovery: {mb.health.last_error}"
        assert mb.power_kw() == pytest.approx(5.0)
    finally:
        await ta.close()
        await tb.close()
        await server_a.stop()
        await server_b.stop()
