"""A small in-process MQTT 3.1.1 broker for `dr-agent demo` and Mosquitto-less runs.

The demo has to work on a machine with nothing but Python, so this module
speaks just enough MQTT 3.1.1 (and 3.1) for the agent and its paho/aiomqtt
clients: QoS 0 and 1 (inbound QoS 2 is acknowledged and delivered as QoS 1),
retained messages, `+`/`#` wildcards, last will, keepalive, and persistent
sessions that live as long as the broker process. It is not a production
broker: no TLS, no ACLs, no persistence to disk, no MQTT v5.

Usage::

    async with MiniBroker() as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import struct
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self

__all__ = ["MiniBroker", "topic_matches"]

logger = logging.getLogger("dr_agent.minibroker")

# Packet types (high nibble of the fixed header).
_CONNECT = 1
_CONNACK = 2
_PUBLISH = 3
_PUBACK = 4
_PUBREC = 5
_PUBREL = 6
_PUBCOMP = 7
_SUBSCRIBE = 8
_SUBACK = 9
_UNSUBSCRIBE = 10
_UNSUBACK = 11
_PINGREQ = 12
_PINGRESP = 13
_DISCONNECT = 14

# CONNACK return codes (MQTT 3.1.1 section 3.2.2.3).
_RC_ACCEPTED = 0
_RC_BAD_PROTOCOL = 1
_RC_ID_REJECTED = 2
_RC_BAD_CREDENTIALS = 4
_RC_NOT_AUTHORIZED = 5

_PINGRESP_BYTES = bytes((_PINGRESP << 4, 0))
_WRITE_BATCH = 64  # messages written between drains: throughput without starving acks
_MAX_PACKET_ID = 0xFFFF


class _MalformedPacket(Exception):
    """A client broke the protocol; the only remedy is closing its connection."""


@dataclass(slots=True, frozen=True)
class _Message:
    """One application message as routed inside the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class _Session:
    """Per-client-id state that outlives a connection when clean session is off.

    The outgoing queue lives here rather than on the connection so that QoS 1
    messages published while a persistent client is away are delivered, in
    order, when it comes back.
    """

    client_id: str
    clean: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    queue: deque[_Message] = field(default_factory=deque)
    inflight: dict[int, _Message] = field(default_factory=dict)  # sent, awaiting PUBACK
    awaiting_rel: set[int] = field(default_factory=set)  # inbound QoS 2, awaiting PUBREL
    connection: _Connection | None = None
    next_pid: int = 1
    dropped: int = 0

    def enqueue(self, msg: _Message, max_queue: int) -> None:
        """Queue a message for delivery; QoS 0 is dropped when the client lags or is away."""
        conn = self.connection
        if conn is None:
            # Only persistent sessions exist while offline; MQTT lets us drop QoS 0 there.
            if msg.qos > 0:
                self.queue.append(msg)
            return
        if msg.qos == 0 and len(self.queue) >= max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.debug(
                    "slow client, dropping qos0 client_id=%s dropped=%d queued=%d",
                    self.client_id,
                    self.dropped,
                    len(self.queue),
                )
            return
        self.queue.append(msg)
        conn.wake.set()

    def allocate_pid(self) -> int:
        """Next packet id not currently in flight (1..65535, wrapping)."""
        if len(self.inflight) >= _MAX_PACKET_ID:
            # A client that never acks 65535 messages is broken; forget the oldest.
            oldest = next(iter(self.inflight))
            del self.inflight[oldest]
            logger.warning("inflight window full, dropping oldest client_id=%s", self.client_id)
        while True:
            pid = self.next_pid
            self.next_pid = pid + 1 if pid < _MAX_PACKET_ID else 1
            if pid not in self.inflight:
                return pid


