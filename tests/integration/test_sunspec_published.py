"""A SunSpec battery laid out by pysunspec2 from the published model definitions, over real Modbus TCP.

The simulator never sees our profile: its registers are what pysunspec2 makes
of models 1, 103, 124 and 704. The agent's driver discovers the chain, reads
SoC and power, sheds by the 704 discharge set-point and restores, and every
step is read back over Modbus, from the device's side and by pysunspec2's
names. The strict variant answers exception 02 outside the chain and for
writes to read-only points.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.control.actuator import Actuator
from agent.platform.store import AsyncStore, Store
from drivers.device import Device
from drivers.modbus import ModbusTransport
from drivers.profile import load_profile
from drivers.registry import kinds
from drivers.sim.server import SimServer
from drivers.sim.sunspec_published import PublishedSunSpecBattery

pytestmark = pytest.mark.integration


def storage(transport: ModbusTransport, **extra: float) -> Device:
    k = kinds()["storage"]
    cfg = k.config(
        name="bess",
        kind="storage",
        endpoint=transport.name,
        unit_id=1,
        profile="sunspec_storage",
        capacity_kwh=200,
        max_discharge_kw=50,
        **extra,
    )
    return k.device(cfg, transport, load_profile("sunspec_storage"))


async def read_back(transport: ModbusTransport, batt: PublishedSunSpecBattery, mid: int, name: str) -> int:
    """A point's raw value read over Modbus at the address pysunspec2 gives it."""
    regs = await transport.read(1, "holding_register", batt.address(mid, name), 1)
    return int(regs[0])


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
async def test_discover_read_shed_restore(strict: bool, tmp_path: Path) -> None:
    batt = PublishedSunSpecBattery(strict=strict, soc_pct=76.5)
    server = SimServer({1: batt})
    port = await server.start()
    transport = ModbusTransport("bess-ep", host="127.0.0.1", port=port, timeout_s=1.0)
    dev = storage(transport, setpoint_revert_s=60)
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    act = Actuator({"bess": dev}, store)
    try:
        assert await dev.poll(), dev.health.last_error
        assert dev.health.rejected == {}
        # Start-up: the reversion time lands at 704 offset 29 and its enable at 28, as published.
        assert batt.get(704, "WSetRvrtTms") == 60 and batt.get(704, "WSetEnaRvrt") == 1
        assert batt.get(704, "PFWInj.PF") == 950  # the power factor set-point was left alone
        assert dev.reading("soc_pct") == pytest.approx(76.5)
        assert dev.reading("power_kw") == pytest.approx(0.0)

        back = await act.shed("bess", "power_setpoint_kw", 25.0, "ev-1", "discharge")
        assert back == pytest.approx(25.0)
        # Over Modbus, by pysunspec2's addresses: WSet in watts (WSetMod 1), enabled, scale factor 1.
        assert batt.get(704, "WSetMod") == 1 and batt.get(704, "WSetEna") == 1
        assert await read_back(transport, batt, 704, "WSet") == 0  # high word of 2500 (x10 W)
        regs = await transport.read(1, "holding_register", batt.address(704, "WSet"), 2)
        assert (regs[0] << 16) | regs[1] == 2500
        assert await dev.poll()
        assert dev.reading("power_kw") == pytest.approx(25.0)  # the battery follows, model 103 W
        assert dev.power_kw() == pytest.approx(-25.0)  # as a site load

        assert await act.restore("bess", "power_setpoint_kw", "event ended", "ev-1")
        # Restored to exactly what was there: set-point 0 and the enables as they were (disabled).
        assert await read_back(transport, batt, 704, "WSetEna") == 0
        regs = await transport.read(1, "holding_register", batt.address(704, "WSet"), 2)
        assert (regs[0] << 16) | regs[1] == 0
        assert await store.journal_open() == []
        assert await dev.poll()
        assert dev.reading("power_kw") == pytest.approx(0.0)
    finally:
        await transport.close()
        await server.stop()


async def test_a_chain_not_laid_out_as_published_is_refused() -> None:
    """A 704 of another length (an older draft) is not mapped: no write lands on the wrong register."""
    batt = PublishedSunSpecBattery(strict=True)
    # The draft's 704 had 69 registers: the same chain with 4 more in the last model.
    table = batt.regs["holding_register"]
    table[batt.starts[704] + 1] = 69
    table[batt.end - 2 :] = [0, 0, 0, 0, 0xFFFF, 0]
    batt.end += 4
    server = SimServer({1: batt})
    port = await server.start()
    transport = ModbusTransport("bess-ep", host="127.0.0.1", port=port, timeout_s=1.0)
    dev = storage(transport, setpoint_revert_s=60)
    try:
        before = list(batt.writes)
        assert not await dev.poll()
        assert "model 704" in str(dev.health.last_error) and "published definition 65" in str(
            dev.health.last_error
        )
        assert batt.writes == before
    finally:
        await transport.close()
        await server.stop()


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
async def test_a_battery_with_only_model_124_is_controlled_through_it(strict: bool, tmp_path: Path) -> None:
    """No model 704: the profile's fallback drives 124 (StorCtl_Mod discharge bit, OutWRte % of WChaMax)."""
    batt = PublishedSunSpecBattery(models=(1, 103, 124), strict=strict, soc_pct=60.0, max_w=50_000)
    server = SimServer({1: batt})
    port = await server.start()
    transport = ModbusTransport("bess-ep", host="127.0.0.1", port=port, timeout_s=1.0)
    dev = storage(transport, setpoint_revert_s=60)
    store = AsyncStore(Store(tmp_path / "agent.sqlite"))
    act = Actuator({"bess": dev}, store)
    try:
        assert await dev.poll(), dev.health.last_error
        assert dev.profile.name == "sunspec_storage_124"
        assert batt.get(124, "InOutWRte_RvrtTms") == 60
        assert dev.reading("soc_pct") == pytest.approx(60.0)
        assert await act.shed("bess", "power_setpoint_kw", 25.0, "ev-1", "discharge") == pytest.approx(25.0)
        # 25 kW of a 50 kW WChaMax: OutWRte 50 %, the DISCHARGE bit set, read over Modbus.
        assert await read_back(transport, batt, 124, "OutWRte") == 50
        assert await read_back(transport, batt, 124, "StorCtl_Mod") == 2
        assert await dev.poll()
        assert dev.reading("power_kw") == pytest.approx(25.0)
        assert await act.restore("bess", "power_setpoint_kw", "event ended", "ev-1")
        assert await read_back(transport, batt, 124, "OutWRte") == 0
        assert await read_back(transport, batt, 124, "StorCtl_Mod") == 0
        assert await dev.poll()
        assert dev.reading("power_kw") == pytest.approx(0.0)
        assert await store.journal_open() == []
    finally:
        await transport.close()
        await server.stop()
