"""An in-process transport over simulator register banks: the driver stack without sockets.

`dr-agent simulate` and the control benchmark run hours of plant time in
seconds; they keep the real profile decoding, range checks and read-back,
and replace only the wire. Integration tests use real Modbus TCP instead.
"""

from __future__ import annotations

from drivers.modbus import EndpointStats, ModbusIOError
from drivers.profile import Function
from drivers.sim.bank import RegisterBank


class LoopbackTransport:
    def __init__(self, name: str, banks: dict[int, RegisterBank]) -> None:
        self.name = name
        self.banks = banks
        self.stats = EndpointStats(connected=True)
        self.online = True

    @property
    def connected(self) -> bool:
        return self.online

    def _bank(self, unit: int) -> RegisterBank:
        self.stats.requests += 1
        if not self.online or unit not in self.banks:
            self.stats.failures += 1
            raise ModbusIOError(self.name, f"unit {unit}: no response")
        bank = self.banks[unit]
        if bank.offline:
            self.stats.failures += 1
            raise ModbusIOError(self.name, f"unit {unit}: no response")
        if bank.fail_with is not None:
            self.stats.failures += 1
            raise ModbusIOError(self.name, f"unit {unit}: exception {bank.fail_with}", bank.fail_with)
        return bank

    async def read(self, unit: int, function: Function, address: int, count: int) -> list[int] | list[bool]:
        try:
            return list(self._bank(unit).read(function, address, count))
        except IndexError:
            raise ModbusIOError(self.name, "exception 2 (illegal data address)", 2) from None

    async def write_registers(self, unit: int, address: int, values: list[int]) -> None:
        self._bank(unit).write("holding_register", address, values)

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        self._bank(unit).write("coil", address, [value])

    async def close(self) -> None:
        pass
