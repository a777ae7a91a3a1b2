"""Serve register banks over real Modbus TCP with pymodbus, one server per endpoint.

Each unit id on the endpoint is a pymodbus `SimDevice` whose access hook
copies from/to our `RegisterBank`, so the physics model stays the single
source of truth. Only simulators, the demo and tests import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.profile import Function
from drivers.sim.bank import RegisterBank

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ServedBank(Protocol):
    """What the server needs of a unit's memory: a `RegisterBank` or a published-layout SunSpec device."""

    offline: bool
    fail_with: int | None
    bits: dict[str, list[bool]]
    regs: dict[str, list[int]]

    def read(self, function: Function, address: int, count: int) -> list[int] | list[bool]: ...

    def write(self, function: Function, address: int, values: Sequence[int] | Sequence[bool]) -> None: ...


_FC_TABLE: dict[int, Function] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete_input",
    3: "holding_register",
    6: "holding_register",
    16: "holding_register",
    23: "holding_register",
    4: "input_register",
}


def _pack_bits(bits: list[bool]) -> list[int]:
    regs = []
    for i in range(0, len(bits), 16):
        reg = 0
        for j, b in enumerate(bits[i : i + 16]):
            if b:
                reg |= 1 << j
        regs.append(reg)
    return regs


def _sim_device(unit_id: int, bank: ServedBank) -> SimDevice:
    async def access(
        func_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if bank.offline:
            # Off the bus: the server drops the request, the client times out (like a dead RS-485 slave).
            raise NoSuchIdException(f"unit {unit_id} is offline")
        if bank.fail_with is not None:
            return ExcCodes(bank.fail_with)
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        try:
            if values is not None:
                bank.write(table, address, values)
                return None
            if table in ("coil", "discrete_input"):
                first = (address // 16) * 16
                src = bank.bits[table]
                chunk = src[first : first + count * 16]
                chunk += [False] * (count * 16 - len(chunk))
                off = address // 16 - start_address
                registers[off : off + count] = _pack_bits(chunk)
            else:
                off = address - start_address
                registers[off : off + count] = [int(r) for r in bank.read(table, address, count)]
        except (IndexError, PermissionError):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def block(n: int, bits: bool) -> list[SimData]:
        if bits:
            return [SimData(0, count=((n + 15) // 16) * 16, values=False, datatype=DataType.BITS)]
        return [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)]

    return SimDevice(
        unit_id,
        simdata=(
            block(len(bank.bits["coil"]), True),
            block(len(bank.bits["discrete_input"]), True),
            block(len(bank.regs["holding_register"]), False),
            block(len(bank.regs["input_register"]), False),
        ),
        action=access,
    )


class SimServer:
    """A simulated Modbus endpoint serving several unit ids.

    `protocol` is "tcp" (Modbus TCP on loopback), "rtu_over_tcp" (RTU frames
    over TCP, like a serial gateway) or "rtu" (RTU frames on `serial_port`,
    e.g. one end of a pseudo-terminal pair). A unit whose bank is `offline`
    gets no answer at all, as on a real bus.
    """

    def __init__(
        self,
        banks: dict[int, RegisterBank] | dict[int, ServedBank],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        protocol: str = "tcp",
        serial_port: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        self.banks = banks
        self.host = host
        self.port = port
        self.protocol = protocol
        self.serial_port = serial_port
        self.baudrate = baudrate
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> int:
        devices = [_sim_device(uid, bank) for uid, bank in self.banks.items()]
        if self.protocol == "rtu":
            if not self.serial_port:
                raise ValueError("an rtu simulator needs serial_port")
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                ignore_missing_devices=True,
            )
            name = f"sim-modbus[{self.serial_port}]"
        else:
            if self.port == 0:
                self.port = free_port(self.host)
            self._server = ModbusTcpServer(
                devices,
                address=(self.host, self.port),
                framer=FramerType.RTU if self.protocol == "rtu_over_tcp" else FramerType.SOCKET,
                ignore_missing_devices=True,
            )
            name = f"sim-modbus[{self.port}]"
        self._task = asyncio.create_task(self._server.serve_forever(), name=name)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if self._server.transport is not None:
                break
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._server is not None


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
