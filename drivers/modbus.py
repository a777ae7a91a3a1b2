"""Modbus transports: one connection per endpoint, one request at a time, a timeout on every call.

Everything that touches pymodbus lives here, so a pymodbus upgrade is one
file's work. All unit ids on an endpoint share its connection; an
`asyncio.Lock` keeps requests strictly sequential (serial buses and many TCP
gateways cannot interleave). A lost connection is re-opened on demand with
full-jitter exponential backoff, never in a tight loop, never blocking the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException

from drivers.backoff import Backoff
from drivers.errors import ModbusIOError
from drivers.profile import Function

log = logging.getLogger("dr_agent.modbus")
# pymodbus logs every failed frame at ERROR with a hex dump; our own health
# tracking reports failures once, loudly, so keep pymodbus quiet.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class _UndecodableFrames(logging.Filter):
    """Turn pymodbus's frame-decode tracebacks into a count the transport reports as one clear line.

    A reply pymodbus cannot decode (a wrong byte count) raises inside its
    protocol callback, which asyncio logs at ERROR with a 20-line traceback,
    once per retry; the request itself then just times out.
    """

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ModbusException) and "data_received" in record.getMessage():
            _UndecodableFrames.count += 1
            return False
        return True


logging.getLogger("asyncio").addFilter(_UndecodableFrames())

#: Function code of each read, to check the reply is an answer to it.
READ_FC = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}

Protocol_ = Literal["tcp", "rtu", "rtu_over_tcp"]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass
class EndpointStats:
    requests: int = 0
    failures: int = 0
    timeouts: int = 0
    reconnects: int = 0
    last_latency_s: float = 0.0
    connected: bool = False
    last_error: str | None = None


class ModbusTransport:
    """A Modbus endpoint (TCP, RTU over serial, or RTU over TCP) shared by its unit ids."""

    def __init__(
        self,
        name: str,
        *,
        protocol: Protocol_ = "tcp",
        host: str | None = None,
        port: int = 502,
        serial_port: str | None = None,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_s: float = 1.0,
        inter_frame_delay_s: float = 0.0,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.framer = FramerType.SOCKET if protocol == "tcp" else FramerType.RTU
        if protocol == "rtu":
            # Modbus over serial line spec: frames are separated by >= 3.5 character
            # times (11 bits each), fixed at 1.75 ms above 19200 baud.
            t35 = 3.5 * 11 / baudrate if baudrate <= 19200 else 0.00175
            inter_frame_delay_s = max(inter_frame_delay_s, t35)
        self.inter_frame_delay_s = inter_frame_delay_s
        self.stats = EndpointStats()
        self._lock = asyncio.Lock()
        self._backoff = Backoff(cap_s=backoff_cap_s)
        self._last_frame_end = 0.0
        self._client: Any
        if protocol == "rtu":
            if not serial_port:
                raise ValueError(f"endpoint {name}: rtu needs a serial port")
            self.address = serial_port
            # pymodbus's serial transport is non-blocking (the port is polled by the event loop).
            self._client = AsyncModbusSerialClient(
                serial_port,
                framer=FramerType.RTU,
                baudrate=baudrate,
                parity=parity,
                stopbits=stopbits,
                bytesize=bytesize,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        elif protocol in ("tcp", "rtu_over_tcp"):
            if not host:
                raise ValueError(f"endpoint {name}: {protocol} needs a host")
            self.address = f"{host}:{port}"
            self._client = AsyncModbusTcpClient(
                host,
                port=port,
                framer=self.framer,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
            raise ValueError(f"endpoint {name}: unknown protocol {protocol!r} (tcp, rtu, rtu_over_tcp)")

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def _ensure_connected(self) -> None:
        """Open the connection if needed; a failed open backs the endpoint off (full jitter)."""
        if self._client.connected:
            return
        now = time.monotonic()
        if now < self._backoff.not_before:
            wait = self._backoff.not_before - now
            raise ModbusIOError(self.name, f"not connected (retrying in {wait:.1f} s)", retry_in_s=wait)
        error = "connect failed"
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                ok = await self._client.connect()
        except (TimeoutError, OSError) as exc:
            ok = False
            error = str(exc) or type(exc).__name__
        if not ok:
            delay = self._backoff.failed(time.monotonic())
            if self.stats.connected or self._backoff.attempt == 1:
                log.warning(
                    "endpoint=%s event=connect_failed address=%s error=%r", self.name, self.address, error
                )
            self.stats.connected = False
            self.stats.last_error = error
            raise ModbusIOError(
                self.name, f"cannot connect to {self.address} (next try in {delay:.1f} s)", retry_in_s=delay
            )
        if self._backoff.attempt:
            log.warning(
                "endpoint=%s event=connected address=%s after=%d_failures",
                self.name,
                self.address,
                self._backoff.attempt,
            )
        self._backoff.succeeded()
        self.stats.reconnects += 1
        self.stats.connected = True

    async def _call(self, what: str, coro_factory: Any) -> Any:
        """One request: under the endpoint lock, after the inter-frame gap, within the timeout.

        A unit that does not answer costs one timeout and leaves the connection
        (and the other units on it) alone; only a failed connect backs the
        endpoint off.
        """
        async with self._lock:
            await self._ensure_connected()
            if self.inter_frame_delay_s:
                wait = self._last_frame_end + self.inter_frame_delay_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            t0 = time.monotonic()
            self.stats.requests += 1
            undecodable = _UndecodableFrames.count
            try:
                # pymodbus times out first (timeout_s); ours is a guard against a wedged client.
                async with asyncio.timeout(self.timeout_s + 0.5):
                    response = await coro_factory()
            except TimeoutError:
                self._failed(f"timeout after {self.timeout_s:g} s", timeout=True)
                # The client is in an unknown state: start clean on the next request.
                self._client.close()
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}") from None
            except ModbusIOException as exc:
                if _UndecodableFrames.count != undecodable:
                    # An answer came but could not be decoded (byte count and length disagree).
                    self._failed("bad reply: undecodable frame (byte count does not match the data)")
                    self._client.close()
                    raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}") from None
                # No (valid) answer in time: the unit is silent, the line may still be fine.
                self._failed(f"no response within {self.timeout_s:g} s", timeout=True)
                if self.framer is FramerType.RTU:
                    # RTU has no transaction id: a late answer would be taken for the next one.
                    self._client.close()
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}") from exc
            except (ModbusException, OSError) as exc:
                self._failed(str(exc) or type(exc).__name__)
                self._client.close()
                raise ModbusIOError(self.name, f"{what}: {exc}") from exc
            finally:
                self._last_frame_end = time.monotonic()
            self.stats.last_latency_s = self._last_frame_end - t0
            if response.isError():
                code = getattr(response, "exception_code", None)
                name = EXCEPTION_NAMES.get(code or 0, "error")
                self._failed(f"exception {code} ({name})")
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}", code)
            return response

    def _failed(self, error: str, timeout: bool = False) -> None:
        self.stats.failures += 1
        if timeout:
            self.stats.timeouts += 1
        self.stats.last_error = error

    async def read(self, unit: int, function: Function, address: int, count: int) -> list[int] | list[bool]:
        """Read `count` registers or bits from `function`'s table on `unit`; the reply is checked."""
        c = self._client
        what = f"read {function} {address}+{count} unit {unit}"
        if function == "holding_register":
            r = await self._call(what, lambda: c.read_holding_registers(address, count=count, device_id=unit))
        elif function == "input_register":
            r = await self._call(what, lambda: c.read_input_registers(address, count=count, device_id=unit))
        elif function == "coil":
            r = await self._call(what, lambda: c.read_coils(address, count=count, device_id=unit))
        else:
            r = await self._call(what, lambda: c.read_discrete_inputs(address, count=count, device_id=unit))
        fc = getattr(r, "function_code", READ_FC[function])
        if fc != READ_FC[function]:
            self._bad_reply(what, f"function code {fc} in the answer to function {READ_FC[function]}")
        if function in ("coil", "discrete_input"):
            # Bits come padded to whole bytes: more than `count` is normal, fewer is not.
            if len(r.bits) < count or len(r.bits) >= count + 8:
                self._bad_reply(what, f"{len(r.bits)} bits for a read of {count}")
            return [bool(b) for b in r.bits[:count]]
        if len(r.registers) != count:
            self._bad_reply(what, f"{len(r.registers)} registers for a read of {count}")
        return list(r.registers)

    def _bad_reply(self, what: str, why: str) -> None:
        self._failed(f"bad reply: {why}")
        if self.framer is FramerType.RTU:
            self._client.close()  # framing may be off: start clean
        raise ModbusIOError(self.name, f"{what}: bad reply: {why}")

    async def write_registers(self, unit: int, address: int, values: Sequence[int]) -> None:
        c = self._client
        what = f"write holding {address}+{len(values)} unit {unit}"
        if len(values) == 1:
            await self._call(what, lambda: c.write_register(address, values[0], device_id=unit))
        else:
            await self._call(what, lambda: c.write_registers(address, list(values), device_id=unit))

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        c = self._client
        await self._call(
            f"write coil {address} unit {unit}", lambda: c.write_coil(address, value, device_id=unit)
        )

    async def close(self) -> None:
        self._client.close()
        self.stats.connected = False
