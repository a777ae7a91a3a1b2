"""MiniBroker against real aiomqtt/paho clients and hand-built packets on loopback.

Raw packets are built here independently of the broker's own encoders, so a
symmetric encode/decode bug cannot hide. Absence of a message is proven with
a marker published afterwards: the broker keeps per-subscriber order, so if
the marker arrives first, the message never will.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiomqtt
import paho.mqtt.client as paho
import pytest

from agent.minibroker import MiniBroker, topic_matches

TIMEOUT = 3.0


@pytest.fixture
async def broker() -> AsyncIterator[MiniBroker]:
    async with MiniBroker() as b:
        yield b


RawFactory = Callable[..., Awaitable["Raw"]]


@pytest.fixture
async def open_raw() -> AsyncIterator[RawFactory]:
    """Open raw clients that are all closed at teardown."""
    opened: list[Raw] = []

    async def factory(broker: MiniBroker, rcvbuf: int | None = None) -> Raw:
        raw = await Raw.open(broker, rcvbuf)
        opened.append(raw)
        return raw

    yield factory
    for raw in opened:
        raw.abort()


def client(broker: MiniBroker, **kwargs: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, **kwargs)  # type: ignore[arg-type]


async def next_message(c: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        return await anext(c.messages)


# ------------------------------------------------------------ raw MQTT client


def _len(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def connect_packet(
    client_id: str,
    *,
    keepalive: int = 60,
    clean: bool = True,
    will: tuple[str, bytes, int, bool] | None = None,
    level: int = 4,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _s(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _s(topic) + _s(message)
    if username is not None:
        flags |= 0x80
        payload += _s(username)
    if password is not None:
        flags |= 0x40
        payload += _s(password)
    body = _s("MQTT") + bytes((level, flags)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _len(len(body)) + body


class Raw:
    """A byte-level MQTT client for the cases real clients will not produce."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, broker: MiniBroker, rcvbuf: int | None = None) -> Raw:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", broker.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def connect(self, client_id: str, **kwargs: object) -> bytes:
        await self.send(connect_packet(client_id, **kwargs))  # type: ignore[arg-type]
        header, body = await self.read()
        assert header == 0x20
        return body

    async def read(self) -> tuple[int, bytes]:
        async with asyncio.timeout(TIMEOUT):
            header = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                b = (await self.reader.readexactly(1))[0]
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            return header, await self.reader.readexactly(length)

    async def closed(self) -> bool:
        """True once the broker has closed the connection (EOF or reset)."""
        async with asyncio.timeout(TIMEOUT):
            try:
                return await self.reader.read(65536) == b""
            except ConnectionError:
                return True

    def abort(self) -> None:
        self.writer.transport.abort()


