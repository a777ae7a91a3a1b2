"""A fault-injecting Modbus TCP proxy, put between the agent and a simulator endpoint.

It understands just enough of Modbus TCP (the 7-byte MBAP header and its
length field) to cut the byte stream into frames, so a test can make one
endpoint misbehave the way field gateways do, and change it mid-run:

- `pass`       forward both ways untouched;
- `stall`      accept connections and requests, never answer;
- `exception`  answer every request with a Modbus exception (`exception_code`) without forwarding;
- `garbage`    forward, then replace the answer with random bytes of the same length;
- `truncated`  forward, then send only the first half of the answer (the rest never comes);
- `drop_write` forward a write to the device, then close the connection instead of answering it
  (the device applied it; the agent never heard): for the next `drop_writes` writes, then `pass`.

`delay_s` holds every request that long before it goes on (a slow gateway: a serial bus behind it).
`requests`, `writes` and `dropped` count what went through, for the test's assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from typing import Literal

Mode = Literal["pass", "stall", "exception", "garbage", "truncated", "drop_write"]
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16})


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One Modbus TCP frame (MBAP header + PDU); IncompleteReadError at end of stream."""
    head = await reader.readexactly(7)
    (length,) = struct.unpack(">H", head[4:6])
    return head + await reader.readexactly(max(0, length - 1))


class ModbusFaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", seed: int = 7) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.exception_code = 4
        self.drop_writes = 0
        self.delay_s = 0.0
        self.requests = 0
        self.writes = 0
        self.dropped = 0
        self.port = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def set(self, mode: Mode, **opts: int) -> None:
        """Change the fault from now on; `drop_write` takes `drop_writes=N` (default 1)."""
        self.mode = mode
        if mode == "drop_write":
            self.drop_writes = opts.get("drop_writes", 1)
        if "exception_code" in opts:
            self.exception_code = opts["exception_code"]

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up_w: asyncio.StreamWriter | None = None
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_w)
            while True:
                req = await read_frame(reader)
                self.requests += 1
                function = req[7] if len(req) > 7 else 0
                is_write = function in WRITE_FUNCTIONS
                self.writes += is_write
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                mode = self.mode
                if mode == "stall":
                    continue  # read and ignore: the client waits for its timeout
                if mode == "exception":
                    pdu = bytes([function | 0x80, self.exception_code])
                    writer.write(req[:4] + struct.pack(">H", len(pdu) + 1) + req[6:7] + pdu)
                    await writer.drain()
                    continue
                up_w.write(req)
                await up_w.drain()
                resp = await read_frame(up_r)
                if mode == "drop_write" and is_write and self.drop_writes > 0:
                    self.drop_writes -= 1
                    self.dropped += 1
                    if self.drop_writes == 0:
                        self.mode = "pass"
                    return  # the device applied the write; the answer is lost with the connection
                if mode == "garbage":
                    resp = bytes(self._rng.randrange(256) for _ in resp)
                elif mode == "truncated":
                    resp = resp[: max(1, len(resp) // 2)]
                writer.write(resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            self._tasks.discard(task)
