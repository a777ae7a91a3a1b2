"""The event lifecycle: intake, opt in/out, far → near → active → completed/cancelled, settlement.

`EventLifecycle` owns the events the agent knows and every state change of
them: it decides on each incoming event (the contract), publishes each state
(retained per event) and persists it, starts control at the (randomized)
start, runs the staggered restore after the end and settles. The control
decisions themselves stay in `Controller`; the daemon calls `tick()` once a
control cycle and then cycles the shedding events.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.contract import Decision as OptDecision
from agent.contract import decide as decide_opt
from agent.control import EventControl
from agent.events import DrEvent, EventError, response
from agent.settlement import settle
from strategies.engine import build_steps

if TYPE_CHECKING:
    from agent.daemon import Agent

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


class EventLifecycle:
    """Every event the agent knows, and each state change of them (published and persisted)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.events: dict[str, EventRecord] = {}
        self._rng = random.Random()

    # -- intake ------------------------------------------------------------------

    async def handle_event(self, ev: DrEvent) -> None:
        a = self.agent
        now = a.clock.now()
        known = self.events.get(ev.event_id)
        if known is not None:
            if ev.modification_number < known.event.modification_number:
                log.info("event_id=%s event=stale_modification n=%d", ev.event_id, ev.modification_number)
                await a._send(
                    a.topics.error,
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
                await a._send(a.topics.response, self.response(known))
                return
            if ev.status == "cancelled":
                await self.cancel(known, ev, now)
                return
        elif ev.status == "cancelled":
            await a._send(
                a.topics.error,
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
        opt = decide_opt(ev, a.cfg.contract, a.tz, accepted, now, a.filter.value)
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
        await a.store.save_event(
            ev.event_id,
            ev.modification_number,
            ev.model_dump(mode="json"),
            rec.state,
            opt.opt,
            opt.code,
            opt.reason,
            rec.effective_start,
        )
        await a._send(a.topics.response, self.response(rec))
        await self.publish_state(rec)
        a.wake.set()

    def response(self, rec: EventRecord) -> dict[str, Any]:
        extra: dict[str, Any] = {"status": "ok"}
        if rec.opt.committed_kw is not None:
            extra["committed_kw"] = round(rec.opt.committed_kw, 3)
        if rec.opt.partial:
            extra["partial"] = True
        if rec.effective_start != rec.event.start_ts:
            extra["effective_start"] = datetime.fromtimestamp(rec.effective_start, self.agent.tz).isoformat()
        return response(rec.event, rec.opt.opt, rec.opt.code, rec.opt.reason, **extra)

    async def cancel(self, rec: EventRecord, ev: DrEvent, now: float) -> None:
        a = self.agent
        rec.event = ev
        if rec.control is not None:
            await a.controller.release_all(rec.control, now, "event cancelled")
            rec.control.phase = "done"
        was_running = rec.state == "active"
        rec.state = "cancelled"
        await a.store.save_event(
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
        await a._send(
            a.topics.response,
            response(ev, rec.opt.opt, "cancelled", "cancelled by the provider", status="ok"),
        )
        await self.publish_state(rec)
        if was_running and rec.control is not None:
            await self.settle(rec, end=now)

    async def publish_state(self, rec: EventRecord) -> None:
        a = self.agent
        ev = rec.event
        await a._send(
            a.topics.event_state(ev.event_id),
            {
                "event_id": ev.event_id,
                "modification_number": ev.modification_number,
                "state": rec.state,
                "opt": rec.opt.opt,
                "program": ev.program,
                "start": ev.start.isoformat(),
                "effective_start": datetime.fromtimestamp(rec.effective_start, a.tz).isoformat(),
                "end": datetime.fromtimestamp(ev.end_ts, a.tz).isoformat(),
                "ts": a.clock.now(),
            },
            retain=True,
        )

    async def on_connected(self) -> None:
        """Re-publish current state on every (re)connect: late subscribers and a restarted broker."""
        for rec in self.events.values():
            if rec.state not in FINAL_STATES:
                await self.publish_state(rec)

    # -- the lifecycle, once a control cycle ----------------------------------------

    async def tick(self, now: float) -> None:
        """Advance every opted-in event: far → near → active; after the end, restore and settle."""
        a = self.agent
        load = a.site_load_kw()
        for rec in list(self.events.values()):
            if rec.opt.opt != "in" or rec.state in FINAL_STATES:
                continue
            ev = rec.event
            if rec.state == "completed_unsettled":
                await self.settle(rec)
                continue
            if now >= ev.end_ts:
                if rec.control is None:
                    rec.state = "completed"
                    await a.store.set_event_state(ev.event_id, "completed")
                    await self.publish_state(rec)
                    continue
                c = rec.control
                if c.phase == "shedding":
                    c.phase = "restoring"
                    log.info("event_id=%s event=ended restoring=%d", ev.event_id, len(c.active))
                if c.phase == "restoring":
                    done = await a.controller.restore_next(
                        c, now, load, ev.end_ts + c.restore_policy.rebound_window_s
                    )
                    if done:
                        c.phase = "done"
                        rec.state = "completed"
                        await a.store.set_event_state(ev.event_id, "completed")
                        await self.publish_state(rec)
                        await self.settle(rec)
                continue
            if now >= rec.control_start:
                if rec.control is None:
                    await self.begin(rec, now)
            elif now >= ev.start_ts - NEAR_WINDOW_S and rec.state == "far":
                rec.state = "near"
                await a.store.set_event_state(ev.event_id, "near")
                await self.publish_state(rec)

    def shedding(self) -> list[EventRecord]:
        """Events whose control is shedding now (the controller cycles these)."""
        return [
            r
            for r in self.events.values()
            if r.control is not None and r.control.phase == "shedding" and r.state == "active"
        ]

    def running(self) -> EventRecord | None:
        for rec in self.events.values():
            if rec.control is not None and rec.control.phase in ("shedding", "restoring"):
                return rec
        return None

    def baseline(self, control_start: float) -> tuple[float, str]:
        recent = self.agent.recent
        window = [kw for ts, kw in recent if control_start - BASELINE_WINDOW_S <= ts < control_start]
        if window:
            covered = recent[-1][0] - recent[0][0] if len(recent) > 1 else 0.0
            quality = "ok" if covered >= BASELINE_WINDOW_S * 0.9 else f"partial: {covered:.0f} s of history"
            return sum(window) / len(window), quality
        if self.agent.filter.value is not None:
            return self.agent.filter.value, "no history: current load"
        return float("nan"), "no meter data"

    async def begin(self, rec: EventRecord, now: float) -> None:
        a = self.agent
        ev = rec.event
        baseline, quality = self.baseline(rec.control_start)
        contract = a.cfg.contract
        committed = rec.opt.committed_kw or 0.0
        if ev.target.cap_kw is not None:
            committed = min(max(baseline - ev.target.cap_kw, contract.band_kw()[0]), contract.band_kw()[1])
        strategy = a.cfg.strategy_for(ev.program)
        rec.control = EventControl(
            event_id=ev.event_id,
            program=ev.program,
            baseline_kw=baseline,
            committed_kw=committed,
            band=contract.band_kw(),
            steps=build_steps(strategy, a.devices),
            restore_policy=strategy.restore,
            control_start=now,
            end=ev.end_ts,
            test_event=ev.test_event,
            phase="shedding",
        )
        rec.state = "active"
        rec.control.baseline_quality = quality
        await a.store.set_event_state(ev.event_id, "active")
        await self.publish_state(rec)
        log.info(
            "event_id=%s event=active baseline_kw=%.1f quality=%r committed_kw=%.1f strategy=%s steps=%d",
            ev.event_id,
            baseline,
            quality,
            committed,
            strategy.name,
            len(rec.control.steps),
        )

    async def settle(self, rec: EventRecord, end: float | None = None) -> None:
        if rec.settled:
            return
        a = self.agent
        ev = rec.event
        await a._flush()
        stop = min(end or ev.end_ts, ev.end_ts)
        samples = await a.store.readings(a.meter.name, ev.start_ts, stop)
        c = rec.control
        baseline = c.baseline_kw if c is not None else float("nan")
        if c is None:
            # Resumed after a restart: baseline from stored readings before the start.
            pre = await a.store.readings(a.meter.name, ev.start_ts - BASELINE_WINDOW_S, ev.start_ts)
            baseline = sum(kw for _t, kw in pre) / len(pre) if pre else float("nan")
        contract = a.cfg.contract
        body = settle(
            event_id=ev.event_id,
            samples=samples,
            start=ev.start_ts,
            end=stop,
            baseline_kw=baseline,
            baseline_method="realtime_15min",
            peak_kw=contract.peak_kw,
            band_pct=contract.band_pct,
            committed_kw=rec.opt.committed_kw,
            incentive_cny_per_kw=contract.incentive_cny_per_kw,
            extra={
                "site_id": a.cfg.site.id,
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
            await a.store.set_event_state(ev.event_id, "completed")
        await a.store.save_settlement(ev.event_id, body)
        await a._send(a.topics.settlement(ev.event_id), body, retain=True)
        log.info(
            "event_id=%s event=settled verified_kw=%.1f pct_of_peak=%.2f in_band_fraction=%.3f",
            ev.event_id,
            body["verified_reduction_kw"],
            body["verified_reduction_pct_of_peak"],
            body["in_band_fraction"],
        )

    # -- restart -------------------------------------------------------------------

    async def load(self) -> None:
        """Reload the stored events after a restart."""
        a = self.agent
        for row in await a.store.events():
            try:
                ev = DrEvent.model_validate(row["payload"])
            except Exception:
                continue
            opt = OptDecision(row["opt"] or "out", row["code"] or "", row["reason"] or "")
            rec = EventRecord(ev, opt, row["state"], row["effective_start"] or ev.start_ts)
            rec.settled = await a.store.settlement(ev.event_id) is not None
            self.events[ev.event_id] = rec

    def after_restore(self, now: float) -> None:
        """Events that were active and have ended while the agent was down still need a settlement."""
        for rec in self.events.values():
            if rec.state == "active" and rec.event.end_ts <= now:
                rec.state = "completed_unsettled"
