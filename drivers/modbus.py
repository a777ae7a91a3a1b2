"""Modbus transports: one connection per endpoint, one request at a time, a timeout on every call.

Modbus TCP runs on a small client of our own (`_MbapLink`: struct-packed MBAP
frames on an `asyncio.Protocol`): pymodbus's client machinery (a request
object, transaction manager, framer and `wait_for` per request) cost more CPU
per request than all our decoding, see docs/performance.md "Polling". RTU,
over serial or TCP, stays on pymodbus, imported only when an endpoint needs
it; everything that touches pymodbus lives here, so a pymodbus upgrade is one
file's work. All unit ids on an endpoint share its connection; an
`asyncio.Lock` keeps requests strictly sequential (serial buses and many TCP
gateways cannot interleave). A lost connection is re-opened on demand with
full-jitter exponential backoff, never in a tight loop, never blocking the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, cast

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
    installed = False

    def filter(self, record: logging.LogRecord) -> bool:
        from pymodbus.exceptions import ModbusException

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ModbusException) and "data_received" in record.getMessage():
            _UndecodableFrames.count += 1
            return False
        return True


def _pymodbus() -> Any:
    """pymodbus, imported for RTU endpoints only: a Modbus TCP site never loads it (3.6 MB)."""
    import pymodbus
    import pymodbus.client

    if not _UndecodableFrames.installed:
        logging.getLogger("asyncio").addFilter(_UndecodableFrames())
        _UndecodableFrames.installed = True
    return pymodbus


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


_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit + PDU), unit id
_READ = struct.Struct(">BHH")  # function code, address, count (also 05/06 write requests)
_REGS = [struct.Struct(f">{n}H") for n in range(126)]  # register payloads by count (at most 125)
#: Longest MBAP length field: unit id + a 253-byte PDU.
_MAX_LENGTH = 254


class _BadFrame(Exception):
    """The byte stream is not Modbus TCP frames any more: framing is lost, only a new connection helps."""


class _MbapLink(asyncio.Protocol):
    """Modbus TCP framing over one connection, at most one request in flight (the endpoint's lock).

    A reply is taken for the request in flight only if its transaction id is
    the request's; anything else (a late answer to a request that timed out)
    is dropped, never mistaken for the next answer. Replies may arrive split
    over several segments or several in one.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.tid = 0
        self.buf = b""
        #: Replies dropped because no request was waiting for them (late or stray).
        self.dropped = 0

    @property
    def connected(self) -> bool:
        return self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not necessarily asyncio's class: uvloop's is its own (the
        # `speed` extra), so no isinstance check here.
        transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # One small request, then wait for its answer: never hold it back (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buf = b""
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(
                ConnectionError(f"connection lost: {exc}" if exc else "connection closed by the peer")
            )

    def send(self, unit: int, pdu: bytes) -> asyncio.Future[bytes]:
        """Send one request; the future gets the reply's unit id and PDU (bytes)."""
        assert self.transport is not None
        self.tid = tid = self.tid % 0xFFFF + 1
        self.waiter = w = asyncio.get_running_loop().create_future()
        self.transport.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
        return w

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while len(buf) >= 8:
            tid, pid, length, _unit = _MBAP.unpack_from(buf)
            if pid != 0 or not 2 <= length <= _MAX_LENGTH:
                self.buf = b""
                self._lost(f"not a Modbus TCP frame (protocol id {pid}, length {length})")
                return
            end = 6 + length
            if len(buf) < end:
                break
            frame, buf = buf[6:end], buf[end:]
            w = self.waiter
            if w is None or w.done() or tid != self.tid:
                self.dropped += 1
                log.debug("event=reply_dropped tid=%d expected=%d", tid, self.tid)
                continue
            w.set_result(frame)
        self.buf = buf

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost fails the request in flight

    def _lost(self, why: str) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(_BadFrame(why))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _expire(w: asyncio.Future[bytes]) -> None:
    if not w.done():
        w.set_exception(TimeoutError())


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
        #: RTU framing (serial, RTU over TCP): no transaction id, so a late answer cannot be told apart.
        self.rtu_framing = protocol != "tcp"
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
        self._link: _MbapLink | None = None
        self._client: Any
        if protocol == "rtu":
            if not serial_port:
                raise ValueError(f"endpoint {name}: rtu needs a serial port")
            self.address = serial_port
            # pymodbus's serial transport is non-blocking (the port is polled by the event loop).
            pm = _pymodbus()
            self._client = pm.client.AsyncModbusSerialClient(
                serial_port,
                framer=pm.FramerType.RTU,
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
            self._host, self._port = host, port
            if protocol == "tcp":
                self._client = None  # our own client (_MbapLink), opened on the first request
                return
            pm = _pymodbus()
            self._client = pm.client.AsyncModbusTcpClient(
                host,
                port=port,
                framer=pm.FramerType.RTU,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        else:
            raise ValueError(f"endpoint {name}: unknown protocol {protocol!r} (tcp, rtu, rtu_over_tcp)")

    @property
    def connected(self) -> bool:
        if self._client is None:
            return self._link is not None and self._link.connected
        return bool(self._client.connected)

    async def _open_link(self) -> bool:
        """Modbus TCP: a new connection of our own client."""
        if self._link is not None:
            self._link.close()
        _t, self._link = await asyncio.get_running_loop().create_connection(_MbapLink, self._host, self._port)
        return True

    async def _ensure_connected(self) -> None:
        """Open the connection if needed; a failed open backs the endpoint off (full jitter)."""
        if self.connected:
            return
        now = time.monotonic()
        if now < self._backoff.not_before:
            wait = self._backoff.not_before - now
            raise ModbusIOError(self.name, f"not connected (retrying in {wait:.1f} s)", retry_in_s=wait)
        error = reason = "connect failed"
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                ok = await (self._open_link() if self._client is None else self._client.connect())
        except TimeoutError as exc:
            ok = False
            error = reason = str(exc) or type(exc).__name__
        except OSError as exc:
            ok = False
            # Refused, unreachable: "connect failed" as pymodbus says it; the log line says why.
            reason = str(exc) or type(exc).__name__
            if self._client is not None:
                error = reason
        if not ok:
            delay = self._backoff.failed(time.monotonic())
            if self.stats.connected or self._backoff.attempt == 1:
                log.warning(
                    "endpoint=%s event=connect_failed address=%s error=%r", self.name, self.address, reason
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

    async def _start_request(self) -> float:
        """Wait out the inter-frame gap since the last frame, count the request, return its start.

        Called under the endpoint lock by both clients (pymodbus for RTU, our own for TCP)."""
        if self.inter_frame_delay_s:
            wait = self._last_frame_end + self.inter_frame_delay_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self.stats.requests += 1
        return time.monotonic()

    async def _call(self, what: str, coro_factory: Any) -> Any:
        """One request: under the endpoint lock, after the inter-frame gap, within the timeout.

        A unit that does not answer costs one timeout and leaves the connection
        (and the other units on it) alone; only a failed connect backs the
        endpoint off.
        """
        from pymodbus.exceptions import ModbusException, ModbusIOException

        async with self._lock:
            await self._ensure_connected()
            t0 = await self._start_request()
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
                if self.rtu_framing:
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

    async def _request(self, what: str, unit: int, pdu: bytes) -> bytes:
        """Modbus TCP on our own client: one request under the endpoint lock, within the timeout.

        Returns the reply's PDU; an exception reply raises ModbusIOError with its code. A unit
        that does not answer costs one timeout and leaves the connection alone (a late answer
        is dropped by its transaction id), unless part of a reply came: then the stream's
        framing is unknown and the connection is closed.
        """
        async with self._lock:
            link = self._link
            if link is None or link.transport is None:
                await self._ensure_connected()
                link = self._link
                assert link is not None
            t0 = await self._start_request()
            w = link.send(unit, pdu)
            timer = asyncio.get_running_loop().call_later(self.timeout_s, _expire, w)
            try:
                frame = await w
            except TimeoutError:
                self._failed(f"no response within {self.timeout_s:g} s", timeout=True)
                if link.buf:
                    link.close()
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}") from None
            except _BadFrame as exc:
                self._failed(f"bad reply: {exc}")
                link.close()
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}") from None
            except OSError as exc:
                self._failed(str(exc) or type(exc).__name__)
                link.close()
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}") from None
            finally:
                timer.cancel()
                link.waiter = None
                self._last_frame_end = time.monotonic()
            self.stats.last_latency_s = self._last_frame_end - t0
        fc = pdu[0]
        if frame[0] != unit:
            self._bad_reply(what, f"unit id {frame[0]} in the answer to unit {unit}")
        if frame[1] != fc:
            if frame[1] == fc | 0x80 and len(frame) == 3:
                code = frame[2]
                self._failed(f"exception {code} ({EXCEPTION_NAMES.get(code, 'error')})")
                raise ModbusIOError(self.name, f"{what}: {self.stats.last_error}", code)
            self._bad_reply(what, f"function code {frame[1]} in the answer to function {fc}")
        return frame[1:]

    async def _read_tcp(
        self, unit: int, function: Function, address: int, count: int
    ) -> list[int] | list[bool]:
        what = f"read {function} {address}+{count} unit {unit}"
        reply = await self._request(what, unit, _READ.pack(READ_FC[function], address, count))
        n = len(reply) - 2
        if n < 0 or reply[1] != n:
            self._bad_reply(what, "undecodable frame (byte count does not match the data)")
        if function in ("coil", "discrete_input"):
            # Bits come padded to whole bytes, least significant bit first.
            if n != (count + 7) // 8:
                self._bad_reply(what, f"{n * 8} bits for a read of {count}")
            return [bool(reply[2 + (i >> 3)] >> (i & 7) & 1) for i in range(count)]
        if n != 2 * count:
            if n % 2:
                self._bad_reply(what, "undecodable frame (an odd number of data bytes)")
            self._bad_reply(what, f"{n // 2} registers for a read of {count}")
        return list(_REGS[count].unpack_from(reply, 2))

    async def _write_tcp(self, what: str, unit: int, pdu: bytes) -> None:
        reply = await self._request(what, unit, pdu)
        if len(reply) != 5:  # function code, address, value or count echoed
            self._bad_reply(what, f"{len(reply)}-byte answer to function {pdu[0]}")

    def _failed(self, error: str, timeout: bool = False) -> None:
        self.stats.failures += 1
        if timeout:
            self.stats.timeouts += 1
        self.stats.last_error = error

    async def read(self, unit: int, function: Function, address: int, count: int) -> list[int] | list[bool]:
        """Read `count` registers or bits from `function`'s table on `unit`; the reply is checked."""
        c = self._client
        if c is None:
            return await self._read_tcp(unit, function, address, count)
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

    def _bad_reply(self, what: str, why: str) -> NoReturn:
        self._failed(f"bad reply: {why}")
        if self.rtu_framing:
            self._client.close()  # framing may be off: start clean
        raise ModbusIOError(self.name, f"{what}: bad reply: {why}")

    async def write_registers(self, unit: int, address: int, values: Sequence[int]) -> None:
        c = self._client
        what = f"write holding {address}+{len(values)} unit {unit}"
        if c is None:
            n = len(values)
            try:
                if n == 1:
                    pdu = _READ.pack(6, address, values[0])
                else:
                    pdu = struct.pack(f">BHHB{n}H", 16, address, n, 2 * n, *values)
            except struct.error as exc:
                raise ValueError(f"{what}: {list(values)}: registers hold 0..65535 ({exc})") from None
            return await self._write_tcp(what, unit, pdu)
        if len(values) == 1:
            await self._call(what, lambda: c.write_register(address, values[0], device_id=unit))
        else:
            await self._call(what, lambda: c.write_registers(address, list(values), device_id=unit))

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        c = self._client
        what = f"write coil {address} unit {unit}"
        if c is None:
            return await self._write_tcp(what, unit, _READ.pack(5, address, 0xFF00 if value else 0))
        await self._call(what, lambda: c.write_coil(address, value, device_id=unit))

    async def close(self) -> None:
        if self._client is None:
            if self._link is not None:
                self._link.close()
        else:
            self._client.close()
        self.stats.connected = False
