"""What the event lifecycle needs of the world, as small ports; the composition root plugs them in.

The lifecycle (agent/events/lifecycle.py) decides; it acts only through these:

- `ProviderLink`: what it says to the provider — a response, a state (retained), a live
  report (numbered), a settlement, the ledger, an error, the price reading. MQTT implements it
  (agent/runtime/mqtt.py), the OpenADR VEN is a second one (agent/openadr/ven.py), a simulation
  collects the messages (`SinkLink`). `ProviderRouter` sends each message where it belongs.
- `Actuation`: shed, restore, release an event's steps, what is shed now (the controller and
  the actuator of agent/control/).
- `EventStore`: where events, their runtime and settlements are kept (agent/platform/store.py).
- `Readings`: the site load now, the recent meter samples, and making the readings current
  (flush them to the store, poll every device now).
- `Books`: the settlement of one run and the year to date (agent/settlement/books.py).

Event sources: an event id says where the event came from. Ids prefixed `oadr:` come from the
OpenADR VTN; every other id from MQTT (which refuses the prefix on its input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agent.events.model import ErrorReply, EventResponse, EventState, LiveState, PriceReading

if TYPE_CHECKING:
    from agent.control.controller import EventControl
    from agent.platform.store import JournalEntry
    from agent.settlement.books import EventRun

#: Ids of events from the OpenADR VTN start with this (agent/openadr/mapping.py makes them).
OPENADR_PREFIX = "oadr:"
#: Event source -> the id prefix it owns; an id with none of them comes from MQTT.
SOURCE_PREFIXES = {"openadr": OPENADR_PREFIX}


def source_of(event_id: str | None) -> str:
    """The event source an event id belongs to: `openadr` or `mqtt`."""
    for source, prefix in SOURCE_PREFIXES.items():
        if event_id is not None and event_id.startswith(prefix):
            return source
    return "mqtt"


class ProviderLink(Protocol):
    """Where the lifecycle's messages to the provider go. Sends are durable or best effort as the
    implementation can; none raises for a provider that is away (they queue or drop)."""

    async def send_response(self, body: EventResponse) -> None:
        """The answer to an event: opt in or out, with the commitment."""

    async def send_state(self, body: EventState) -> None:
        """An event's state (retained: the latest per event stands)."""

    async def send_report(self, body: LiveState) -> int:
        """A live report; returns the sequence number it was given."""
        ...

    async def send_settlement(self, event_id: str, body: dict[str, Any]) -> None:
        """An event's settlement as published (retained; the `Settlement` model checked it)."""

    async def send_ledger(self, body: dict[str, Any]) -> None:
        """The year to date (retained; the `LedgerReport` payload)."""

    async def send_error(self, body: ErrorReply) -> None:
        """A message refused, and why."""

    async def send_price(self, body: PriceReading) -> None:
        """How the latest price signal was read (retained)."""


class ProviderRouter:
    """One `ProviderLink` over several: everything goes to the primary link (MQTT: the site's own
    record, which Prometheus and subscribers follow); a response and a live report of an event
    from another source (OpenADR) also go to that source's link."""

    def __init__(self, primary: ProviderLink) -> None:
        self.primary = primary
        self.sources: dict[str, ProviderLink] = {}

    def add_source(self, source: str, link: ProviderLink) -> None:
        self.sources[source] = link

    def _source(self, event_id: str | None) -> ProviderLink | None:
        source = source_of(event_id)
        return None if source == "mqtt" else self.sources.get(source)

    async def send_response(self, body: EventResponse) -> None:
        await self.primary.send_response(body)
        if (other := self._source(body.event_id)) is not None:
            await other.send_response(body)

    async def send_state(self, body: EventState) -> None:
        await self.primary.send_state(body)

    async def send_report(self, body: LiveState) -> int:
        seq = await self.primary.send_report(body)
        if (other := self._source(body.event_id)) is not None:
            await other.send_report(body)
        return seq

    async def send_settlement(self, event_id: str, body: dict[str, Any]) -> None:
        await self.primary.send_settlement(event_id, body)

    async def send_ledger(self, body: dict[str, Any]) -> None:
        await self.primary.send_ledger(body)

    async def send_error(self, body: ErrorReply) -> None:
        await self.primary.send_error(body)

    async def send_price(self, body: PriceReading) -> None:
        await self.primary.send_price(body)


#: (topic name, payload): what a `SinkLink` hands on; topic names as MQTT's, relative to the root.
Sink = Callable[[str, dict[str, Any]], None]