# ------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/x/c", True),
        ("+/+", "/x", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# ------------------------------------------------------------ pub/sub basics


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_roundtrip(broker: MiniBroker, qos: int) -> None:
    async with client(broker) as sub, client(broker) as pub:
        await sub.subscribe("rt/x", qos=qos)
        await pub.publish("rt/x", b"hello", qos=qos)
        msg = await next_message(sub)
    assert (str(msg.topic), msg.payload, msg.qos) == ("rt/x", b"hello", min(qos, 1))
    assert not msg.retain


async def test_paho_roundtrip(broker: MiniBroker) -> None:
    """The threaded paho client (what aiomqtt wraps) works on its own too."""
    got: list[bytes] = []
    subscribed, received = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_subscribe(*_: object) -> None:
        loop.call_soon_threadsafe(subscribed.set)

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        got.append(bytes(m.payload))
        loop.call_soon_threadsafe(received.set)

    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.subscribe("paho/t", qos=1)
        async with asyncio.timeout(TIMEOUT):
            await subscribed.wait()
        c.publish("paho/t", b"p", qos=1)
        async with asyncio.timeout(TIMEOUT):
            await received.wait()
    finally:
        c.disconnect()
        c.loop_stop()
    assert got == [b"p"]


async def test_wildcards_and_unsubscribe(broker: MiniBroker) -> None:
    async with client(broker) as sub, client(broker) as pub:
        await sub.subscribe([("w/+/c", 0), ("x/#", 0), ("#", 0)])
        await sub.unsubscribe("#")
        for topic in ["w/b/c", "w/b/d", "w/b/c/d", "x", "x/y/z", "y", "$SYS/x", "end"]:
            await pub.publish(topic, b"")
        await sub.subscribe("end")
        await pub.publish("end", b"")
        got = []
        while (topic := str((await next_message(sub)).topic)) != "end":
            got.append(topic)
    assert got == ["w/b/c", "x", "x/y/z"]


async def test_overlapping_subscriptions_deliver_once_at_max_qos(broker: MiniBroker) -> None:
    async with client(broker) as sub, client(broker) as pub:
        await sub.subscribe([("o/#", 0), ("o/+", 1)])
        await pub.publish("o/a", b"1", qos=1)
        await pub.publish("o/end", b"2", qos=1)
        first, second = await next_message(sub), await next_message(sub)
    assert (first.payload, first.qos, second.payload) == (b"1", 1, b"2")


async def test_retained_late_subscriber_and_clear(broker: MiniBroker) -> None:
    async with client(broker) as pub:
        await pub.publish("ret/state", b"on", qos=1, retain=True)
        async with client(broker) as late:
            await late.subscribe("ret/#", qos=1)
            msg = await next_message(late)
            assert (msg.payload, msg.retain) == (b"on", True)
            await pub.publish("ret/state", b"live", qos=1, retain=True)
            live = await next_message(late)
            assert (live.payload, live.retain) == (b"live", False)

        await pub.publish("ret/state", b"", qos=1, retain=True)  # clears it
        async with client(broker) as later:
            await later.subscribe([("ret/#", 1), ("marker", 1)])
            await pub.publish("marker", b"m")
            assert str((await next_message(later)).topic) == "marker"


async def test_message_order_500(broker: MiniBroker) -> None:
    async with client(broker) as sub, client(broker) as pub:
        await sub.subscribe("ord", qos=1)
        for i in range(500):
            await pub.publish("ord", str(i).encode(), qos=1)
        got = [int(bytes((await next_message(sub)).payload)) for _ in range(500)]
    assert got == list(range(500))


# ------------------------------------------------------------ will, sessions


async def test_last_will_on_abrupt_close(open_raw: RawFactory, broker: MiniBroker) -> None:
    async with client(broker) as watcher:
        await watcher.subscribe("will/#", qos=1)
        raw = await open_raw(broker)
        assert await raw.connect("dying", will=("will/dying", b"offline", 1, True)) == b"\x00\x00"
        raw.abort()
        msg = await next_message(watcher)
        assert (str(msg.topic), msg.payload) == ("will/dying", b"offline")
    async with client(broker) as late:
        await late.subscribe("will/#")
        msg = await next_message(late)
        assert (msg.payload, msg.retain) == (b"offline", True)


async def test_no_will_on_clean_disconnect(broker: MiniBroker) -> None:
    async with client(broker) as watcher:
        await watcher.subscribe([("bye/#", 1), ("marker", 1)])
        will = aiomqtt.Will("bye/status", b"offline", qos=1)
        async with client(broker, will=will) as leaving:
            await leaving.publish("marker", b"1")
            await next_message(watcher)
        async with client(broker) as pub:
            await pub.publish("marker", b"2")
        assert (await next_message(watcher)).payload == b"2"


async def test_persistent_session_gets_messages_sent_while_offline(broker: MiniBroker) -> None:
    kwargs = {"identifier": "persistent-1", "clean_session": False}
    async with client(broker, **kwargs) as c:
        await c.subscribe("ps/#", qos=1)
    async with client(broker) as pub:
        for i in range(3):
            await pub.publish(f"ps/{i}", b"x", qos=1)
        await pub.publish("ps/dropped", b"qos0 is not queued offline", qos=0)
        await pub.publish("ps/end", b"", qos=1)
    async with client(broker, **kwargs) as c:
        topics = [str((await next_message(c)).topic) for _ in range(4)]
    assert topics == ["ps/0", "ps/1", "ps/2", "ps/end"]


async def test_unacked_qos1_is_resent_with_dup_on_resume(open_raw: RawFactory, broker: MiniBroker) -> None:
    raw = await open_raw(broker)
    await raw.connect("forgetful", clean=False)
    await raw.send(b"\x82\x06\x00\x01\x00\x01r\x01")  # SUBSCRIBE "r" qos 1
    assert (await raw.read())[0] == 0x90
    async with client(broker) as pub:
        await pub.publish("r", b"once", qos=1)
    header, body = await raw.read()
    assert (header, body[3:]) == (0x32, b"\x00\x01once")  # QoS 1, packet id 1, never acked
    raw.abort()
    raw = await open_raw(broker)
    assert await raw.connect("forgetful", clean=False) == b"\x01\x00"
    assert await raw.read() == (0x3A, body)  # same packet, DUP set
    await raw.send(b"\x40\x02\x00\x01")  # PUBACK
    raw.abort()


async def test_persistent_session_present_flag_and_clean_reset(
    open_raw: RawFactory, broker: MiniBroker
) -> None:
    raw = await open_raw(broker)
    assert await raw.connect("sp", clean=False) == b"\x00\x00"
    raw.abort()
    raw = await open_raw(broker)
    assert await raw.connect("sp", clean=False) == b"\x01\x00"
    raw.abort()
    raw = await open_raw(broker)
    assert await raw.connect("sp", clean=True) == b"\x00\x00"
    raw.abort()


async def test_session_takeover_drops_old_connection(open_raw: RawFactory, broker: MiniBroker) -> None:
    first = await open_raw(broker)
    await first.connect("dup")
    second = await open_raw(broker)
    await second.connect("dup")
    assert await first.closed()
    await second.send(b"\xc0\x00")  # PINGREQ
    assert await second.read() == (0xD0, b"")


# ------------------------------------------------------ keepalive, protocol


async def test_keepalive_timeout_drops_silent_client_and_fires_will(
    open_raw: RawFactory, broker: MiniBroker
) -> None:
    async with client(broker) as watcher:
        await watcher.subscribe("ka/#")
        raw = await open_raw(broker)
        await raw.connect("silent", keepalive=1, will=("ka/silent", b"gone", 0, False))
        started = time.monotonic()
        assert await raw.closed()
        elapsed = time.monotonic() - started
        assert 1.2 < elapsed < 2.5
        assert (await next_message(watcher)).payload == b"gone"


async def test_ping(open_raw: RawFactory, broker: MiniBroker) -> None:
    raw = await open_raw(broker)
    await raw.connect("pinger", keepalive=1)
    for _ in range(2):
        await asyncio.sleep(0.8)  # 1.6 s in total: longer than 1.5 x keepalive
        await raw.send(b"\xc0\x00")
        assert await raw.read() == (0xD0, b"")


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x10\xff\xff\xff\xff\x01", id="length-over-4-bytes"),
        pytest.param(b"\x30\x02\x00\x01", id="publish-before-connect"),
        pytest.param(b"\x10\x04\x00\x03MQ", id="truncated-connect-fields"),
        pytest.param(connect_packet("c")[:-1] + b"\x00\x01\xff", id="trailing-bytes"),
        pytest.param(b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", id="reserved-flag"),
    ],
)
async def test_malformed_before_connect_closes(
    open_raw: RawFactory, broker: MiniBroker, garbage: bytes
) -> None:
    raw = await open_raw(broker)
    await raw.send(garbage)
    assert await raw.closed()
    async with client(broker) as c:  # the broker is still serving
        await c.subscribe("alive")
        await c.publish("alive", b"yes")
        assert (await next_message(c)).payload == b"yes"


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x36\x05\x00\x01t\x00\x01", id="publish-qos3"),
        pytest.param(b"\x30\x05\x00\x03a/#", id="publish-wildcard-topic"),
        pytest.param(b"\x80\x06\x00\x01\x00\x01a\x00", id="subscribe-bad-flags"),
        pytest.param(b"\x82\x02\x00\x01", id="subscribe-no-filters"),
        pytest.param(b"\x10\x00", id="second-connect"),
        pytest.param(b"\xf0\x00", id="reserved-type"),
    ],
)
async def test_malformed_after_connect_closes_and_fires_will(
    open_raw: RawFactory, broker: MiniBroker, garbage: bytes
) -> None:
    async with client(broker) as watcher:
        await watcher.subscribe("mal/#")
        raw = await open_raw(broker)
        await raw.connect("bad", will=("mal/bad", b"x", 0, False))
        await raw.send(garbage)
        assert await raw.closed()
        assert (await next_message(watcher)).payload == b"x"


