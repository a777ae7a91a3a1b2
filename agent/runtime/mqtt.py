"""The MQTT link: one aiomqtt client, a reconnect loop, and a durable, ordered outbox.

Everything the agent says (responses, live reports, settlements, event
states) goes through the SQLite outbox first and is published in order at
QoS 1; a message leaves the outbox only when the broker acknowledged it. So
a broker outage loses nothing: the backlog drains in order on reconnect.
Availability (`status`) is the exception: it is current state, published
directly and retained, with a last will for the offline case.

The agent subscribes to its own site's inputs only. Topic map (root =
mqtt.topic_root, default dr/<site id>); docs/mqtt-api.md has the payloads:
  in   {root}/in/event                 DR events from the provider
  in   {root}/in/price                 price signals (price-based DR)
  out  {root}/out/response             opt in / opt out answers
  out  {root}/out/price                the agent's reading of the latest price signal (retained)
  out  {root}/out/error                refusals of malformed messages
  out  {root}/out/report               live reports during an event
  out  {root}/out/event/<event_id>     event state (retained)
  out  {root}/out/settlement/<event_id> settlement (retained)
  out  {root}/out/ledger                the year to date (retained)
  out  {root}/status                   online / offline / stopped / failed (retained)

Reconnects wait a capped full-jitter backoff (drivers/backoff.py) on the
agent's clock, so hours of broker outage cost nothing and never overflow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from agent.config.model import MqttConfig
from agent.events.model import ErrorReply, EventResponse, EventState, LiveState, PriceReading
from agent.platform import failpoints
from agent.platform.store import AsyncStore
from drivers.backoff import Backoff

log = logging.getLogger("dr_agent.mqtt")

#: (topic, payload, retained): retained is True for a retained message delivered on (re)subscribe.
MessageHandler = Callable[[str, bytes, bool], Awaitable[None]]


class Topics:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.event_in = f"{self.root}/in/event"
        self.price_in = f"{self.root}/in/price"
        self.price_state = f"{self.root}/out/price"
        self.response = f"{self.root}/out/response"
        self.error = f"{self.root}/out/error"
        self.report = f"{self.root}/out/report"
        self.ledger = f"{self.root}/out/ledger"
        self.status = f"{self.root}/status"

    def event_state(self, event_id: str) -> str:
        return f"{self.root}/out/event/{event_id}"

    def settlement(self, event_id: str) -> str:
        return f"{self.root}/out/settlement/{event_id}"


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        store: AsyncStore,
        client_id: str,
        on_message: MessageHandler,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`sleep` waits out the reconnect backoff (the agent passes its clock's)."""
        self.cfg = cfg
        self.topics = topics
        self.store = store
        self.client_id = client_id
        self.on_message = on_message
        self.on_connected = on_connected
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.ever_connected = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self.published = 0
        self.received = 0
        self.connects = 0
        self.last_error: str | None = None
        self.sleep = sleep
        self.backoff = Backoff(base_s=0.5, cap_s=30.0)
        #: Connection attempts that failed (or connections lost), since the start.
        self.failed_connects = 0

    # -- the outbox ------------------------------------------------------------

    async def send(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        """Queue a message durably; the sender publishes it in order when connected."""
        await self.store.outbox_put(topic, json.dumps(payload, separators=(",", ":")), 1, retain)
        self._outbox_wake.set()

    async def send_numbered(self, topic: str, payload: dict[str, Any], counter: str) -> int:
        """Queue a message carrying the next durable sequence number (`seq`) of `counter`."""
        seq = await self.store.outbox_put_numbered(topic, payload, counter)
        self._outbox_wake.set()
        return seq

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            pending = await self.store.outbox_pending(100)
            if not pending:
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
                continue
            failpoints.hit("mqtt")
            sent: list[int] = []
            try:
                for m in pending:
                    await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain, timeout=10)
                    sent.append(m.seq)
                    self.published += 1
            finally:
                if sent:
                    await self.store.outbox_sent(sent)

    # -- connection ------------------------------------------------------------

    def _client(self, suffix: str = "") -> aiomqtt.Client:
        return aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            identifier=self.client_id + suffix,
            username=self.cfg.username,
            password=self.cfg.password(),
            will=aiomqtt.Will(self.topics.status, json.dumps({"state": "offline"}), qos=1, retain=True),
            clean_session=False,  # a persistent session: events sent while we were away are kept
            keepalive=self.cfg.keepalive_s,
            tls_context=self.cfg.tls.context() if self.cfg.tls is not None else None,
            timeout=10,
            # Without TCP_NODELAY the opt-in response to an event (a small write right after the
            # event's PUBACK) waits for the broker's delayed ACK: 40 ms (bench/shed_latency.py).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def run(self) -> None:
        """Connect, subscribe, receive and drain the outbox; reconnect with full-jitter backoff."""
        while True:
            try:
                async with self._client() as client:
                    self.client = client
                    self.backoff.succeeded()
                    self.connects += 1
                    # Only this site's inputs: never anything another site or the wildcard would bring.
                    await client.subscribe([(self.topics.event_in, 1), (self.topics.price_in, 1)])
                    await client.publish(
                        self.topics.status, json.dumps({"state": "online"}), qos=1, retain=True
                    )
                    if self.last_error:
                        log.warning("event=mqtt_reconnected broker=%s:%s", self.cfg.host, self.cfg.port)
                    else:
                        log.info("event=mqtt_connected broker=%s:%s", self.cfg.host, self.cfg.port)
                    self.last_error = None
                    self.connected.set()
                    self.ever_connected.set()
                    if self.on_connected:
                        await self.on_connected()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._drain(client), name="mqtt-outbox")
                        tg.create_task(self._receive(client), name="mqtt-receive")
            except* aiomqtt.MqttError as group:
                err = str(group.exceptions[0])
                if self.last_error is None:
                    log.error(
                        "event=mqtt_disconnected broker=%s:%s error=%r", self.cfg.host, self.cfg.port, err
                    )
                else:
                    log.debug("event=mqtt_connect_failed error=%r", err)
                self.last_error = err
                self.failed_connects += 1
            finally:
                self.client = None
                self.connected.clear()
            await self.sleep(self.backoff.failed())

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.received += 1
            payload = message.payload
            raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
            try:
                await self.on_message(str(message.topic), raw, bool(message.retain))
            except Exception:  # a handler bug must not drop the connection
                log.exception("event=handler_failed topic=%s", message.topic)

    async def publish_status(self, state: str, **extra: Any) -> bool:
        """Publish availability (retained): `stopped` on a clean stop, `failed` with the reason.

        Through the live connection if there is one, else through a short one of its own (the
        link may be gone when the daemon fails): a crash must not leave a stale `online`.
        Returns whether the broker took it.
        """
        body = json.dumps({"state": state, **extra}, separators=(",", ":"))
        try:
            client = self.client
            if client is not None:
                await client.publish(self.topics.status, body, qos=1, retain=True, timeout=3)
                return True
            async with asyncio.timeout(5):
                one_shot = self._client(suffix="-final")
                async with one_shot:
                    await one_shot.publish(self.topics.status, body, qos=1, retain=True, timeout=3)
            return True
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            # The broker is unreachable: the last will (`offline`) tells subscribers instead.
            log.warning("event=status_publish_failed state=%s error=%r", state, str(exc))
            return False