@dataclass(slots=True, eq=False)
class _Connection:
    """One TCP connection: its writer task, control packets and last will."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    session: _Session | None = None
    will: _Message | None = None
    keepalive: int = 0
    control: deque[bytes] = field(default_factory=deque)  # acks etc., sent before messages
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer_task: asyncio.Task[None] | None = None

    def send(self, packet: bytes) -> None:
        """Queue a control packet; control packets are never dropped."""
        self.control.append(packet)
        self.wake.set()


class MiniBroker:
    """An embedded MQTT 3.1.1 broker bound to one TCP port.

    `users`, when given, maps usernames to passwords and makes credentials
    mandatory; otherwise any username/password is accepted. `max_queue` bounds
    each client's outgoing queue: beyond it QoS 0 messages for that client are
    dropped while QoS 1 messages are still kept, so one slow subscriber never
    blocks publishers or other subscribers. With `port=0`, give `host` as one
    address: a name like "localhost" binds IPv4 and IPv6 on different ports,
    and `port` reports only the first.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: dict[str, str] | None = None,
        max_queue: int = 1000,
        max_packet_size: int = 16 * 1024 * 1024,
        connect_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._users = users
        self._max_queue = max_queue
        self._max_packet_size = max_packet_size
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, _Message] = {}
        self._handlers: dict[asyncio.Task[None], _Connection] = {}
        self._stopping = False

    @property
    def host(self) -> str:
        """Address the broker listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port (useful when constructed with port 0)."""
        if self._bound_port is None:
            raise RuntimeError("MiniBroker is not started")
        return self._bound_port

    async def start(self) -> int:
        """Start listening and return the bound port."""
        if self._server is not None:
            raise RuntimeError("MiniBroker already started")
        self._stopping = False
        self._server = await asyncio.start_server(self._handle_client, self._host, self._requested_port)
        self._bound_port = self._server.sockets[0].getsockname()[1]
        logger.info("minibroker listening host=%s port=%d", self._host, self._bound_port)
        return self._bound_port

    async def stop(self) -> None:
        """Stop listening, drop every client (no wills are sent) and forget all state."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        # Aborting the sockets lets each handler finish through its normal close
        # path; cancelling them instead makes asyncio's stream callback log noise.
        for conn in self._handlers.values():
            conn.writer.transport.abort()
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=2.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
        await server.wait_closed()
        self._sessions.clear()
        self._retained.clear()
        logger.info("minibroker stopped port=%s", self._bound_port)
        self._bound_port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------- routing

    def _publish(self, msg: _Message) -> None:
        """Store retained state and fan a message out to every matching session."""
        if msg.retain:
            if msg.payload:
                self._retained[msg.topic] = msg
            else:
                self._retained.pop(msg.topic, None)
        for session in self._sessions.values():
            granted = -1
            for topic_filter, qos in session.subscriptions.items():
                if qos > granted and topic_matches(topic_filter, msg.topic):
                    granted = qos
            if granted >= 0:
                # Retain is cleared for live delivery (3.1.1 section 3.3.1.3).
                out = replace(msg, qos=min(msg.qos, granted), retain=False)
                session.enqueue(out, self._max_queue)

    # -------------------------------------------------------------- connection

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one TCP connection from CONNECT to close."""
        peer = writer.get_extra_info("peername")
        conn = _Connection(reader, writer, peer=f"{peer[0]}:{peer[1]}" if peer else "?")
        if self._stopping:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = conn
        graceful = False
        try:
            async with asyncio.timeout(self._connect_timeout):
                header, body = await self._read_packet(reader)
            if header >> 4 != _CONNECT or header & 0x0F:
                raise _MalformedPacket("first packet is not CONNECT")
            if not await self._on_connect(conn, body):
                graceful = True
                return
            graceful = await self._serve(conn)
        except _MalformedPacket as exc:
            logger.debug("closing malformed peer=%s client_id=%s: %s", conn.peer, _cid(conn), exc)
        except TimeoutError:
            logger.debug("closing silent peer=%s client_id=%s", conn.peer, _cid(conn))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            logger.debug("connection lost peer=%s client_id=%s", conn.peer, _cid(conn))
        except Exception:
            logger.exception("client handler failed peer=%s client_id=%s", conn.peer, _cid(conn))
        finally:
            try:
                await self._close(conn, graceful)
            finally:
                del self._handlers[task]

    async def _serve(self, conn: _Connection) -> bool:
        """Read packets until DISCONNECT (returns True) or an error (raises)."""
        # Keepalive: a client silent for 1.5x its keepalive is gone (3.1.1 section 3.1.2.10).
        silence = conn.keepalive * 1.5 if conn.keepalive else None
        while True:
            async with asyncio.timeout(silence):
                header, body = await self._read_packet(conn.reader)
            ptype, flags = header >> 4, header & 0x0F
            if ptype == _PUBLISH:
                self._on_publish(conn, flags, body)
                continue
            expected_flags = 0x2 if ptype in (_PUBREL, _SUBSCRIBE, _UNSUBSCRIBE) else 0
            if flags != expected_flags:
                raise _MalformedPacket(f"bad flags {flags:#x} for packet type {ptype}")
            if ptype == _PUBACK:
                self._session(conn).inflight.pop(_packet_id(body), None)
            elif ptype == _PUBREL:
                pid = _packet_id(body)
                self._session(conn).awaiting_rel.discard(pid)
                conn.send(_ack(_PUBCOMP, 0, pid))
            elif ptype in (_PUBREC, _PUBCOMP):
                _packet_id(body)  # we never send QoS 2, so there is nothing to complete
            elif ptype == _SUBSCRIBE:
                self._on_subscribe(conn, body)
            elif ptype == _UNSUBSCRIBE:
                self._on_unsubscribe(conn, body)
            elif ptype == _PINGREQ:
                _expect_empty(body)
                conn.send(_PINGRESP_BYTES)
            elif ptype == _DISCONNECT:
                _expect_empty(body)
                conn.will = None
                return True
            else:
                raise _MalformedPacket(f"unexpected packet type {ptype}")

    async def _close(self, conn: _Connection, graceful: bool) -> None:
        """Tear down a connection; publish its will unless it said goodbye."""
        if conn.writer_task is not None:
            conn.writer_task.cancel()
            await asyncio.wait([conn.writer_task])
        session = conn.session
        if session is not None and session.connection is conn:
            session.connection = None
            if session.clean and self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]
            logger.debug("client disconnected client_id=%s graceful=%s", session.client_id, graceful)
        will, conn.will = conn.will, None
        if will is not None and not graceful and not self._stopping:
            logger.debug("publishing will client_id=%s topic=%s", _cid(conn), will.topic)
            self._publish(will)
        if graceful:
            conn.writer.close()
        else:
            conn.writer.transport.abort()
        with contextlib.suppress(ConnectionError, OSError):
            await conn.writer.wait_closed()

    def _kick(self, conn: _Connection) -> None:
        """Drop an existing connection whose client id was taken over by a new one."""
        logger.debug("session takeover client_id=%s old_peer=%s", _cid(conn), conn.peer)
        if conn.writer_task is not None:
            conn.writer_task.cancel()  # stop it draining the session it no longer owns
        if conn.session is not None:
            conn.session.connection = None
        will, conn.will = conn.will, None
        if will is not None:
            self._publish(will)  # the old client never said goodbye
        conn.writer.transport.abort()

    async def _read_packet(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        """Read one packet: fixed header byte and body (remaining-length framed)."""
        header = (await reader.readexactly(1))[0]
        length = 0
        for shift in range(0, 28, 7):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise _MalformedPacket("remaining length longer than 4 bytes")
        if length > self._max_packet_size:
            raise _MalformedPacket(f"packet of {length} bytes exceeds limit")
        body = await reader.readexactly(length) if length else b""
        return header, body

    async def _write_loop(self, conn: _Connection, session: _Session) -> None:
        """Drain control packets, then the session queue, to one socket, in order.

        Only this task ever awaits the socket, so a slow client stalls itself,
        never the broker.
        """
        writer = conn.writer
        try:
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                while conn.control or session.queue:
                    while conn.control:
                        writer.write(conn.control.popleft())
                    for _ in range(min(len(session.queue), _WRITE_BATCH)):
                        msg = session.queue.popleft()
                        pid = 0
                        if msg.qos:
                            pid = session.allocate_pid()
                            session.inflight[pid] = msg
                        writer.write(_encode_publish(msg, pid, dup=False))
                    await writer.drain()
        except (ConnectionError, OSError):
            # The reader side sees the broken socket and runs the normal close path.
            writer.transport.abort()

    # ----------------------------------------------------------------- packets

    async def _on_connect(self, conn: _Connection, body: bytes) -> bool:
        """Validate CONNECT and attach a session; False if the client was refused."""
        r = _Reader(body)
        protocol = r.string()
        level = r.u8()
        if (protocol, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            if protocol not in ("MQTT", "MQIsdp"):
                raise _MalformedPacket(f"unknown protocol name {protocol!r}")
            # MQTT v5 and anything else we do not speak: refuse cleanly so clients can say why.
            logger.debug("refusing protocol level=%d peer=%s", level, conn.peer)
            await self._refuse(conn, _RC_BAD_PROTOCOL)
            return False
        flags = r.u8()
        if flags & 0x01:
            raise _MalformedPacket("reserved connect flag set")
        clean = bool(flags & 0x02)
        will_flag = bool(flags & 0x04)
        will_qos = (flags >> 3) & 0x03
        will_retain = bool(flags & 0x20)
        has_password = bool(flags & 0x40)
        has_username = bool(flags & 0x80)
        if will_qos > 2 or (not will_flag and (will_qos or will_retain)):
            raise _MalformedPacket("inconsistent will flags")
        if has_password and not has_username and level == 4:
            raise _MalformedPacket("password without username")
        keepalive = r.u16()
        client_id = r.string()
        will: _Message | None = None
        if will_flag:
            will_topic = r.string()
            _check_topic_name(will_topic)
            will = _Message(will_topic, r.binary(), min(will_qos, 1), will_retain)
        username = r.string() if has_username else None
        password = r.binary() if has_password else None
        r.expect_end()

        if not client_id:
            if not clean:
                await self._refuse(conn, _RC_ID_REJECTED)
                return False
            client_id = f"auto-{uuid.uuid4().hex}"
        if self._users is not None:
            rc = self._check_credentials(username, password)
            if rc != _RC_ACCEPTED:
                logger.debug("refusing credentials client_id=%s user=%s", client_id, username)
                await self._refuse(conn, rc)
                return False

        existing = self._sessions.get(client_id)
        if existing is not None and existing.connection is not None:
            self._kick(existing.connection)
        if clean or existing is None:
            session = _Session(client_id, clean)
            self._sessions[client_id] = session
            present = False
        else:
            session = existing
            present = True
        session.connection = conn
        conn.session = session
        conn.will = will
        conn.keepalive = keepalive
        conn.writer_task = asyncio.create_task(
            self._write_loop(conn, session), name=f"minibroker.writer[{client_id}]"
        )
        conn.send(bytes((_CONNACK << 4, 2, int(present), _RC_ACCEPTED)))
        # Resend unacknowledged QoS 1 in original order before anything new (section 4.4).
        for pid, msg in session.inflight.items():
            conn.send(_encode_publish(msg, pid, dup=True))
        if session.queue:
            conn.wake.set()
        logger.debug(
            "client connected client_id=%s peer=%s clean=%s keepalive=%d present=%s",
            client_id,
            conn.peer,
            clean,
            keepalive,
            present,
        )
        return True

    def _check_credentials(self, username: str | None, password: bytes | None) -> int:
        """CONNACK return code for the given credentials against `users`."""
        assert self._users is not None
        if username is None:
            return _RC_NOT_AUTHORIZED
        expected = self._users.get(username)
        if expected is None or password is None:
            return _RC_BAD_CREDENTIALS
        if not hmac.compare_digest(expected.encode(), password):
            return _RC_BAD_CREDENTIALS
        return _RC_ACCEPTED

    async def _refuse(self, conn: _Connection, rc: int) -> None:
        """Send a refusing CONNACK; the caller then closes the connection."""
        conn.writer.write(bytes((_CONNACK << 4, 2, 0, rc)))
        with contextlib.suppress(ConnectionError, OSError):
            await conn.writer.drain()

    def _on_publish(self, conn: _Connection, flags: int, body: bytes) -> None:
        """Route an inbound PUBLISH and acknowledge it per its QoS."""
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise _MalformedPacket("publish with qos 3")
        r = _Reader(body)
        topic = r.string()
        _check_topic_name(topic)
        pid = r.u16() if qos else 0
        if qos and pid == 0:
            raise _MalformedPacket("publish with packet id 0")
        msg = _Message(topic, r.rest(), min(qos, 1), bool(flags & 0x01))
        if qos == 2:
            session = self._session(conn)
            # Deliver on first receipt only; a resend before PUBREL is a duplicate.
            if pid not in session.awaiting_rel:
                session.awaiting_rel.add(pid)
                self._publish(msg)
            conn.send(_ack(_PUBREC, 0, pid))
            return
        self._publish(msg)
        if qos == 1:
            conn.send(_ack(_PUBACK, 0, pid))

    def _on_subscribe(self, conn: _Connection, body: bytes) -> None:
        """Record subscriptions, answer SUBACK, then replay matching retained messages."""
        session = self._session(conn)
        r = _Reader(body)
        pid = r.u16()
        if pid == 0:
            raise _MalformedPacket("subscribe with packet id 0")
        codes = bytearray()
        new_filters: list[tuple[str, int]] = []
        while not r.at_end():
            topic_filter = r.string()
            requested = r.u8()
            if requested & 0xFC or requested == 3:
                raise _MalformedPacket("bad requested qos")
            if not _valid_filter(topic_filter):
                codes.append(0x80)
                continue
            granted = min(requested, 1)
            session.subscriptions[topic_filter] = granted
            new_filters.append((topic_filter, granted))
            codes.append(granted)
        if not codes:
            raise _MalformedPacket("subscribe without topic filters")
        conn.send(_packet(_SUBACK << 4, struct.pack("!H", pid) + bytes(codes)))
        logger.debug("subscribed client_id=%s filters=%s", session.client_id, new_filters)
        for topic_filter, granted in new_filters:
            for topic, msg in self._retained.items():
                if topic_matches(topic_filter, topic):
                    session.enqueue(replace(msg, qos=min(msg.qos, granted)), self._max_queue)

    def _on_unsubscribe(self, conn: _Connection, body: bytes) -> None:
        """Remove subscriptions and answer UNSUBACK."""
        session = self._session(conn)
        r = _Reader(body)
        pid = r.u16()
        if pid == 0:
            raise _MalformedPacket("unsubscribe with packet id 0")
        count = 0
        while not r.at_end():
            session.subscriptions.pop(r.string(), None)
            count += 1
        if not count:
            raise _MalformedPacket("unsubscribe without topic filters")
        conn.send(_ack(_UNSUBACK, 0, pid))

    @staticmethod
    def _session(conn: _Connection) -> _Session:
        """The connection's session (always set once CONNECT succeeded)."""
        assert conn.session is not None
        return conn.session


# --------------------------------------------------------------------- helpers


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True if `topic` matches `topic_filter` under the MQTT wildcard rules.

    `+` matches one level, a trailing `#` matches the parent and everything
    below it, and topics starting with `$` are not matched by a leading
    wildcard (so `#` does not see `$SYS/...`).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def _valid_filter(topic_filter: str) -> bool:
    """Topic filter syntax: non-empty, wildcards occupy whole levels, `#` only last."""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _check_topic_name(topic: str) -> None:
    """Topic names (as published) must be non-empty and wildcard-free."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise _MalformedPacket(f"invalid topic name {topic!r}")


def _cid(conn: _Connection) -> str:
    """Client id for log lines, before or after CONNECT."""
    return conn.session.client_id if conn.session is not None else "-"


def _encode_length(length: int) -> bytes:
    """MQTT variable-length 'remaining length' encoding."""
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _packet(header: int, body: bytes) -> bytes:
    """Frame a body with its fixed header."""
    return bytes((header,)) + _encode_length(len(body)) + body


def _ack(ptype: int, flags: int, pid: int) -> bytes:
    """A two-byte packet-id acknowledgement (PUBACK, PUBREC, PUBCOMP, UNSUBACK)."""
    return bytes(((ptype << 4) | flags, 2)) + struct.pack("!H", pid)


def _encode_publish(msg: _Message, pid: int, *, dup: bool) -> bytes:
    """Encode an outgoing PUBLISH for one subscriber."""
    header = (_PUBLISH << 4) | (0x08 if dup else 0) | (msg.qos << 1) | int(msg.retain)
    topic = msg.topic.encode()
    body = struct.pack("!H", len(topic)) + topic
    if msg.qos:
        body += struct.pack("!H", pid)
    return _packet(header, body + msg.payload)


def _packet_id(body: bytes) -> int:
    """Packet id of a fixed-size acknowledgement packet."""
    if len(body) != 2:
        raise _MalformedPacket("acknowledgement of wrong length")
    pid: int = struct.unpack("!H", body)[0]
    return pid


def _expect_empty(body: bytes) -> None:
    """PINGREQ and DISCONNECT carry no body."""
    if body:
        raise _MalformedPacket("unexpected packet body")


class _Reader:
    """Bounds-checked cursor over a packet body; overruns are malformed packets."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise _MalformedPacket("packet shorter than its fields")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self._take(2))[0]
        return value

    def binary(self) -> bytes:
        return self._take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _MalformedPacket("invalid UTF-8 string") from exc
        if "\0" in text:
            raise _MalformedPacket("NUL in UTF-8 string")
        return text

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def expect_end(self) -> None:
        if not self.at_end():
            raise _MalformedPacket("trailing bytes in packet")
