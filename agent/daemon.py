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
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent import __version__
from agent.actuator import Actuator
from agent.clock import Clock, SystemClock
from agent.config import SiteConfig
from agent.contract import Decision as OptDecision
from agent.contract import decide as decide_opt
from agent.control import Controller, EventControl, LoadFilter
from agent.events import DrEvent, EventError, parse_event, response
from agent.mqtt import MqttLink, Topics
from agent.sdnotify import Notifier
from agent.settlement import settle
from agent.store import AsyncStore, Store
from drivers.device import Device, Transport
from drivers.modbus import ModbusTransport
from drivers.profile import load_profile
from drivers.registry import kinds
from strategies.engine import build_steps

log = logging.getLogger("dr_agent")

NEAR_WINDOW_S = 900.0
BASELINE_WINDOW_S = 900.0
FINAL_STATES = {"completed", "cancelled", "opted_out"}


@dataclass
class EventRecord:
    event: DrEvent
    opt: OptDecision
    state: str
    effective_start: float
    control: EventControl | None = None
    settled: bool = False

    @property
    def control_start(self) -> float:
        return self.effective_start - self.event.ramp_up_s


@dataclass
class PendingReadings:
    rows: list[tuple[str, float, float]] = field(default_factory=list)


def build_devices(
    cfg: SiteConfig, given: Mapping[str, Transport] | None = None
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
        devices[dc.name] = kind.device(dc, transports[dc.endpoint], load_profile(dc.profile))
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
        self.transports, self.devices = build_devices(cfg, transports)
        self.meter = self.devices[cfg.site.meter]
        self.store = AsyncStore(Store(store_path or cfg.storage.resolved()))
        self.actuator = Actuator(self.devices, self.store)
        self.controller = Controller(cfg.control, self.devices, self.actuator, self.tz)
        self.mqtt: MqttLink | None = None
        self.notifier = Notifier()
        self.events: dict[str, EventRecord] = {}
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
        self.started_at = time.time()
        self.metrics_port: int | None = None
        self._metrics = cfg.metrics.enabled if metrics is None else metrics
        self._rng = random.Random()
        #: Without MQTT (simulation), outgoing messages go here instead: (topic, payload).
        self.sink: Callable[[str, dict[str, Any]], None] | None = None

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
                ]
                await stop.wait()
                self.notifier.stopping()
                for t in tasks:
                    if t.get_name() != "mqtt":
                        t.cancel()
                await self.shutdown()
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
        """After a restart: reload events; put back anything left shed by a crash."""
        now = self.clock.now()
        for row in await self.store.events():
            try:
                ev = DrEvent.model_validate(row["payload"])
            except Exception:
                continue
            opt = OptDecision(row["opt"] or "out", row["code"] or "", row["reason"] or "")
            rec = EventRecord(ev, opt, row["state"], row["effective_start"] or ev.start_ts)
            rec.settled = await self.store.settlement(ev.event_id) is not None
            self.events[ev.event_id] = rec
        opens = await self.store.journal_open()
        if opens:
            # Poll first: restore needs the devices reachable, and we want to log what we saw.
            await self._poll_all()
            failed = await self.actuator.restore_all("restart: restoring what the previous run left shed")
            log.warning("event=crash_recovery restored=%d failed=%s", len(opens), ",".join(failed) or "none")
        for rec in self.events.values():
            if rec.state == "active" and rec.event.end_ts <= now:
                rec.state = "completed_unsettled"

    # -- polling -------------------------------------------------------------------

    async def _poll_endpoint(self, devices: list[Device]) -> None:
        mono = time.monotonic()
        for d in devices:
            if d.due(mono):
                await d.poll()

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

    async def _poll_loop(self) -> None:
        period = self.cfg.modbus.poll_interval_s
        while True:
            t0 = self.clock.now()
            await self._poll_all()
            self.polled_once.set()
            await self.clock.sleep(max(0.0, period - (self.clock.now() - t0)))

    def site_load_kw(self) -> float | None:
        """Filtered site load, or None when the meter is stale or down (the controller then holds)."""
        if self.meter_ts is None or not self.meter.health.available:
            return None
        if self.clock.now() - self.meter_ts > self.cfg.control.meter_stale_s:
            return None
        return self.filter.value

    async def _flush(self) -> None:
        rows, self.pending.rows = self.pending.rows, []
        if rows:
            await self.store.add_readings(rows)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            await self._flush()
            self.outbox_pending = len(await self.store.outbox_pending(1000))

    # -- events in -----------------------------------------------------------------

    async def on_message(self, topic: str, raw: bytes) -> None:
        if topic != self.topics.event_in:
            return
        try:
            ev = parse_event(raw)
        except EventError as err:
            log.warning(
                "event=event_refused code=%s event_id=%s error=%r", err.code, err.event_id, err.message
            )
            await self._send(self.topics.error, err.payload())
            return
        await self.handle_event(ev)

    async def handle_event(self, ev: DrEvent) -> None:
        now = self.clock.now()
        known = self.events.get(ev.event_id)
        if known is not None:
            if ev.modification_number < known.event.modification_number:
                log.info("event_id=%s event=stale_modification n=%d", ev.event_id, ev.modification_number)
                await self._send(
                    self.topics.error,
                    EventError(
                        "stale_modification",
                        f"modification_number {ev.modification_number} is below the current "
                        f"{known.event.modification_number}; ignored",
                        ev.event_id,
                        "modification_number",
                    ).payload(),
                )
                return
            if ev.modification_number == known.event.modification_number:
                # Same number: an idempotent re-acknowledgement.
                await self._send(self.topics.response, self._response(known))
                return
            if ev.status == "cancelled":
                await self._cancel(known, ev, now)
                return
        elif ev.status == "cancelled":
            await self._send(
                self.topics.error,
                EventError(
                    "unknown_event",
                    "cancellation of an event this agent never received",
                    ev.event_id,
                    "event_id",
                ).payload(),
            )
            return
        accepted = [
            r.event
            for r in self.events.values()
            if r.opt.opt == "in" and r.state not in ("cancelled",) and r.event.event_id != ev.event_id
        ]
        opt = decide_opt(ev, self.cfg.contract, self.tz, accepted, now, self.filter.value)
        jitter = self._rng.uniform(0, ev.start_after_s) if ev.start_after_s else 0.0
        if known is not None and known.control is not None:
            # A modification of a running event: keep running, take the new window and target.
            known.event, known.opt = ev, opt
            if opt.opt == "in" and opt.committed_kw is not None:
                known.control.committed_kw = opt.committed_kw
                known.control.end = ev.end_ts
            rec = known
        else:
            rec = EventRecord(ev, opt, "far" if opt.opt == "in" else "opted_out", ev.start_ts + jitter)
            self.events[ev.event_id] = rec
        log.info(
            "event_id=%s event=received opt=%s code=%s reason=%r", ev.event_id, opt.opt, opt.code, opt.reason
        )
        await self.store.save_event(
            ev.event_id,
            ev.modification_number,
            ev.model_dump(mode="json"),
            rec.state,
            opt.opt,
            opt.code,
            opt.reason,
            rec.effective_start,
        )
        await self._send(self.topics.response, self._response(rec))
        await self._publish_state(rec)
        self.wake.set()

    def _response(self, rec: EventRecord) -> dict[str, Any]:
        extra: dict[str, Any] = {"status": "ok"}
        if rec.opt.committed_kw is not None:
            extra["committed_kw"] = round(rec.opt.committed_kw, 3)
        if rec.opt.partial:
            extra["partial"] = True
        if rec.effective_start != rec.event.start_ts:
            extra["effective_start"] = datetime.fromtimestamp(rec.effective_start, self.tz).isoformat()
        return response(rec.event, rec.opt.opt, rec.opt.code, rec.opt.reason, **extra)

    async def _cancel(self, rec: EventRecord, ev: DrEvent, now: float) -> None:
        rec.event = ev
        if rec.control is not None:
            await self.controller.release_all(rec.control, now, "event cancelled")
            rec.control.phase = "done"
        was_running = rec.state == "active"
        rec.state = "cancelled"
        await self.store.save_event(
            ev.event_id,
            ev.modification_number,
            ev.model_dump(mode="json"),
            "cancelled",
            rec.opt.opt,
            "cancelled",
            "cancelled by the provider",
            rec.effective_start,
        )
        log.info("event_id=%s event=cancelled was_running=%s", ev.event_id, was_running)
        await self._send(
            self.topics.response,
            response(ev, rec.opt.opt, "cancelled", "cancelled by the provider", status="ok"),
        )
        await self._publish_state(rec)
        if was_running and rec.control is not None:
            await self._settle(rec, end=now)

    async def _publish_state(self, rec: EventRecord) -> None:
        ev = rec.event
        await self._send(
            self.topics.event_state(ev.event_id),
            {
                "event_id": ev.event_id,
                "modification_number": ev.modification_number,
                "state": rec.state,
                "opt": rec.opt.opt,
                "program": ev.program,
                "start": ev.start.isoformat(),
                "effective_start": datetime.fromtimestamp(rec.effective_start, self.tz).isoformat(),
                "end": datetime.fromtimestamp(ev.end_ts, self.tz).isoformat(),
                "ts": self.clock.now(),
            },
            retain=True,
        )

    async def _on_connected(self) -> None:
        # Re-publish current state on every (re)connect: late subscribers and a restarted broker.
        for rec in self.events.values():
            if rec.state not in FINAL_STATES:
                await self._publish_state(rec)

    async def _send(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        if self.mqtt is not None:
            await self.mqtt.send(topic, payload, retain)
        elif self.sink is not None:
            self.sink(topic, payload)

    # -- control -----------------------------------------------------------------------

    async def _control_loop(self) -> None:
        period = self.cfg.control.period_s
        while True:
            t0 = time.perf_counter()
            now = self.clock.now()
            await self.control_cycle(now)
            self.last_cycle_s = time.perf_counter() - t0
            self.notifier.watchdog()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.001, period / self.clock.speed))

    def _baseline(self, control_start: float) -> tuple[float, str]:
        window = [kw for ts, kw in self.recent if control_start - BASELINE_WINDOW_S <= ts < control_start]
        if window:
            covered = self.recent[-1][0] - self.recent[0][0] if len(self.recent) > 1 else 0.0
            quality = "ok" if covered >= BASELINE_WINDOW_S * 0.9 else f"partial: {covered:.0f} s of history"
            return sum(window) / len(window), quality
        if self.filter.value is not None:
            return self.filter.value, "no history: current load"
        return float("nan"), "no meter data"

    async def control_cycle(self, now: float) -> None:
        """The event lifecycle plus one control decision for the running event."""
        load = self.site_load_kw()
        peak = self.cfg.contract.peak_kw
        for rec in list(self.events.values()):
            if rec.opt.opt != "in" or rec.state in FINAL_STATES:
                continue
            ev = rec.event
            if rec.state == "completed_unsettled":
                await self._settle(rec)
                continue
            if now >= ev.end_ts:
                if rec.control is None:
                    rec.state = "completed"
                    await self.store.set_event_state(ev.event_id, "completed")
                    await self._publish_state(rec)
                    continue
                c = rec.control
                if c.phase == "shedding":
                    c.phase = "restoring"
                    log.info("event_id=%s event=ended restoring=%d", ev.event_id, len(c.active))
                if c.phase == "restoring":
                    done = await self.controller.restore_next(
                        c, now, load, ev.end_ts + c.restore_policy.rebound_window_s
                    )
                    if done:
                        c.phase = "done"
                        rec.state = "completed"
                        await self.store.set_event_state(ev.event_id, "completed")
                        await self._publish_state(rec)
                        await self._settle(rec)
                continue
            if now >= rec.control_start:
                if rec.control is None:
                    await self._begin(rec, now)
                c = rec.control
                assert c is not None
                if c.phase == "shedding":
                    await self.controller.cycle(c, now, load, peak)
            elif now >= ev.start_ts - NEAR_WINDOW_S and rec.state == "far":
                rec.state = "near"
                await self.store.set_event_state(ev.event_id, "near")
                await self._publish_state(rec)

    async def _begin(self, rec: EventRecord, now: float) -> None:
        ev = rec.event
        baseline, quality = self._baseline(rec.control_start)
        committed = rec.opt.committed_kw or 0.0
        if ev.target.cap_kw is not None:
            committed = min(
                max(baseline - ev.target.cap_kw, self.cfg.contract.band_kw()[0]),
                self.cfg.contract.band_kw()[1],
            )
        strategy = self.cfg.strategy_for(ev.program)
        rec.control = EventControl(
            event_id=ev.event_id,
            program=ev.program,
            baseline_kw=baseline,
            committed_kw=committed,
            band=self.cfg.contract.band_kw(),
            steps=build_steps(strategy, self.devices),
            restore_policy=strategy.restore,
            control_start=now,
            end=ev.end_ts,
            test_event=ev.test_event,
            phase="shedding",
        )
        rec.state = "active"
        rec.control.baseline_quality = quality
        await self.store.set_event_state(ev.event_id, "active")
        await self._publish_state(rec)
        log.info(
            "event_id=%s event=active baseline_kw=%.1f quality=%r committed_kw=%.1f strategy=%s steps=%d",
            ev.event_id,
            baseline,
            quality,
            committed,
            strategy.name,
            len(rec.control.steps),
        )

    async def _settle(self, rec: EventRecord, end: float | None = None) -> None:
        if rec.settled:
            return
        ev = rec.event
        await self._flush()
        stop = min(end or ev.end_ts, ev.end_ts)
        samples = await self.store.readings(self.meter.name, ev.start_ts, stop)
        c = rec.control
        baseline = c.baseline_kw if c is not None else float("nan")
        if c is None:
            # Resumed after a restart: baseline from stored readings before the start.
            pre = await self.store.readings(self.meter.name, ev.start_ts - BASELINE_WINDOW_S, ev.start_ts)
            baseline = sum(kw for _t, kw in pre) / len(pre) if pre else float("nan")
        body = settle(
            event_id=ev.event_id,
            samples=samples,
            start=ev.start_ts,
            end=stop,
            baseline_kw=baseline,
            baseline_method="realtime_15min",
            peak_kw=self.cfg.contract.peak_kw,
            band_pct=self.cfg.contract.band_pct,
            committed_kw=rec.opt.committed_kw,
            incentive_cny_per_kw=self.cfg.contract.incentive_cny_per_kw,
            extra={
                "site_id": self.cfg.site.id,
                "program": ev.program,
                "test_event": ev.test_event,
                "state": rec.state,
                "actuations": c.actuations if c else 0,
                "steps_skipped": c.skipped if c else {},
            },
        )
        rec.settled = True
        if rec.state == "completed_unsettled":
            rec.state = "completed"
            await self.store.set_event_state(ev.event_id, "completed")
        await self.store.save_settlement(ev.event_id, body)
        await self._send(self.topics.settlement(ev.event_id), body, retain=True)
        log.info(
            "event_id=%s event=settled verified_kw=%.1f pct_of_peak=%.2f in_band_fraction=%.3f",
            ev.event_id,
            body["verified_reduction_kw"],
            body["verified_reduction_pct_of_peak"],
            body["in_band_fraction"],
        )

    # -- live reports -------------------------------------------------------------------

    def running(self) -> EventRecord | None:
        for rec in self.events.values():
            if rec.control is not None and rec.control.phase in ("shedding", "restoring"):
                return rec
        return None

    def live_state(self) -> dict[str, Any]:
        load = self.site_load_kw()
        out: dict[str, Any] = {
            "ts": self.clock.now(),
            "measured_kw": None if load is None else round(load, 3),
        }
        rec = self.running()
        if rec is None or rec.control is None:
            return out
        c = rec.control
        realized = None if load is None else c.baseline_kw - load
        lo, hi = c.band
        out.update(
            {
                "event_id": rec.event.event_id,
                "state": rec.state,
                "phase": c.phase,
                "baseline_kw": round(c.baseline_kw, 3),
                "realized_kw": None if realized is None else round(realized, 3),
                "realized_pct_of_peak": None
                if realized is None
                else round(realized / self.cfg.contract.peak_kw * 100, 3),
                "committed_kw": round(c.committed_kw, 3),
                "band_kw": [round(lo, 3), round(hi, 3)],
                "band_pct": list(self.cfg.contract.band_pct),
                "in_band": None if realized is None else lo <= realized <= hi,
                "active_steps": [a.step.id for a in c.active],
                "degraded": load is None,
                "last_decision": c.last_decision,
            }
        )
        return out

    async def _report_loop(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.control.report_interval_s)
            state = self.live_state()
            if "event_id" not in state:
                continue
            self.report_seq += 1
            state["seq"] = self.report_seq
            await self._send(self.topics.report, state)
            await self.store.meta_set("report_seq", str(self.report_seq))