class MqttProviderLink:
    """The lifecycle's `ProviderLink` (agent/events/ports.py) over MQTT: each message through the
    durable outbox to its topic; states, settlements, the ledger and the price reading retained."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.topics = link.topics

    async def send_response(self, body: EventResponse) -> None:
        await self.link.send(self.topics.response, body.model_dump(mode="json", exclude_none=True))

    async def send_state(self, body: EventState) -> None:
        await self.link.send(
            self.topics.event_state(body.event_id), body.model_dump(mode="json"), retain=True
        )

    async def send_report(self, body: LiveState) -> int:
        # The sequence number and the queued report are one transaction: after a crash no
        # number is reused, so subscribers may dedupe on it.
        return await self.link.send_numbered(self.topics.report, body.model_dump(mode="json"), "report_seq")

    async def send_settlement(self, event_id: str, body: dict[str, Any]) -> None:
        await self.link.send(self.topics.settlement(event_id), body, retain=True)

    async def send_ledger(self, body: dict[str, Any]) -> None:
        await self.link.send(self.topics.ledger, body, retain=True)

    async def send_error(self, body: ErrorReply) -> None:
        await self.link.send(self.topics.error, body.model_dump(mode="json"))

    async def send_price(self, body: PriceReading) -> None:
        await self.link.send(self.topics.price_state, body.model_dump(mode="json"), retain=True)
