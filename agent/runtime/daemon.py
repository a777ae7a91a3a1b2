"""The agent daemon: supervised components around one control cycle, and the shell that owns them.

Components (one TaskGroup, each under agent/runtime/supervisor.py, which restarts it
on failure with the shared backoff): `poll[<endpoint>]` reads the devices of
one endpoint every poll interval, one at a time, independently of every other
endpoint, into the process image (each device's latest values with their
time, the meter's series); `control` runs the event lifecycle and the control
cycle on that image and feeds the systemd watchdog; `mqtt` receives events
and drains the outbox; `flush` writes readings to SQLite in batches; `report`
publishes live reports; `state` writes the state file; `metrics` serves
/metrics. SIGTERM ends them, then every touched device is restored and
`stopped` is published. Any other way out (the control path given up, an
exception, cancellation) passes through the same `finally:` in `run()`:
restore every journalled shed, publish `failed` with the reason, exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from agent import __version__
from agent.config.model import SiteConfig
from agent.control.actuator import Actuator
from agent.control.controller import Controller, LoadFilter, MeterGuard
from agent.events.lifecycle import EventLifecycle, EventRecord
from agent.events.model import DrEvent
from agent.events.ports import LifecyclePorts, ProviderRouter, Sink, SinkLink
from agent.platform import failpoints
from agent.platform.clock import Clock, SystemClock
from agent.platform.logs import FailureLog
from agent.platform.store import AsyncStore, Store
from agent.runtime import statefile
from agent.runtime.devices import build_devices
from agent.runtime.mqtt import MqttLink, MqttProviderLink, Topics
from agent.runtime.sdnotify import Notifier
from agent.runtime.supervisor import Component, Supervisor, describe
from agent.runtime.wiring import ControlActuation, ImageReadings, StoreBooks
from agent.settlement.history import TEMPERATURE_KEY, Pruner, ReadingsBuffer, deadbands
from drivers.device import Device, Transport

log = logging.getLogger("dr_agent")

# Readings kept in memory while the database refuses writes (about an hour of a 20-device site).
MAX_PENDING_READINGS = 100_000
# A journalled shed no live event owns is restored after this long (wall seconds): long enough
# for a `diagnose --test-shed` run beside the daemon, short enough that nothing stays shed.
ORPHAN_GRACE_S = 600.0
#: Readings go to SQLite this often, s: one transaction per flush, so fewer flushes write fewer
#: pages (the eMMC wears by the page); a crash loses at most this much of the meter's rows.
FLUSH_INTERVAL_S = 10.0
#: The control path failing this many times in a row (no healthy run between) stops the agent
#: safely: without control nothing would ever end a shed.
CONTROL_MAX_FAILURES = 5
#: Longest a new event's first stage holds the polls back (from its reads ahead to its first writes).
POLL_HOLD_S = 0.25
#: The interpreter's switch interval once READY. Each time the event loop waits on a socket it
#: hands Python over; a thread running Python meanwhile (the store's thread settling an event)
#: gives it back at the latest after this long. With Python's default, 5 ms, an event's first
#: stage (some twenty waits) took about 100 ms instead of 1 while the other thread ran Python;
#: with 1 ms about 20 ms, and that thread about a tenth slower (`bench/thread_contention.py`).
SWITCH_INTERVAL_S = 0.001


class AgentFailed(Exception):
    """The agent stopped because it could not go on safely (the reason is in the message); exit 1."""


@dataclass
class PendingReadings:
    rows: list[tuple[str, float, float]] = field(default_factory=list)


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
        self.store = AsyncStore(Store(store_path or cfg.storage.resolved(), recover_corrupt=True))
        self.actuator = Actuator(self.devices, self.store)
        self.actuation = ControlActuation(
            Controller(cfg.control, self.devices, self.actuator, self.tz, on_change=self._control_changed),
            self.actuator,
            self.store,
            on_read_ahead=self.hold_polls,
        )
        #: Cleared while a new event's first stage is on its way (`hold_polls`).
        self._polls_go = asyncio.Event()
        self._polls_go.set()
        self._poll_hold: asyncio.TimerHandle | None = None
        self.mqtt: MqttLink | None = None
        #: The OpenADR VEN (agent/openadr/ven.py) when openadr is an event source.
        self.ven: Any = None
        self.notifier = Notifier()
        #: Without MQTT (simulation), outgoing messages go to `sink` (topic, payload).
        self.sink_link = SinkLink(cfg.topic_root)
        #: Where the lifecycle's messages go: MQTT once run() connects it, the sink before;
        #: the OpenADR VEN joins it for its own events.
        self.provider = ProviderRouter(self.sink_link)
        self.lifecycle = EventLifecycle(
            lambda: self.cfg,
            self.clock,
            self.devices,
            LifecyclePorts(
                link=self.provider,
                actuation=self.actuation,
                store=self.store,
                readings=ImageReadings(
                    self.site_load_kw,
                    lambda: self.filter.value,
                    lambda: self.recent,
                    self.flush,
                    self.poll_all,
                ),
                books=StoreBooks(self.store, lambda: self.cfg, lambda: self.meter.name),
                wake=self.wake_now,
            ),
            (self.topics.event_in, self.topics.price_in),
        )
        self.events: dict[str, EventRecord] = self.lifecycle.events
        self.filter = LoadFilter(cfg.control.filter_s)
        self.meter_guard = MeterGuard(cfg.contract.peak_kw)
        self.meter_ts: float | None = None
        # Recent raw site readings for the real-time baseline (15 min before control starts).
        self.recent: deque[tuple[float, float]] = deque(maxlen=7200)
        self.pending = PendingReadings()
        #: What of the readings is stored, and when (agent/settlement/history.py).
        self.buffer = ReadingsBuffer(
            full_rate={cfg.site.meter, TEMPERATURE_KEY},
            deadband_kw=deadbands(cfg.devices, cfg.storage.device_deadband_pct),
        )
        self.pruner = Pruner()
        #: Set to run the next control cycle now.
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
        #: Held for one control cycle; a config reload waits for it (agent/runtime/reload.py).
        self.cycle_lock = asyncio.Lock()
        #: Config path, digest and last reload, for the state file (set by agent/runtime/reload.py).
        self.config_status: dict[str, Any] = {}
        self.supervisor = Supervisor(self.clock.sleep, self._give_up)
        #: How the MQTT link waits out its reconnect backoff (tests patch it to run hours of outage fast).
        self.mqtt_sleep: Callable[[float], Awaitable[None]] = self.clock.sleep
        self._stop: asyncio.Event | None = None
        self._polled: set[str] = set()
        self._restored = False
        #: device.role entries that could not be put back at the last stop.
        self.unrestored: list[str] = []

    @property
    def controller(self) -> Controller:
        return self.actuation.controller

    @controller.setter
    def controller(self, controller: Controller) -> None:
        controller.on_change = self._control_changed
        self.actuation.controller = controller

    @property
    def sink(self) -> Sink | None:
        """Without MQTT (simulation), outgoing messages go here: (topic, payload)."""
        return self.sink_link.sink

    @sink.setter
    def sink(self, sink: Sink | None) -> None:
        self.sink_link.sink = sink

    def wake_now(self) -> None:
        self.wake.set()

    def hold_polls(self) -> None:
        """A new event's first stage is being read: no device starts a poll until its first writes
        are out (`release_polls`: the control cycle's change hook, or its end), at most POLL_HOLD_S.
        A poll burst (every device of an endpoint at once) would otherwise put its requests on the
        endpoints and its replies in the event loop between the event and its writes."""
        self._polls_go.clear()
        if self._poll_hold is not None:
            self._poll_hold.cancel()
        self._poll_hold = asyncio.get_running_loop().call_later(POLL_HOLD_S, self.release_polls)

    def release_polls(self) -> None:
        self._polls_go.set()
        if self._poll_hold is not None:
            self._poll_hold.cancel()
            self._poll_hold = None

    # -- lifecycle ---------------------------------------------------------------

    def _components(self, metrics: Any) -> list[Component]:
        assert self.mqtt is not None
        out = [
            Component("poll", self._poll_loop),
            Component("control", self._control_loop, max_failures=CONTROL_MAX_FAILURES),
            Component("mqtt", self.mqtt.run),
            Component("flush", self._flush_loop),
            Component("report", self._report_loop),
            Component("state", lambda: statefile.run_writer(self)),
            Component("ready", self._ready_when_up),
        ]
        if metrics is not None:
            out.append(Component("metrics", metrics.run))
        if "openadr" in self.cfg.event_sources and self.cfg.openadr is not None:
            if self.ven is None:
                from agent.openadr.ven import VenBridge  # needs the openadr extra (openleadr)

                self.ven = VenBridge(
                    self.cfg.openadr,
                    self.lifecycle,
                    self.clock,
                    self.store,
                    self.provider,
                    lambda: self.cfg.contract,
                    self.site_load_kw,
                )
                self.provider.add_source("openadr", self.ven)
            out.append(Component("openadr", self.ven.run))
        return out

    def _give_up(self, reason: str) -> None:
        """A component failed past its bound (agent/runtime/supervisor.py): stop safely, say why."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run the supervised components until `stop` is set or the control path gives up.

        Every way out passes through one `finally:` that restores each journalled shed and
        tells the broker (`stopped` on a clean stop, `failed` with the reason otherwise).
        Raises AgentFailed (the CLI exits 1) when the control path gave up or a device could
        not be restored; re-raises whatever else ended the run.
        """
        cfg = self.cfg
        self._stop = stop
        reason: str | None = None
        clean = False
        try:
            self.report_seq = int(await self.store.meta_get("report_seq") or 0)
            await self._recover()
            metrics = None
            if self._metrics:
                from agent.runtime.metrics import MetricsServer

                metrics = MetricsServer(self, cfg.metrics.host, cfg.metrics.port)
                self.metrics_port = metrics.start()
            self.mqtt = MqttLink(
                cfg.mqtt,
                self.topics,
                self.store,
                cfg.mqtt.client_id or f"dr-agent-{cfg.site.id}",
                self.on_message,
                self._on_connected,
                sleep=self.mqtt_sleep,
            )
            self.provider.primary = MqttProviderLink(self.mqtt)
            log.info(
                "event=starting site=%s version=%s devices=%d loop=%s",
                cfg.site.id,
                __version__,
                len(self.devices),
                # uvloop's class lives in module "uvloop"; asyncio's in "asyncio.unix_events".
                type(asyncio.get_running_loop()).__module__.split(".")[0],
            )
            async with asyncio.TaskGroup() as tg:
                tasks = {
                    c.name: tg.create_task(self.supervisor.supervise(c), name=c.name)
                    for c in self._components(metrics)
                }
                await stop.wait()
                self.notifier.stopping()
                for name, t in tasks.items():
                    if name != "mqtt":
                        t.cancel()
                reason = self.supervisor.fatal
                # The link stays up for this: restores produce states to publish, then the status.
                await self.shutdown(reason)
                await statefile.write_final(self)
                tasks["mqtt"].cancel()
            clean = True
        except asyncio.CancelledError:
            reason = reason or "cancelled"
            raise
        except BaseException as exc:
            reason = reason or describe(exc)
            log.critical("event=agent_failed error=%r", reason, exc_info=exc)
            raise
        finally:
            if not clean:
                await self._fail_safe(reason or "stopped abnormally")
            with contextlib.suppress(sqlite3.Error):
                await self.flush(final=True)
            for t in self.transports.values():
                with contextlib.suppress(Exception):
                    await t.close()
            await self.store.close()
        if self.supervisor.fatal or self.unrestored:
            raise AgentFailed(self._failure_text(self.supervisor.fatal))

    def _failure_text(self, reason: str | None) -> str:
        parts = [reason] if reason else []
        if self.unrestored:
            parts.append("not restored: " + ", ".join(self.unrestored))
        return "; ".join(parts)

    async def _fail_safe(self, reason: str) -> None:
        """The way out of a run that did not stop cleanly: restore, then publish `failed`."""
        if not self._restored:
            try:
                self.unrestored = await self.actuator.restore_all(f"agent failing: {reason}")
                self._restored = True
            except Exception as exc:  # the journal and its in-memory mirror both gone: say so
                log.critical("event=restore_impossible error=%r", describe(exc))
                self.unrestored = ["(journal unreadable)"]
        if self.mqtt is not None:
            await self.mqtt.publish_status("failed", reason=self._failure_text(reason))

    async def _ready_when_up(self) -> None:
        """READY once devices were polled and the broker answered (or a grace period passed)."""
        await self.polled_once.wait()
        assert self.mqtt is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.mqtt.ever_connected.wait(), timeout=10)
        self.notifier.ready(f"site {self.cfg.site.id}: {len(self.devices)} devices")
        log.info("event=ready mqtt_connected=%s", self.mqtt.connected.is_set())
        # What start-up built (modules, config, profiles, models) lives as long as the process: kept
        # out of the collector's full passes, which would walk all of it (some 9 ms with the loop
        # stopped) at random moments, an event's first writes included. Garbage goes first.
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def shutdown(self, reason: str | None = None) -> None:
        """Restore every touched device, record it, publish the final state and the status.

        `reason` (the agent is giving up) restores even with `restore_on_stop: false` and
        publishes `failed`; so does a device that could not be put back.
        """
        now = self.clock.now()
        why = "agent stopping" if reason is None else f"agent failing: {reason}"
        if self.cfg.control.restore_on_stop or reason is not None:
            for rec in self.events.values():
                if rec.control and rec.control.active:
                    try:
                        await self.controller.release_all(rec.control, now, why)
                    except Exception as exc:  # restore_all below puts back whatever this left
                        log.error(
                            "event_id=%s event=release_failed error=%r", rec.event.event_id, describe(exc)
                        )
            self.unrestored = await self.actuator.restore_all(why)
            self._restored = True
        if self.mqtt is not None:
            # Give the outbox a moment to drain what the restore produced.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    while self.mqtt.connected.is_set() and await self.store.outbox_pending(1):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            if reason is None and not self.unrestored:
                await self.mqtt.publish_status("stopped")
            else:
                await self.mqtt.publish_status("failed", reason=self._failure_text(reason))
        log.info("event=stopped failed=%s", "no" if reason is None and not self.unrestored else "yes")

    async def _recover(self) -> None:
        """After a restart: resume an event still running; put back anything else left shed by a crash."""
        await self.lifecycle.recover(self.clock.now())

    # -- polling: one loop per endpoint into the process image ---------------------------

    def _by_endpoint(self) -> dict[str, list[Device]]:
        by_ep: dict[str, list[Device]] = {}
        for d in self.devices.values():
            by_ep.setdefault(d.transport.name, []).append(d)
        return by_ep

    async def _poll_endpoint(self, devices: list[Device]) -> None:
        """Devices on one endpoint in turn: healthy ones first, so a silent unit delays nobody this
        cycle; an unavailable one is only retried when its backoff is due (one timeout at most)."""
        for d in sorted(devices, key=lambda d: not d.health.available):
            if d.due():
                await self._polls_go.wait()  # a new event's first stage goes first (hold_polls)
                await d.poll()
        now = self.clock.now()
        for d in devices:
            await d.maintain(now)

    def _take_readings(self, devices: list[Device], now: float) -> None:
        """One endpoint's fresh readings into the process image: the meter's series (filter,
        real-time baseline) with its time, and every device's power to store. A device that
        failed its poll has no values, so nothing stale is taken."""
        for d in devices:
            kw = d.power_kw()
            if kw is None:
                continue
            if d is self.meter:
                if not self.meter_guard.accept(now, kw):
                    continue  # frozen, a spike, a zero: not a load; the meter goes stale, control holds
                self.meter_ts = now
                self.filter.update(now, kw)
                self.recent.append((now, kw))
            self.pending.rows.append((d.name, now, kw))
        ot = self.cfg.outdoor_temperature
        if ot is not None:
            dev = self.devices.get(ot.device)
            if dev is not None and dev in devices and (t := dev.reading(ot.role)) is not None:
                self.pending.rows.append((TEMPERATURE_KEY, now, t))  # °C, stored like a device's kW

    async def poll_all(self) -> None:
        """Every endpoint once, in parallel (start-up recovery and the simulation's stepped time)."""
        by_ep = self._by_endpoint()
        await asyncio.gather(*(self._poll_endpoint(ds) for ds in by_ep.values()))
        now = self.clock.now()
        for ds in by_ep.values():
            self._take_readings(ds, now)

    async def _endpoint_loop(self, name: str) -> None:
        """Poll one endpoint every poll interval, on its own: a silent device costs its endpoint
        only. Ends when a reload leaves the endpoint without devices."""
        while devices := self._by_endpoint().get(name):
            t0 = self.clock.now()
            failpoints.hit(f"poll[{name}]")
            await self._poll_endpoint(devices)
            if (task := asyncio.current_task()) is not None and task.cancelling():
                # pymodbus turns a cancellation mid-request into an I/O error the device absorbs:
                # stop anyway, or the task group would wait for this loop for ever.
                raise asyncio.CancelledError
            self._take_readings(devices, self.clock.now())
            self._polled.add(name)
            if self._polled >= self._by_endpoint().keys():
                self.polled_once.set()
            await self.clock.sleep(max(0.0, self.cfg.modbus.poll_interval_s - (self.clock.now() - t0)))

    async def _poll_loop(self) -> None:
        """One supervised `poll[<endpoint>]` loop per endpoint; an endpoint a reload adds gets its own."""
        running: dict[str, asyncio.Task[None]] = {}
        async with asyncio.TaskGroup() as tg:
            while True:
                for name in self._by_endpoint():
                    if name not in running or running[name].done():
                        c = Component(f"poll[{name}]", functools.partial(self._endpoint_loop, name))
                        running[name] = tg.create_task(self.supervisor.supervise(c), name=c.name)
                await self.clock.sleep(max(1.0, self.cfg.modbus.poll_interval_s))

    def site_load_kw(self) -> float | None:
        """Filtered site load, or None when the meter is stale or down (the controller then holds)."""
        if self.meter_ts is None or not self.meter.health.available:
            return None
        if self.clock.now() - self.meter_ts > self.cfg.control.meter_stale_s:
            return None
        return self.filter.value

    async def flush(self, final: bool = False) -> None:
        """The readings polled since the last flush to SQLite in one transaction (what is kept:
        agent/settlement/history.py); `final` (a stop) also writes the minutes still open."""
        rows, self.pending.rows = self.pending.rows, []
        for r in rows:
            self.buffer.add(*r)
        raw, minutes = self.buffer.take(self.clock.now(), final)
        if not raw and not minutes:
            return
        try:
            await self.store.add_batch(raw, minutes, self.buffer.full_rate)
            self._flush_failures.ok()
        except sqlite3.Error as exc:
            # Keep the batch for the next try, bounded: a long outage drops the oldest, counted.
            self._flush_failures.failed(str(exc))
            self.readings_dropped += self.buffer.put_back(raw, minutes, MAX_PENDING_READINGS)

    async def flush_once(self, now: float) -> None:
        """One turn of the flush loop: the readings, the outbox's depth, the retention once an
        hour and the disk budget's backstop (a chunk at a time, so a journal write waits for one
        chunk at most)."""
        await self.flush()
        with contextlib.suppress(sqlite3.Error):
            self.outbox_pending = len(await self.store.outbox_pending(1000))
        st, sync = self.cfg.storage, self.store.sync
        try:
            if self.pruner.due(now):
                await self.store.call(
                    self.pruner.run, sync, st, [*self.devices, TEMPERATURE_KEY], self.meter.name, now
                )
            for _ in range(100):
                if not await self.store.call(self.pruner.budget_step, sync, st, self.meter.name, now):
                    break
        except sqlite3.Error as exc:
            log.error("event=history_prune_failed error=%r", exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            failpoints.hit("flush")
            await self.flush_once(self.clock.now())

    # -- events in -----------------------------------------------------------------

    async def on_message(self, topic: str, raw: bytes, retained: bool = False) -> None:
        if "mqtt" not in self.cfg.event_sources and topic in (self.topics.event_in, self.topics.price_in):
            log.debug("event=message_ignored topic=%s reason='mqtt is not an event source'", topic)
            return
        await self.lifecycle.on_message(topic, raw, retained)

    async def handle_event(self, ev: DrEvent) -> None:
        await self.lifecycle.handle_event(ev)

    async def _on_connected(self) -> None:
        await self.lifecycle.on_connected()

    # -- control -----------------------------------------------------------------------

    async def _control_loop(self) -> None:
        # A cycle follows every event at once: a new event's bookkeeping may wait for its first writes.
        self.lifecycle.defer_bookkeeping = True
        while True:
            t0 = time.perf_counter()
            # Cleared before the cycle, not after: a wake-up during it (an event arriving while the
            # cycle waits on a device) runs the next cycle at once instead of a period later.
            self.wake.clear()
            now = self.clock.now()
            failpoints.hit("control")
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
            await self._wait_next_cycle(self.cfg.control.period_s / self.clock.speed)

    async def _control_changed(self, event_id: str, what: str) -> None:
        """A step added or released: the first stage of a new event is out, its answer may go."""
        self.release_polls()
        self.lifecycle.first_writes_done(event_id)

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
            # asyncio.timeout, not wait_for: no task per wait, so a wake-up resumes the loop in one step.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, feed) if feed else left):
                    await self.wake.wait()
            if feed:
                self.notifier.watchdog()

    async def reload(self, new_cfg: SiteConfig) -> Any:
        """Apply a new config between two control cycles; a running event keeps its steps (agent/runtime/reload.py)."""
        from agent.runtime.reload import apply_config

        async with self.cycle_lock:
            return await apply_config(self, new_cfg)

    async def control_cycle(self, now: float) -> None:
        """The event lifecycle plus one control decision for each shedding event."""
        try:
            await self.lifecycle.tick(now)
            load = self.site_load_kw()
            raw = self.recent[-1][1] if load is not None and self.recent else None
            for rec in self.lifecycle.shedding():
                assert rec.control is not None
                c = rec.control
                await self.controller.cycle(c, now, load, c.peak_kw or self.cfg.contract.peak_kw, raw_kw=raw)
        finally:
            # An event begun this cycle is persisted and published once its first writes are out.
            self.release_polls()
            await self.lifecycle.after_cycle()

    # -- live reports -------------------------------------------------------------------

    def running(self) -> EventRecord | None:
        return self.lifecycle.running()

    def live_state(self) -> dict[str, Any]:
        """The running event's live report (the lifecycle builds it from its model), else the load alone."""
        load = self.site_load_kw()
        now = self.clock.now()
        report = self.lifecycle.live_report(load, now)
        if report is not None:
            return report.model_dump(mode="json")
        return {"ts": now, "measured_kw": None if load is None else round(load, 3)}

    async def _report_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.control.report_interval_s)
            failpoints.hit("report")
            report = self.lifecycle.live_report(self.site_load_kw(), self.clock.now())
            if report is None:
                continue
            try:
                self.report_seq = await self.provider.send_report(report)
            except sqlite3.Error as exc:
                log.warning("event=report_not_queued error=%r", str(exc))