class SinkLink:
    """A `ProviderLink` without a broker (the simulation): each message goes to `sink` as
    (topic, payload) with the topic MQTT would use under `root`; nothing when no sink is set."""

    def __init__(self, root: str, sink: Sink | None = None) -> None:
        self.root = root.rstrip("/")
        self.sink = sink
        self.seq = 0

    def _put(self, topic: str, payload: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink(f"{self.root}/{topic}", payload)

    async def send_response(self, body: EventResponse) -> None:
        self._put("out/response", body.model_dump(mode="json", exclude_none=True))

    async def send_state(self, body: EventState) -> None:
        self._put(f"out/event/{body.event_id}", body.model_dump(mode="json"))

    async def send_report(self, body: LiveState) -> int:
        self.seq += 1
        self._put("out/report", {**body.model_dump(mode="json"), "seq": self.seq})
        return self.seq

    async def send_settlement(self, event_id: str, body: dict[str, Any]) -> None:
        self._put(f"out/settlement/{event_id}", body)

    async def send_ledger(self, body: dict[str, Any]) -> None:
        self._put("out/ledger", body)

    async def send_error(self, body: ErrorReply) -> None:
        self._put("out/error", body.model_dump(mode="json"))

    async def send_price(self, body: PriceReading) -> None:
        self._put("out/price", body.model_dump(mode="json"))


class Actuation(Protocol):
    """What the lifecycle (and pre-cooling) does to devices: through the controller and the
    actuator, so every write is limit-checked and journalled first."""

    @property
    def failed_restores(self) -> dict[tuple[str, str], str | None]:
        """Restores that failed (device, role) -> event id; retried each cycle."""
        ...

    async def shed(self, device: str, role: str, value: float, event_id: str, step: str) -> Any:
        """Write `value`, journalled with the original first."""

    async def restore(self, device: str, role: str, reason: str, event_id: str | None = None) -> bool:
        """Put the journalled original back; False when the device did not take it."""
        ...

    async def retry_failed_restores(self, held: set[tuple[str, str]]) -> Any:
        """Try again the failed restores not `held` by a running event."""

    async def release_all(self, control: EventControl, now: float, reason: str) -> None:
        """Release every step of an event now (cancellation, opt-out, supersede)."""

    async def restore_next(
        self, control: EventControl, now: float, load_kw: float | None, recovery_deadline: float
    ) -> bool:
        """One staggered restore move after the end; True when everything is back."""
        ...

    async def shed_now(self, device: str | None = None, role: str | None = None) -> list[JournalEntry]:
        """What is shed now: the open entries of the revert journal."""
        ...

    def read_ahead(self, keys: Iterable[tuple[str, str]]) -> int:
        """Start reading the current values sheds of these (device, role) would replace (an event
        starting at once), so its first writes do not wait for those reads. Returns reads started."""
        ...

    def deadband_kw(self, peak_kw: float) -> float:
        """The controller's deadband around the commitment, kW."""
        ...


class EventStore(Protocol):
    """The store calls the lifecycle makes (agent/platform/store.py holds the tables)."""

    async def nonce_seen(self, nonce: str, ts: float, now: float, window_s: float) -> bool: ...

    async def events(self) -> list[dict[str, Any]]: ...

    async def save_event(
        self,
        event_id: str,
        modification_number: int,
        payload: dict[str, Any],
        state: str,
        opt: str | None,
        code: str | None,
        reason: str | None,
        effective_start: float | None,
    ) -> None: ...

    async def set_event_state(self, event_id: str, state: str) -> None: ...

    async def set_event_runtime(self, event_id: str, runtime: dict[str, Any]) -> None: ...

    async def settlement(self, event_id: str) -> dict[str, Any] | None: ...

    async def save_settlement(self, event_id: str, body: dict[str, Any]) -> None: ...


class Readings(Protocol):
    """The process image as the lifecycle sees it."""

    def site_load_kw(self) -> float | None:
        """Filtered site load, or None when the meter is stale or down."""
        ...

    def filtered_kw(self) -> float | None:
        """The filter's value even when the meter went stale (a last resort for a baseline)."""
        ...

    def recent(self) -> Iterable[tuple[float, float]]:
        """Recent raw meter samples (ts, kW), oldest first: the real-time baseline's input."""
        ...

    async def flush(self) -> None:
        """Write the readings polled so far to the store (before a settlement reads them)."""

    async def poll_now(self) -> None:
        """Poll every device once now (restart recovery needs current values)."""


class Books(Protocol):
    """The settlement arithmetic (agent/settlement/books.py) with the store and site bound."""

    async def settle(self, run: EventRun, end: float | None) -> dict[str, Any]:
        """The settlement record of one run (not yet stored or published)."""
        ...

    async def year_to_date(self, now: float) -> dict[str, Any]:
        """The year to date, as published on out/ledger."""
        ...


@dataclass
class LifecyclePorts:
    """Everything the lifecycle acts through, handed over by the composition root."""

    link: ProviderLink
    actuation: Actuation
    store: EventStore
    readings: Readings
    books: Books
    #: Wake the control loop now (a new decision should not wait for the next cycle).
    wake: Callable[[], None] = lambda: None


__all__ = [
    "OPENADR_PREFIX",
    "Actuation",
    "Books",
    "EventStore",
    "LifecyclePorts",
    "ProviderLink",
    "ProviderRouter",
    "Readings",
    "SinkLink",
    "source_of",
]
