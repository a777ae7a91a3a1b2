"""Replies that are not answers to the request: one clear error each, never accepted, never a traceback.

A hand-written Modbus TCP server (not pymodbus) answers reads with a wrong
byte count, extra registers, or another function code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

import pytest

from drivers.modbus import ModbusIOError, ModbusTransport

pytestmark = pytest.mark.integration


async def serve(mode: str) -> tuple[asyncio.Server, int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await r.readexactly(7))
                pdu = await r.readexactly(length - 1)
                fc, _addr, count = struct.unpack(">BHH", pdu[:5])
                data = b"".join(struct.pack(">H", 100 + i) for i in range(count))
                if mode == "byte_count":
                    body = bytes([fc, len(data) + 2]) + data  # claims two bytes it never sends
                elif mode == "extra":
                    body = bytes([fc, len(data) + 2]) + data + b"\x00\x07"
                else:  # "function"
                    body = bytes([4, len(data)]) + data
                w.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await w.drain()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("byte_count", "bad reply: undecodable frame"),
        ("extra", "bad reply: 3 registers for a read of 2"),
        ("function", "bad reply: function code 4 in the answer to function 3"),
    ],
)
async def test_bad_reply_is_one_clear_error(mode: str, says: str, caplog: pytest.LogCaptureFixture) -> None:
    srv, port = await serve(mode)
    t = ModbusTransport("odd", host="127.0.0.1", port=port, timeout_s=0.3)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):  # retries
                with pytest.raises(ModbusIOError, match=says):
                    await t.read(1, "holding_register", 0, 2)
    finally:
        await t.close()
        srv.close()
    assert t.stats.last_error is not None and says.split(": ", 1)[1] in t.stats.last_error
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