async def test_mqtt5_connect_refused_with_connack(open_raw: RawFactory, broker: MiniBroker) -> None:
    raw = await open_raw(broker)
    assert await raw.connect("v5", level=5) == b"\x00\x01"
    assert await raw.closed()
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, protocol=aiomqtt.ProtocolVersion.V5, timeout=TIMEOUT):
            pass


async def test_empty_client_id_needs_clean_session(open_raw: RawFactory, broker: MiniBroker) -> None:
    raw = await open_raw(broker)
    assert await raw.connect("", clean=False) == b"\x00\x02"
    raw = await open_raw(broker)
    assert await raw.connect("", clean=True) == b"\x00\x00"


async def test_users_checked_when_configured(
    open_raw: RawFactory,
) -> None:
    async with MiniBroker(users={"agent": "s3cret"}) as b:
        raw = await open_raw(b)
        assert await raw.connect("u1", username="agent", password="nope") == b"\x00\x04"
        raw = await open_raw(b)
        assert await raw.connect("u2") == b"\x00\x05"
        async with client(b, username="agent", password="s3cret") as c:
            await c.publish("ok", b"")


async def test_slow_subscriber_does_not_block_others(
    open_raw: RawFactory,
) -> None:
    """A client that never reads loses QoS 0 beyond max_queue; everyone else flows."""
    async with MiniBroker(max_queue=10) as b:
        stuck = await open_raw(b, rcvbuf=4096)
        await stuck.connect("stuck")
        await stuck.send(b"\x82\x06\x00\x01\x00\x01#\x00")  # SUBSCRIBE "#" qos 0
        assert (await stuck.read())[0] == 0x90
        payload = b"x" * 32 * 1024
        async with client(b) as fast, client(b) as pub:
            await fast.subscribe("bulk", qos=1)
            async with asyncio.timeout(5):
                for i in range(300):
                    await pub.publish("bulk", payload + str(i).encode(), qos=1)
                got = [(await next_message(fast)).payload for _ in range(300)]
        assert got == [payload + str(i).encode() for i in range(300)]
        session = b._sessions["stuck"]
        assert session.dropped > 0
        assert len(session.queue) <= 10
        stuck.abort()


async def test_stop_closes_clients_and_port(open_raw: RawFactory, broker: MiniBroker) -> None:
    raw = await open_raw(broker)
    await raw.connect("left-open")
    port = broker.port
    await broker.stop()
    assert await raw.closed()
    with pytest.raises(RuntimeError):
        _ = broker.port
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
