"""The Modbus TCP client of drivers/modbus.py over real loopback TCP.

Against the shipped simulator (pymodbus's server): every read and write
function, exception replies, a silent unit. Against a hand-written server
that misbehaves on purpose, one way per test: a late answer after a timeout,
a reply split over segments, two replies in one segment, a wrong byte count,
a wrong transaction id, a reply that is not Modbus TCP, the connection closed
mid-request. Each reply it sends carries registers derived from the request's
address, so an answer taken for the wrong request shows in the values.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drivers.modbus import ModbusIOError, ModbusTransport
from drivers.profile import Profile
from drivers.sim.bank import RegisterBank
from drivers.sim.server import SimServer

# Every test here on both loops (tests/conftest.py): the transport is the part of the agent that
# meets the loop's own transport classes, and uvloop's are not asyncio's.
pytestmark = [pytest.mark.integration, pytest.mark.each_loop]

TIMEOUT_S = 0.3


def bench_profile() -> Profile:
    def pt(name: str, function: str, address: int, type_: str, **kw: object) -> dict[str, object]:
        return {"name": name, "function": function, "address": address, "type": type_, **kw}

    return Profile.model_validate(
        {
            "version": 1,
            "name": "t",
            "kind": "meter",
            "points": [
                pt("power", "input_register", 0, "float32", role="power_kw"),
                pt("energy", "input_register", 2, "uint32"),
                pt("setpoint", "holding_register", 0, "int16", access="rw"),
                pt("mode", "holding_register", 1, "uint16", access="rw"),
                pt("limit", "holding_register", 2, "uint32", access="rw"),
                pt("relay", "coil", 0, "bool", access="rw"),
                pt("relay2", "coil", 9, "bool", access="rw"),
                pt("alarm", "discrete_input", 3, "bool"),
            ],
        }
    )


async def test_every_function_against_the_simulator() -> None:
    bank = RegisterBank(bench_profile())
    bank.set("power", 12.5)
    bank.set("energy", 70000)
    bank.set("alarm", True)
    server = SimServer({1: bank, 2: RegisterBank(bench_profile())})
    port = await server.start()
    t = ModbusTransport("sim", host="127.0.0.1", port=port, timeout_s=TIMEOUT_S)
    try:
        assert await t.read(1, "input_register", 2, 2) == [70000 >> 16, 70000 & 0xFFFF]
        assert await t.read(1, "input_register", 0, 2) == list(struct.unpack(">2H", struct.pack(">f", 12.5)))
        await t.write_registers(1, 0, [0xFFF6])  # function 06
        await t.write_registers(1, 1, [7, 0x0001, 0x0002])  # function 16
        assert await t.read(1, "holding_register", 0, 4) == [0xFFF6, 7, 1, 2]
        assert bank.get("setpoint") == -10 and bank.get("limit") == 0x10002
        await t.write_coil(1, 9, True)
        bits = await t.read(1, "coil", 0, 10)
        assert bits == [False] * 9 + [True]
        assert bank.get("relay2") is True
        assert (await t.read(1, "discrete_input", 0, 4))[3] is True
        assert await t.read(2, "input_register", 2, 2) == [0, 0]  # the other unit, same connection
        assert t.stats.requests == 9 and t.stats.failures == 0 and t.stats.reconnects == 1

        bank.fail_with = 2
        with pytest.raises(ModbusIOError, match=r"exception 2 \(illegal data address\)") as exc:
            await t.read(1, "holding_register", 0, 1)
        assert exc.value.exception_code == 2
        bank.fail_with = None

        bank.offline = True  # the server drops the request: a silent unit
        with pytest.raises(ModbusIOError, match=r"no response within 0\.3 s"):
            await t.read(1, "holding_register", 0, 1)
        assert t.stats.timeouts == 1
        assert t.connected  # a silent unit does not cost the others the connection
        assert await t.read(2, "holding_register", 1, 1) == [0]
        bank.offline = False
        assert await t.read(1, "holding_register", 1, 1) == [7]
        assert t.stats.reconnects == 1
    finally:
        await t.close()
        await server.stop()


# -- a server that misbehaves on purpose ----------------------------------------------------

Reply = Callable[[int, int, int, int], bytes]  # (tid, unit, address, count) -> frame


def regs_reply(
    tid: int, unit: int, address: int, count: int, *, fc: int = 3, nbytes: int | None = None
) -> bytes:
    """A holding-register reply whose registers are address*10 + i: it says which request it answers."""
    data = struct.pack(f">{count}H", *(address * 10 + i for i in range(count)))
    body = bytes([fc, len(data) if nbytes is None else nbytes]) + data
    return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


Handler = Callable[[int, int, int, int, int, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def misbehaving(handler: Handler) -> AsyncIterator[tuple[ModbusTransport, list[int]]]:
    """A Modbus TCP server calling `handler(n, tid, unit, address, count, writer)` for the n-th request
    (over all connections); yields a transport to it and the list of connections accepted."""
    seen = [0]
    connections: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connections.append(1)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await r.readexactly(7))
                pdu = await r.readexactly(length - 1)
                _fc, address, count = struct.unpack(">BHH", pdu[:5])
                seen[0] += 1
                await handler(seen[0], tid, unit, address, count, w)
                if w.is_closing():
                    return
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    t = ModbusTransport("odd", host="127.0.0.1", port=srv.sockets[0].getsockname()[1], timeout_s=TIMEOUT_S)
    try:
        yield t, connections
    finally:
        await t.close()
        srv.close()


async def test_exception_reply_is_the_modbus_exception() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        w.write(struct.pack(">HHHBBB", tid, 0, 3, unit, 0x83, 11))

    async with misbehaving(handler) as (t, _):
        with pytest.raises(
            ModbusIOError, match=r"exception 11 \(gateway target device failed to respond\)"
        ) as e:
            await t.read(5, "holding_register", 100, 2)
        assert e.value.exception_code == 11
        assert t.stats.failures == 1 and t.stats.timeouts == 0 and t.connected


async def test_a_late_answer_is_not_taken_for_the_next_request() -> None:
    late: list[asyncio.Task[None]] = []

    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        if n == 1:
            # Answer the first request after the client gave up on it, while the second is in flight.
            async def answer_late() -> None:
                await asyncio.sleep(TIMEOUT_S + 0.1)
                w.write(regs_reply(tid, unit, address, count))

            late.append(asyncio.create_task(answer_late()))
            return
        await asyncio.sleep(0.25)  # the late answer to request 1 comes first
        w.write(regs_reply(tid, unit, address, count))

    async with misbehaving(handler) as (t, connections):
        with pytest.raises(ModbusIOError, match="no response within"):
            await t.read(1, "holding_register", 1, 2)
        assert await t.read(1, "holding_register", 2, 2) == [20, 21]  # not [10, 11]
        assert t._link is not None and t._link.dropped == 1
        assert len(connections) == 1


async def test_reply_split_over_several_segments() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        frame = regs_reply(tid, unit, address, count)
        for cut in (
            frame[:3],
            frame[3:7],
            frame[7:9],
            frame[9:],
        ):  # inside the header, at the PDU, in the data
            w.write(cut)
            await w.drain()
            await asyncio.sleep(0.02)

    async with misbehaving(handler) as (t, _):
        assert await t.read(1, "holding_register", 4, 3) == [40, 41, 42]
        assert await t.read(1, "holding_register", 5, 1) == [50]
        assert t.stats.failures == 0


async def test_two_replies_in_one_segment() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        if n == 1:
            return  # silent: the client times out
        # The answer to the timed-out request and the current one, in one write.
        w.write(regs_reply(tid - 1, unit, 99, count) + regs_reply(tid, unit, address, count))

    async with misbehaving(handler) as (t, _):
        with pytest.raises(ModbusIOError, match="no response within"):
            await t.read(1, "holding_register", 99, 2)
        assert await t.read(1, "holding_register", 3, 2) == [30, 31]
        assert t._link is not None and t._link.dropped == 1


async def test_wrong_byte_count_is_a_bad_reply_and_the_connection_goes_on() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        w.write(regs_reply(tid, unit, address, count, nbytes=2 * count + 2 if n == 1 else None))

    async with misbehaving(handler) as (t, connections):
        with pytest.raises(ModbusIOError, match=r"bad reply: undecodable frame \(byte count"):
            await t.read(1, "holding_register", 1, 2)
        assert await t.read(1, "holding_register", 2, 2) == [20, 21]
        assert len(connections) == 1  # MBAP framing was intact: no reconnect needed


async def test_wrong_transaction_id_is_dropped_and_times_out() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        w.write(regs_reply(tid + 7 if n == 1 else tid, unit, address, count))

    async with misbehaving(handler) as (t, _):
        with pytest.raises(ModbusIOError, match=r"no response within 0\.3 s"):
            await t.read(1, "holding_register", 1, 2)
        assert t.stats.timeouts == 1
        assert await t.read(1, "holding_register", 2, 2) == [20, 21]


async def test_wrong_unit_or_function_in_the_answer_is_a_bad_reply() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        if n == 1:
            w.write(regs_reply(tid, unit + 1, address, count))
        else:
            w.write(regs_reply(tid, unit, address, count, fc=4))

    async with misbehaving(handler) as (t, _):
        with pytest.raises(ModbusIOError, match="bad reply: unit id 2 in the answer to unit 1"):
            await t.read(1, "holding_register", 1, 2)
        with pytest.raises(ModbusIOError, match="bad reply: function code 4 in the answer to function 3"):
            await t.read(1, "holding_register", 1, 2)


async def test_not_modbus_tcp_and_a_truncated_answer_cost_the_connection_then_it_recovers() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        frame = regs_reply(tid, unit, address, count)
        if n == 1:
            w.write(frame[:2] + b"\x12\x34" + frame[4:])  # protocol id 0x1234
        elif n == 2:
            w.write(frame[:-1])  # the last byte never comes
        else:
            w.write(frame)

    async with misbehaving(handler) as (t, connections):
        with pytest.raises(ModbusIOError, match=r"bad reply: not a Modbus TCP frame \(protocol id 4660"):
            await t.read(1, "holding_register", 1, 2)
        await asyncio.sleep(0.05)
        assert not t.connected
        with pytest.raises(ModbusIOError, match="no response within"):
            await t.read(1, "holding_register", 2, 2)
        await asyncio.sleep(0.05)
        # Part of an answer is waiting: the byte stream cannot be trusted, start a new connection.
        assert not t.connected
        assert await t.read(1, "holding_register", 3, 2) == [30, 31]
        assert len(connections) == 3 and t.stats.reconnects == 3


async def test_connection_closed_mid_request() -> None:
    async def handler(n: int, tid: int, unit: int, address: int, count: int, w: asyncio.StreamWriter) -> None:
        if n == 1:
            w.close()  # read the request, hang up without an answer
            return
        w.write(regs_reply(tid, unit, address, count))

    async with misbehaving(handler) as (t, connections):
        with pytest.raises(ModbusIOError, match="connection closed by the peer"):
            await t.read(1, "holding_register", 1, 2)
        assert t.stats.timeouts == 0  # not left waiting for the timeout
        assert await t.read(1, "holding_register", 2, 2) == [20, 21]
        assert len(connections) == 2 and t.stats.reconnects == 2


async def test_refused_connection_backs_the_endpoint_off() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    t = ModbusTransport("gone", host="127.0.0.1", port=port, timeout_s=TIMEOUT_S)
    with pytest.raises(ModbusIOError, match=f"cannot connect to 127.0.0.1:{port}") as e:
        await t.read(1, "holding_register", 0, 1)
    assert e.value.retry_in_s is not None and t.stats.last_error == "connect failed"
    with pytest.raises(ModbusIOError, match="not connected"):
        await t.read(1, "holding_register", 0, 1)  # within the backoff: no new attempt
    assert t.stats.requests == 0
