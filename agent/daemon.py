"""The agent daemon: supervised component tasks around one control cycle.

Tasks (one TaskGroup): `poll` reads every device once a period, endpoints in
parallel and devices on an endpoint one at a time; `control` runs the event
lifecycle and the control cycle and feeds the systemd watchdog; `mqtt`
receives events and drains the outbox; `flush` writes readings to SQLite in
batches; `report` publishes live reports. SIGTERM ends them, then every
touched device is restored and `stopped` is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from agent import __version__, statefile
from agent.actuator import Actuator
from agent.clock import Clock, SystemClock
from agent.config import SiteConfig
from agent.control import Controller, LoadFilter
from agent.events import DrEvent
from agent.history import TEMPERATURE_KEY
from agent.lifecycle import EventLifecycle, EventRecord
from agent.logs import FailureLog
from agent.mqtt import MqttLink, Topics
from agent.sdnotify import Notifier
from agent.store import AsyncStore, Store
from drivers.device import Device, Transport
from drivers.modbus import ModbusTransport
from drivers.profile import load_profile
from drivers.registry import kinds

log = logging.getLogger("dr_agent")

# Readings kept in memory while the database refuses writes (about an hour of a 20-device site).
MAX_PENDING_READINGS = 100_000
# A journalled shed no live event owns is restored after this long (wall seconds): long enough
# for a `diagnose --test-shed` run beside the daemon, short enough that nothing stays shed.
ORPHAN_GRACE_S = 600.0


@dataclass
class PendingReadings:
    rows: list[tuple[str, float, float]] = field(default_factory=list)


def build_devices(
    cfg: SiteConfig, given: Mapping[str, Transport] | None = None, clock: Clock | None = None
) -> tuple[dict[str, Any], dict[str, Device]]:
    """One transport per endpoint (or the given ones) and one device object per configured device."""
    transports: dict[str, Any] = dict(given or {})
    for ep in cfg.modbus.endpoints:
        if ep.name in transports:
            continue
        transports[ep.name] = ModbusTransport(
            ep.name,
            protocol=ep.protocol,
            host=ep.host,
            port=ep.port,
            serial_port=ep.serial_port,
            baudrate=ep.baudrate,
            parity=ep.parity,
            stopbits=ep.stopbits,
            timeout_s=ep.timeout_s,
            inter_frame_delay_s=ep.inter_frame_delay_ms / 1000,
        )
    registry = kinds()
    devices: dict[str, Device] = {}
    for dc in cfg.devices:
        kind = registry[dc.kind]
        devices[dc.name] = dev = kind.device(dc, transports[dc.endpoint], load_profile(dc.profile))
        if clock is not None:
            dev.clock = clock.now  # retry backoff in the agent's time (simulation runs faster)
    return transports, devices


class Agent:
    def __init__(
        self,
        cfg: SiteConfig,
        clock: Clock | None = None,
        *,
        metrics: bool | None = None,
        transports: Mapping[str, Transport] | None = None,
        store_path: str | None = None,
    ) -> None:
        """`transports` replaces the Modbus endpoints (simulation); `store_path` the database path."""
        self.cfg = cfg
        self.clock: Clock = clock or SystemClock()
        self.tz = ZoneInfo(cfg.site.timezone)
        self.topics = Topics(cfg.topic_root)
        self.transports, self.devices = build_devices(cfg, transports, self.clock)
        self.meter = self.devices[cfg.site.meter]
        self.store = AsyncStore(Store(store_path or cfg.storage.resolved()))
        self.actuator = Actuator(self.devices, self.store)
        self.controller = Controller(cfg.control, self.devices, self.actuator, self.tz)
        self.mqtt: MqttLink | None = None
        self.notifier = Notifier()
        self.lifecycle = EventLifecycle(self)
        self.events: dict[str, EventRecord] = self.lifecycle.events
        self.filter = LoadFilter(cfg.control.filter_s)
        self.meter_ts: float | None = None
        # Recent raw site readings for the real-time baseline (15 min before control starts).
        self.recent: deque[tuple[float, float]] = deque(maxlen=7200)
        self.pending = PendingReadings()
        self.wake = asyncio.Event()
        self.polled_once = asyncio.Event()
        self.outbox_pending = 0
        self.last_cycle_s: float | None = None
        self.report_seq = 0
        self._cycle_failures = FailureLog(log, "control_cycle", level=logging.ERROR)
        self._flush_failures = FailureLog(log, "readings_flush", level=logging.ERROR)
        self.readings_dropped = 0
        self._next_orphan_check = time.monotonic() + 30.0
        self.started_at = time.time()
        self.metrics_port: int | None = None
        self._metrics = cfg.metrics.enabled if metrics is None else metrics
        #: Without MQTT (simulation), outgoing messages go here instead: (topic, payload).
        self.sink: Callable[[str, dict[str, Any]], None] | None = None
        #: Held for one control cycle; a config reload waits for it (agent/reload.py).
        self.cycle_lock = asyncio.Lock()
        #: Config path, digest and last reload, for the state file (set by agent/reload.py).
        self.config_status: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then restore devices and say `stopped`."""
        cfg = self.cfg
        self.report_seq = int(await self.store.meta_get("report_seq") or 0)
        await self._recover()
        if self._metrics:
            from agent.metrics import serve_metrics

            _reg, self.metrics_port = serve_metrics(self, cfg.metrics.host, cfg.metrics.port)
        self.mqtt = MqttLink(
            cfg.mqtt,
            self.topics,
            self.store,
            cfg.mqtt.client_id or f"dr-agent-{cfg.site.id}",
            self.on_message,
            self._on_connected,
        )
        log.info("event=starting site=%s version=%s devices=%d", cfg.site.id, __version__, len(self.devices))
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._poll_loop(), name="poll"),
                    tg.create_task(self._control_loop(), name="control"),
                    tg.create_task(self.mqtt.run(), name="mqtt"),
                    tg.create_task(self._flush_loop(), name="flush"),
                    tg.create_task(self._report_loop(), name="report"),
                    tg.create_task(self._ready_when_up(), name="ready"),
                    tg.create_task(statefile.run_writer(self), name="state"),
                ]
                await stop.wait()
                self.notifier.stopping()
                for t in tasks:
                    if t.get_name() != "mqtt":
                        t.cancel()
                await self.shutdown()
                await statefile.write_final(self)
                tasks[2].cancel()
        finally:
            await self._flush()
            for t in self.transports.values():
                await t.close()
            await self.store.close()

    async def _ready_when_up(self) -> None:
        """READY once devices were polled and the broker answered (or a grace period passed)."""
        await self.polled_once.wait()
        assert self.mqtt is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.mqtt.ever_connected.wait(), timeout=10)
        self.notifier.ready(f"site {self.cfg.site.id}: {len(self.devices)} devices")
        log.info("event=ready mqtt_connected=%s", self.mqtt.connected.is_set())

    async def shutdown(self) -> None:
        """Restore every touched device, record it, publish the final state and `stopped`."""
        now = self.clock.now()
        if self.cfg.control.restore_on_stop:
            for rec in self.events.values():
                if rec.control and rec.control.active:
                    await self.controller.release_all(rec.control, now, "agent stopping")
            failed = await self.actuator.restore_all("agent stopping")
            if failed:
                log.error("event=restore_incomplete devices=%s", ",".join(failed))
        if self.mqtt is not None:
            # Give the outbox a moment to drain what the restore produced.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    while self.mqtt.connected.is_set() and await self.store.outbox_pending(1):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            await self.mqtt.publish_status("stopped")
        log.info("event=stopped")

    async def _recover(self) -> None:
        """After a restart: resume an event still running; put back anything else left shed by a crash."""
        await self.lifecycle.recover(self.clock.now())

    # -- polling -------------------------------------------------------------------

    async def _poll_endpoint(self, devices: list[Device]) -> None:
        """Devices on one endpoint in turn: healthy ones first, so a silent unit delays nobody this
        cycle; an unavailable one is only retried when its backoff is due (one timeout at most)."""
        for d in sorted(devices, key=lambda d: not d.health.available):
            if d.due():
                await d.poll()
        now = self.clock.now()
        for d in devices:
            await d.maintain(now)

    async def _poll_all(self) -> None:
        by_ep: dict[str, list[Device]] = {}
        for d in self.devices.values():
            by_ep.setdefault(d.transport.name, []).append(d)
        await asyncio.gather(*(self._poll_endpoint(ds) for ds in by_ep.values()))
        now = self.clock.now()
        kw = self.meter.power_kw()
        if kw is not None:
            self.meter_ts = now
            self.filter.update(now, kw)
            self.recent.append((now, kw))
            self.pending.rows.append((self.meter.name, now, kw))
        for d in self.devices.values():
            if d is not self.meter:
                p = d.power_kw()
                if p is not None:
                    self.pending.rows.append((d.name, now, p))
        ot = self.cfg.outdoor_temperature
        if ot is not None and (t := self.devices[ot.device].reading(ot.role)) is not None:
            self.pending.rows.append((TEMPERATURE_KEY, now, t))  # °C, stored like a device's kW

    async def _poll_loop(self) -> None:
        while True:
            t0 = self.clock.now()
            await self._poll_all()
            self.polled_once.set()
            await self.clock.sleep(max(0.0, self.cfg.modbus.poll_interval_s - (self.clock.now() - t0)))

    def site_load_kw(self) -> float | None:
        """Filtered site load, or None when the meter is stale or down (the controller then holds)."""
        if self.meter_ts is None or not self.meter.health.available:
            return None
        if self.clock.now() - self.meter_ts > self.cfg.control.meter_stale_s:
            return None
        return self.filter.value

    async def _flush(self) -> None:
        rows, self.pending.rows = self.pending.rows, []
        if not rows:
            return
        try:
            await self.store.add_readings(rows)
            self._flush_failures.ok()
        except sqlite3.Error as exc:
            # Keep the rows for the next try, bounded: a long outage drops the oldest, counted.
            self._flush_failures.failed(str(exc))
            keep = (rows + self.pending.rows)[-MAX_PENDING_READINGS:]
            self.readings_dropped += len(rows) + len(self.pending.rows) - len(keep)
            self.pending.rows = keep

    async def _flush_loop(self) -> None:
        from agent.history import Pruner

        pruner = Pruner()  # the metering history's retention, applied once an hour
        while True:
            await asyncio.sleep(2.0)
            await self._flush()
            with contextlib.suppress(sqlite3.Error):
                self.outbox_pending = len(await self.store.outbox_pending(1000))
            now = self.clock.now()
            if pruner.due(now):
                try:
                    await self.store.call(
                        pruner.run,
                        self.store.sync,
                        self.cfg.storage,
                        [*self.devices, TEMPERATURE_KEY],
                        self.meter.name,
                        now,
                    )
                except sqlite3.Error as exc:
                    log.error("event=history_prune_failed error=%r", exc)

    # -- events in -----------------------------------------------------------------

    async def on_message(self, topic: str, raw: bytes, retained: bool = False) -> None:
        await self.lifecycle.on_message(topic, raw, retained)

    async def handle_event(self, ev: DrEvent) -> None:
        await self.lifecycle.handle_event(ev)

    async def _on_connected(self) -> None:
        await self.lifecycle.on_connected()

    async def _send(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        if self.mqtt is not None:
            await self.mqtt.send(topic, payload, retain)
        elif self.sink is not None:
            self.sink(topic, payload)

    # -- control -----------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            t0 = time.perf_counter()
            now = self.clock.now()
            try:
                async with self.cycle_lock:
                    await self.control_cycle(now)
                self._cycle_failures.ok()
            except (sqlite3.Error, OSError) as exc:
                # A full disk or a broken database must not take the daemon down in a restart
                # loop while devices are shed: hold this cycle, say so, try again next cycle.
                self._cycle_failures.failed(str(exc))
            if time.monotonic() >= self._next_orphan_check:
                self._next_orphan_check = time.monotonic() + 30.0
                try:
                    await self.restore_orphans()
                except (sqlite3.Error, OSError) as exc:
                    log.warning("event=orphan_check_failed error=%r", str(exc))
            self.last_cycle_s = time.perf_counter() - t0
            self.notifier.watchdog()
            self.wake.clear()
            await self._wait_next_cycle(self.cfg.control.period_s / self.clock.speed)

    async def restore_orphans(self) -> list[str]:
        """Restore journalled sheds that no live event owns (e.g. an interrupted `diagnose --test-shed`).

        Devices are never left shed: anything older than ORPHAN_GRACE_S (wall time) whose event
        is over, unknown or not ours is put back and audited. Returns the restored device.role names.
        """
        owners = self.lifecycle.owning_event_ids()
        restored = []
        for e in await self.store.journal_open():
            if e.event_id in owners or time.time() - e.ts < ORPHAN_GRACE_S:
                continue
            if await self.actuator.restore(
                e.device, e.role, "orphaned shed: no running event owns it", e.event_id
            ):
                restored.append(f"{e.device}.{e.role}")
                log.warning("event=orphan_restored device=%s role=%s owner=%s", e.device, e.role, e.event_id)
        return restored

    async def _wait_next_cycle(self, wait_s: float) -> None:
        """Sleep until the next cycle or a wake-up, feeding the watchdog at least every WatchdogSec/2."""
        wd = self.notifier.watchdog_interval_s()
        feed = wd / 2 if wd else None
        deadline = time.monotonic() + max(0.001, wait_s)
        while (left := deadline - time.monotonic()) > 0 and not self.wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=min(left, feed) if feed else left)
            if feed:
                self.notifier.watchdog()

    async def reload(self, new_cfg: SiteConfig) -> Any:
        """Apply a new config between two control cycles; a running event keeps its steps (agent/reload.py)."""
        from agent.reload import apply_config

        async with self.cycle_lock:
            return await apply_config(self, new_cfg)

    async def control_cycle(self, now: float) -> None:
        """The event lifecycle plus one control decision for each shedding event."""
        await self.lifecycle.tick(now)
        load = self.site_load_kw()
        raw = self.recent[-1][1] if load is not None and self.recent else None
        for rec in self.lifecycle.shedding():
            assert rec.control is not None
            c = rec.control
            await self.controller.cycle(c, now, load, c.peak_kw or self.cfg.contract.peak_kw, raw_kw=raw)

    # -- live reports -------------------------------------------------------------------

    def running(self) -> EventRecord | None:
        return self.lifecycle.running()

    def live_state(self) -> dict[str, Any]:
        """The running event's live report (the lifecycle builds it from its model), else the load alone."""
        load = self.site_load_kw()
        now = self.clock.now()
        report = self.lifecycle.live_report(load, now)
        if report is not None:
            return report
        return {"ts": now, "measured_kw": None if load is None else round(load, 3)}

    async def _report_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.control.report_interval_s)
            state = self.live_state()
            if "event_id" not in state:
                continue
            try:
                # The sequence number and the queued report are one transaction: after a
                # crash no number is reused, so subscribers may dedupe on it.
                if self.mqtt is not None:
                    self.report_seq = await self.mqtt.send_numbered(self.topics.report, state, "report_seq")
                else:
                    self.report_seq += 1
                    await self._send(self.topics.report, {**state, "seq": self.report_seq})
            except sqlite3.Error as exc:
                log.warning("event=report_not_queued error=%r", str(exc))
