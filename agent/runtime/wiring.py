"""The adapters the composition root (agent/runtime/daemon.py) plugs into the event lifecycle's
ports (agent/events/ports.py): the controller and actuator as `Actuation`, the process image as
`Readings`, the settlement books with the store bound as `Books`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from agent.config.model import SiteConfig
from agent.control.actuator import Actuator
from agent.control.controller import Controller, EventControl
from agent.platform.store import AsyncStore, JournalEntry
from agent.settlement.books import EventRun, settle_event, year_to_date


class ControlActuation:
    """`Actuation` by the controller (releases, staggered restore) and the actuator (writes,
    journal). `controller` may be replaced (the control benchmark's naive variant)."""

    def __init__(
        self,
        controller: Controller,
        actuator: Actuator,
        store: AsyncStore,
        on_read_ahead: Callable[[], None] | None = None,
    ) -> None:
        self.controller = controller
        self.actuator = actuator
        self.store = store
        #: Called when a new event's first stage starts being read (the daemon holds its polls).
        self.on_read_ahead = on_read_ahead

    @property
    def failed_restores(self) -> dict[tuple[str, str], str | None]:
        return self.actuator.failed_restores

    async def shed(self, device: str, role: str, value: float, event_id: str, step: str) -> float:
        return await self.actuator.shed(device, role, value, event_id, step)

    async def restore(self, device: str, role: str, reason: str, event_id: str | None = None) -> bool:
        return await self.actuator.restore(device, role, reason, event_id)

    async def retry_failed_restores(self, held: set[tuple[str, str]]) -> list[str]:
        return await self.actuator.retry_failed_restores(held)

    async def release_all(self, control: EventControl, now: float, reason: str) -> None:
        await self.controller.release_all(control, now, reason)

    async def restore_next(
        self, control: EventControl, now: float, load_kw: float | None, recovery_deadline: float
    ) -> bool:
        return await self.controller.restore_next(control, now, load_kw, recovery_deadline)

    async def shed_now(self, device: str | None = None, role: str | None = None) -> list[JournalEntry]:
        entries: list[JournalEntry] = await self.store.journal_open(device, role)
        return entries

    def deadband_kw(self, peak_kw: float) -> float:
        return self.controller.deadband_kw(peak_kw)

    def read_ahead(self, keys: Iterable[tuple[str, str]]) -> int:
        started = self.actuator.read_ahead(keys)
        if started and self.on_read_ahead is not None:
            self.on_read_ahead()
        return started


@dataclass
class ImageReadings:
    """`Readings` from the daemon's process image, as bound methods (no daemon reference)."""

    load: Callable[[], float | None]
    filtered: Callable[[], float | None]
    samples: Callable[[], Iterable[tuple[float, float]]]
    flush_fn: Callable[[], Awaitable[None]]
    poll_fn: Callable[[], Awaitable[None]]

    def site_load_kw(self) -> float | None:
        return self.load()

    def filtered_kw(self) -> float | None:
        return self.filtered()

    def recent(self) -> Iterable[tuple[float, float]]:
        return self.samples()

    async def flush(self) -> None:
        await self.flush_fn()

    async def poll_now(self) -> None:
        await self.poll_fn()


class StoreBooks:
    """`Books`: agent/settlement/books.py with the store, the configuration in force and the meter."""

    def __init__(self, store: AsyncStore, config: Callable[[], SiteConfig], meter: Callable[[], str]) -> None:
        self.store = store
        self.config = config
        self.meter = meter

    async def settle(self, run: EventRun, end: float | None) -> dict[str, Any]:
        return await settle_event(self.store, self.config(), run, meter=self.meter(), end=end)

    async def year_to_date(self, now: float) -> dict[str, Any]:
        cfg = self.config()
        return await year_to_date(self.store, cfg.contract, ZoneInfo(cfg.site.timezone), now)
