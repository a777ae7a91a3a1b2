"""SunSpec discovery: the 'SunS' marker at any base, the model chain walk, resolving points."""

from __future__ import annotations

import pytest

from drivers.modbus import ModbusIOError
from drivers.profile import Function, load_profile
from drivers.sim.bank import RegisterBank
from drivers.sim.loopback import LoopbackTransport
from drivers.sunspec import MARKER, SunSpecError, discover, layout, model_starts


class Memory:
    """Holding registers at arbitrary addresses; reads elsewhere raise 'illegal data address'."""

    def __init__(self, regs: dict[int, int]) -> None:
        self.regs = regs
        self.reads = 0

    async def read(self, unit: int, function: Function, address: int, count: int) -> list[int]:
        self.reads += 1
        if any(a not in self.regs for a in range(address, address + count)):
            raise ModbusIOError("mem", "exception 2 (illegal data address)", 2)
        return [self.regs[a] for a in range(address, address + count)]


def chain_at(base: int, models: list[int]) -> dict[int, int]:
    regs, _ = layout(models, base)
    return {base + i: r for i, r in enumerate(regs)}


@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_discovery_finds_the_marker_at_each_base(base: int) -> None:
    mem = Memory(chain_at(base, [1, 103, 124, 704]))
    chain = await discover(mem, 1)
    assert [m.id for m in chain] == [1, 103, 124, 704]
    assert chain[0].start == base + 4  # marker (2) + model 1 header (2)
    assert chain[1].start == base + 4 + 66 + 2
    assert [m.length for m in chain] == [66, 50, 24, 65]  # model 704 as published


async def test_unknown_models_are_skipped_by_their_length() -> None:
    regs = {
        40000 + i: r
        for i, r in enumerate([*MARKER, 1, 66, *[0] * 66, 64001, 3, 7, 7, 7, 113, 60, *[0] * 60, 0xFFFF, 0])
    }
    chain = await discover(Memory(regs), 1)
    assert [m.id for m in chain] == [1, 64001, 113]
    assert model_starts(chain)[113] == 40000 + 2 + 68 + 5 + 2


async def test_no_marker_is_an_error_naming_what_was_tried() -> None:
    mem = Memory({40000: 1, 40001: 2})
    with pytest.raises(SunSpecError, match="40000: no marker; 0: exception 2; 50000: exception 2"):
        await discover(mem, 7)


async def test_a_silent_device_is_a_bus_error_not_a_missing_marker() -> None:
    class Silent:
        async def read(self, unit: int, function: Function, address: int, count: int) -> list[int]:
            raise ModbusIOError("ep", "no response")

    with pytest.raises(ModbusIOError):
        await discover(Silent(), 1)


async def test_simulator_serves_a_chain_the_profile_resolves_against() -> None:
    prof = load_profile("sunspec_storage")
    bank = RegisterBank(prof)
    assert bank.sunspec_models == [1, 103, 124, 704]
    chain = await discover(LoopbackTransport("ep", {1: bank}), 1)
    resolved = prof.resolved(model_starts(chain))
    assert all(p.address == bank.profile.point(p.name).address for p in resolved.points)
    # Scale factors are real: 12.3 kW with W_SF=1 and scale 0.001 is raw 1230 (x10 W).
    bank.set("power_kw", 12.3)
    assert bank.get_raw("W") == 1230
