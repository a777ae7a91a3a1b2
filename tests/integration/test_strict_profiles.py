"""Every shipped profile against a strict device: exception 02 on every register the profile does not map.

Over real Modbus TCP. A strict device is what a charger or gateway with a
sparse register map is in the field; reads that cross unmapped registers
would make it unreadable. Every point is read (and every writable point
written) without a single exception. A profile that says the device allows
spanning reads, against a device that does not, has its refused read split
once into per-point reads, and the split is remembered.
"""

from __future__ import annotations

import logging

import pytest

from drivers.modbus import ModbusTransport
from drivers.profile import load_profile, shipped_profiles
from drivers.registry import kinds
from drivers.sim.bank import RegisterBank
from drivers.sim.server import SimServer
from tests.integration.test_profiles_wire import exercise

pytestmark = pytest.mark.integration


async def test_every_profile_reads_every_point_on_a_strict_device() -> None:
    units: dict[int, tuple[str, RegisterBank]] = {}
    for i, name in enumerate(shipped_profiles()):
        bank = RegisterBank(load_profile(name))
        bank.strict = True
        units[i + 1] = (name, bank)
    server = SimServer({u: b for u, (_n, b) in units.items()})
    port = await server.start()
    transport = ModbusTransport("strict", host="127.0.0.1", port=port, timeout_s=1.0)
    try:
        problems = await exercise(transport, units)
    finally:
        await transport.close()
        await server.stop()
    assert problems == []
    assert transport.stats.failures == 0  # not one exception 02: no read crossed an unmapped register


async def test_a_refused_coalesced_read_is_split_once_and_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The Vestel map with a claim it does not keep: "the device answers reads across gaps".
    prof = load_profile("vestel_evc04").model_copy(update={"reads_unmapped": True, "max_gap": 2})
    bank = RegisterBank(prof)
    bank.strict = True
    bank.set("current_l1", 16.0)
    server = SimServer({255: bank})
    port = await server.start()
    transport = ModbusTransport("strict", host="127.0.0.1", port=port, timeout_s=1.0)
    k = kinds()["ev_charger"]
    cfg = k.config(name="ev", kind="ev_charger", endpoint="strict", unit_id=255, profile="vestel_evc04")
    dev = k.device(cfg, transport, prof)
    dev.read_only = True
    try:
        before = dev.requests_per_poll
        with caplog.at_level(logging.WARNING, logger="dr_agent.device"):
            assert await dev.poll(), dev.health.last_error
            assert dev.reading("power_kw") is not None and dev.values["current_l1"] == pytest.approx(16.0)
            failures = transport.stats.failures
            assert failures >= 1  # the coalesced read was refused with exception 02, then split
            assert dev.requests_per_poll > before
            assert await dev.poll()
        assert transport.stats.failures == failures  # the second poll asks only what the device has
        splits = [r for r in caplog.records if "event=read_split" in r.getMessage()]
        assert len(splits) == failures
        # The cable state is the vehicle_connected role: 2 (cable at vehicle) and up mean yes.
        for state, connected in ((1, False), (2, True), (3, True), (0, False)):
            bank.set("vehicle_connected", state)
            assert await dev.poll()
            assert dev.vehicle_connected() is connected, state  # type: ignore[attr-defined]
    finally:
        await transport.close()
        await server.stop()
