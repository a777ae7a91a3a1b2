"""The event lifecycle: intake, opt in/out, far → near → active → completed/cancelled, settlement.

`EventLifecycle` owns the events the agent knows and every state change of
them: it checks each incoming message (size, signature, freshness), decides
on each event under the contract, publishes each state (retained per event)
and persists it, starts control at the (randomized) start, follows the
signal intervals, runs the staggered restore after the absolute end and
settles. Price signals become events on the `price` programme. After a
restart it resumes an event still running (the revert journal says what is
shed) or restores and settles one that ended meanwhile. The control
decisions themselves stay in `Controller`; the daemon calls `tick()` once a
control cycle and then cycles the shedding events.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from agent.config.model import SiteConfig
from agent.control.controller import ActiveStep, EventControl, aim_kw
from agent.events.contract import Decision as OptDecision
from agent.events.contract import commit_kw
from agent.events.contract import decide as decide_opt
from agent.events.model import (
    FINAL_STATES,
    MAX_AHEAD_S,
    DrEvent,
    ErrorReply,
    EventError,
    EventResponse,
    EventState,
    Interval,
    LiveState,
    PriceReading,
    PriceSignal,
    State,
    Target,
    load_json,
    parse_event,
    parse_price,
)
from agent.events.ports import OPENADR_PREFIX, LifecyclePorts
from agent.events.precool import end_precool, precool
from agent.events.signing import Verifier
from agent.platform.clock import Clock
from agent.settlement.baseline import Period, realtime_baseline
from agent.settlement.books import EventRun, published
from agent.settlement.history import control_period, control_periods
from agent.settlement.ledger import Ledger, LedgerEntry
from drivers.device import Device
from strategies.engine import StepPlan, plan_steps

log = logging.getLogger("dr_agent")

#: Final states re-published on reconnect for this long after the event's end (the broker may have lost them).
REPUBLISH_FINAL_S = 86400.0
#: How long a new event's persistence and answer wait for its first writes (a busy or stuck cycle
#: must not hold the answer back): far above the few ms a cycle takes.
FIRST_WRITES_WAIT_S = 0.25


def answer(event: DrEvent, opt: Literal["in", "out"], code: str, reason: str, **extra: Any) -> EventResponse:
    """The answer to an event, checked by `EventResponse` (an unknown field is an error)."""
    return EventResponse(
        status="ok",
        event_id=event.event_id,
        modification_number=event.modification_number,
        opt=opt,
        code=code,
        reason=reason,
        **extra,
    )


@dataclass
class EventRecord:
    event: DrEvent
    opt: OptDecision
    state: State
    effective_start: float
    control: EventControl | None = None
    settled: bool = False
    #: When it stopped early (cancelled or superseded while running), else None.
    ended_ts: float | None = None
    #: The signal interval in force while active.
    interval: int | None = None
    #: Kept across a restart: baseline, commitment and control start of a running event.
    runtime: dict[str, Any] | None = None
    #: When the event first arrived (agent clock): its notice time sets some incentive rates.
    received_ts: float | None = None
    #: Completed (devices back) while the agent was down or in its recovery window: settle next tick.
    settle_pending: bool = False
    #: Pre-cooling wrote (or tried to) in this run: its setpoints go back when control starts. A
    #: restart restores every pre-cool left open, so a record loaded from the store has none.
    precooled: bool = False

    @property
    def control_start(self) -> float:
        return self.effective_start - self.event.ramp_up_s

    @property
    def jitter(self) -> float:
        return self.effective_start - self.event.start_ts


def _closed(r: EventRecord) -> bool:
    """Final, its control over and nothing left to settle: nothing of it changes any more."""
    return (
        r.state in FINAL_STATES and not r.settle_pending and (r.control is None or r.control.phase == "done")
    )


def _ledger_entry(r: EventRecord) -> LedgerEntry | None:
    """How the ledger counts `r`, or None if it does not (opted out, or cancelled before it ran)."""
    ran = r.ended_ts is not None or r.control is not None or (r.runtime or {}).get("baseline_kw") is not None
    if r.opt.opt != "in" and not ran:
        return None
    if r.state == State.CANCELLED and not ran:
        return None
    if r.state in (State.FAR, State.NEAR):
        state = "planned"
    elif r.state in (State.CANCELLED, State.SUPERSEDED, State.OPTED_OUT):
        state = "cancelled"
    else:
        state = str(r.state)
    end = r.ended_ts if r.ended_ts is not None else r.event.end_ts
    return LedgerEntry(r.event.event_id, r.event.program, r.event.start_ts, end, state, r.event.test_event)


class EventLifecycle:
    """Every event the agent knows, and each state change of them (published and persisted)."""

    def __init__(
        self,
        config: Callable[[], SiteConfig],
        clock: Clock,
        devices: Mapping[str, Device],
        ports: LifecyclePorts,
        inputs: tuple[str, str] = ("", ""),
    ) -> None:
        """`config` gives the configuration in force (a reload replaces it); `devices` is the
        live device map; `inputs` the event and price topics `on_message` takes."""
        self.config = config
        self.clock = clock
        self.devices = devices
        self.link = ports.link
        self.actuation = ports.actuation
        self.store = ports.store
        self.readings = ports.readings
        self.books = ports.books
        self.wake = ports.wake
        self.event_topic, self.price_topic = inputs
        self.events: dict[str, EventRecord] = {}
        #: Events begun in this control cycle, persisted and published by `after_cycle`.
        self._begun: list[EventRecord] = []
        #: Set when a control loop runs (the daemon): a new event's persistence and answer wait
        #: for the cycle that begins it to send its first writes (`_first_writes_out`).
        self.defer_bookkeeping = False
        self._writes_out: dict[str, asyncio.Event] = {}
        #: Begun events whose arrival was waiting for their first writes: `handle_event` persists and
        #: publishes them, as begun, so `after_cycle` does not do it twice.
        self._answered_after_begin: set[str] = set()
        #: program -> (the config it was made from, its strategy's step plan): made again after a reload.
        self._plans: dict[str, tuple[SiteConfig, StepPlan]] = {}
        #: event id -> (what they were worked out from, its ledger entry, its control period) of a
        #: closed event (`_closed`): worked out once, not on every event that arrives.
        self._closed_facts: dict[str, tuple[tuple[Any, ...], LedgerEntry | None, Period | None]] = {}
        #: Stored events `load` could not read (a newer or broken payload), for `_control_periods`.
        self._unreadable_rows: list[dict[str, Any]] = []
        self._rng = random.Random()
        self.verifier: Verifier | None = None
        self.participation_warning: str | None = None
        sec = self.cfg.mqtt.security
        if sec is not None:
            self.verifier = Verifier(sec, self._nonce_seen)

    @property
    def cfg(self) -> SiteConfig:
        return self.config()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.cfg.site.timezone)  # cached by zoneinfo: one instance per key

    async def _nonce_seen(self, nonce: str, ts: float, now: float, window: float) -> bool:
        return bool(await self.store.nonce_seen(nonce, ts, now, window))

    async def refuse(self, err: EventError) -> None:
        """A refusal to the provider's error topic."""
        await self.link.send_error(ErrorReply(**err.payload()))

    # -- messages in ---------------------------------------------------------------

    async def on_message(self, topic: str, raw: bytes, retained: bool = False) -> None:
        """One message on {root}/in/event or {root}/in/price: check, then handle; refusals to out/error."""
        if topic not in (self.event_topic, self.price_topic):
            return
        now = self.clock.now()
        try:
            data = load_json(raw, self.cfg.mqtt.max_payload_bytes)
            if self.verifier is not None:
                try:
                    inner = await self.verifier.open(topic, data, now)
                except EventError as err:
                    # A retained message comes back on every reconnect: not a replay if we hold it already.
                    if retained and err.code in ("replay", "stale_message") and err.event_id in self.events:
                        log.debug("event_id=%s event=retained_redelivery ignored", err.event_id)
                        return
                    raise
                if inner is not None:
                    data = inner
            if topic == self.price_topic:
                await self.handle_price(parse_price(data))
                return
            ev = parse_event(data)
            if ev.event_id.startswith(OPENADR_PREFIX):
                # Keyed by source: an MQTT event must never take (or cancel) an OpenADR event's id.
                raise EventError(
                    "invalid_field",
                    f"event_id: the prefix {OPENADR_PREFIX!r} is reserved for events from the OpenADR VTN",
                    ev.event_id,
                    "event_id",
                )
            self._check_times(ev, now)
        except EventError as err:
            log.warning(
                "event=message_refused topic=%s code=%s event_id=%s error=%r",
                topic.rsplit("/", 1)[-1],
                err.code,
                err.event_id,
                err.message,
            )
            await self.refuse(err)
            return
        await self.handle_event(ev)

    def _check_times(self, ev: DrEvent, now: float) -> None:
        if ev.end_ts <= now:
            ended = datetime.fromtimestamp(ev.end_ts, self.tz)
            raise EventError(
                "stale_event", f"the event ended at {ended.isoformat()}; refused", ev.event_id, "start"
            )
        if ev.start_ts - now > MAX_AHEAD_S:
            raise EventError(
                "start_too_far",
                f"start is {(ev.start_ts - now) / 86400:.0f} days ahead; at most {MAX_AHEAD_S / 86400:.0f}",
                ev.event_id,
                "start",
            )

    # -- intake ------------------------------------------------------------------

    def ledger(self) -> Ledger:
        """What the opted-in events used: planned ones, running ones, and those that ran (even cut short)."""
        entries = []
        cfg = self.cfg
        for r in self.events.values():
            e = self._facts(r, cfg)[0] if _closed(r) else _ledger_entry(r)
            if e is not None:
                entries.append(e)
        return Ledger(cfg.contract, self.tz, entries)

    def _facts(self, r: EventRecord, cfg: SiteConfig) -> tuple[LedgerEntry | None, Period | None]:
        """A closed event's ledger entry and control period, worked out once: again only if what
        they come from was replaced (the record, its event, decision or stored runtime, the config:
        the period's recovery window may be its strategy's)."""
        got = self._closed_facts.get(r.event.event_id)
        if got is not None:
            k = got[0]
            if (
                k[0] is r
                and k[1] is r.event
                and k[2] is r.opt
                and k[3] is r.runtime
                and k[4] is r.state
                and k[5] is r.ended_ts
                and k[6] is cfg
            ):
                return got[1], got[2]
        source = (r, r.event, r.opt, r.runtime, r.state, r.ended_ts, cfg)
        got = (source, _ledger_entry(r), self._control_period(r))
        self._closed_facts[r.event.event_id] = got
        return got[1], got[2]

    async def handle_event(self, ev: DrEvent) -> None:
        now = self.clock.now()
        known = self.events.get(ev.event_id)
        if known is not None:
            if ev.modification_number < known.event.modification_number:
                log.info("event_id=%s event=stale_modification n=%d", ev.event_id, ev.modification_number)
                await self.refuse(
                    EventError(
                        "stale_modification",
                        f"modification_number {ev.modification_number} is below the current "
                        f"{known.event.modification_number}; ignored",
                        ev.event_id,
                        "modification_number",
                    )
                )
                return
            if ev.modification_number == known.event.modification_number:
                # Same number: an idempotent re-acknowledgement.
                await self.link.send_response(self.response(known))
                return
            if known.state in (State.COMPLETED, State.CANCELLED, State.SUPERSEDED):
                await self.refuse(
                    EventError(
                        "event_final",
                        f"the event is already {known.state}; modification {ev.modification_number} ignored",
                        ev.event_id,
                        "modification_number",
                    )
                )
                return
            if ev.status == "cancelled":
                await self.cancel(known, ev, now)
                return
        elif ev.status == "cancelled":
            await self.refuse(
                EventError(
                    "unknown_event",
                    "cancellation of an event this agent never received",
                    ev.event_id,
                    "event_id",
                )
            )
            return
        if known is None and self._read_ahead(ev, ev.start_ts - ev.ramp_up_s, now):
            # A new event's first stage is read while it is decided (the read is wasted if
            # refused). Tasks start at the next await: let the requests go out now.
            await asyncio.sleep(0)
        accepted = [
            r.event
            for r in self.events.values()
            if r.opt.opt == "in" and r.state not in FINAL_STATES and r.event.event_id != ev.event_id
        ]
        baseline = known.control.baseline_kw if known and known.control else self.readings.filtered_kw()
        opt = decide_opt(ev, self.cfg.contract, self.tz, accepted, now, baseline, self.ledger())
        if known is not None:
            rec = known
            was_running = rec.control is not None and rec.control.phase in ("shedding", "restoring")
            rec.event, rec.opt = ev, opt
            if not was_running:
                rec.effective_start = ev.start_ts + min(rec.jitter, ev.start_after_s)
            if opt.opt == "out":
                if was_running:
                    await self._stop_early(rec, now, "opted out after a modification")
                rec.state = State.OPTED_OUT
            else:
                if was_running and rec.control is not None:
                    rec.control.end = ev.end_ts
                    # A new target at once: the state, the response and the next live report carry it,
                    # and the controller acts on it this cycle.
                    self._retarget(rec, now)
                elif rec.state == State.OPTED_OUT:
                    rec.state = State.FAR
            log.info(
                "event_id=%s event=modified n=%d opt=%s code=%s",
                ev.event_id,
                ev.modification_number,
                opt.opt,
                opt.code,
            )
        else:
            jitter = self._rng.uniform(0, ev.start_after_s) if ev.start_after_s else 0.0
            rec = EventRecord(
                ev, opt, State.FAR if opt.opt == "in" else State.OPTED_OUT, ev.start_ts + jitter
            )
            rec.received_ts = now
            self.events[ev.event_id] = rec
            log.info(
                "event_id=%s event=received opt=%s code=%s reason=%r",
                ev.event_id,
                opt.opt,
                opt.code,
                opt.reason,
            )
        # The control cycle starts on the event now: nothing that can wait stands between the
        # message and the first stage's writes (the journal still records each original before
        # its write). The decision is persisted and answered meanwhile, or, when a control loop
        # runs, once those writes are out (`after_cycle`), at most FIRST_WRITES_WAIT_S later.
        if known is not None and opt.opt == "in" and rec.control is None:
            self._read_ahead(ev, rec.control_start, now)
        self.wake()
        new_now = known is None and not opt.supersedes and opt.opt == "in" and rec.control_start <= now
        if self.defer_bookkeeping and new_now:
            await self._first_writes_out(rec)
        await self._persist(rec)
        for other_id in opt.supersedes:
            other = self.events.get(other_id)
            if other is not None and other.state not in FINAL_STATES:
                await self._supersede(other, rec, now)
        extra: dict[str, Any] = {}
        if opt.opt == "in":
            warning = self.ledger().participation(now).warning
            if warning:
                extra["participation_warning"] = warning
        await self.link.send_response(self.response(rec, **extra))
        await self.publish_state(rec)

    def _read_ahead(self, ev: DrEvent, control_start: float, now: float) -> int:
        """An event whose control starts now: its first stage's current values are read while
        it is decided, persisted and answered, so the first writes need not wait for them.
        Returns how many reads started."""
        if ev.test_event or control_start > now + self.cfg.control.period_s:
            return 0
        try:
            plan = self._plan(ev.program)
        except KeyError:
            return 0  # begin says what is wrong with the strategy
        return self.actuation.read_ahead(plan.first_stage)

    def _plan(self, program: str) -> StepPlan:
        """The step plan of `program`'s strategy, made once per config (a reload gives a new one)."""
        cfg = self.cfg
        cached = self._plans.get(program)
        if cached is None or cached[0] is not cfg:
            cached = self._plans[program] = (cfg, plan_steps(cfg.strategy_for(program), self.devices))
        return cached[1]

    def response(self, rec: EventRecord, **more: Any) -> EventResponse:
        extra: dict[str, Any] = {}
        if rec.opt.committed_kw is not None:
            extra["committed_kw"] = round(rec.opt.committed_kw, 3)
        if rec.opt.partial:
            extra["partial"] = True
        if rec.opt.intervals_kw is not None:
            extra["intervals_committed_kw"] = [round(k, 3) for k in rec.opt.intervals_kw]
        if rec.effective_start != rec.event.start_ts:
            extra["effective_start"] = datetime.fromtimestamp(rec.effective_start, self.tz).isoformat()
        if rec.opt.supersedes:
            extra["supersedes"] = list(rec.opt.supersedes)
        extra.update(more)
        return answer(rec.event, rec.opt.opt, rec.opt.code, rec.opt.reason, **extra)

    async def _stop_early(self, rec: EventRecord, now: float, why: str) -> None:
        """Release everything now and settle what ran (cancel, supersede, opt-out on modification)."""
        c = rec.control
        if c is None:
            await end_precool(self.actuation, rec.event.event_id, why)
            return
        was_shedding = c.phase in ("shedding", "restoring")
        await self.actuation.release_all(c, now, why)
        c.phase = "done"
        if was_shedding:
            rec.ended_ts = min(now, rec.event.end_ts)
            await self.settle(rec, end=now)

    async def _supersede(self, rec: EventRecord, by: EventRecord, now: float) -> None:
        reason = (
            f"superseded: {by.event.event_id} (priority {by.event.priority}) overlaps and has higher priority "
            f"than this one ({rec.event.priority})"
        )
        rec.opt = OptDecision("out", "superseded", reason)
        rec.state = State.SUPERSEDED
        await self._stop_early(rec, now, "superseded by a higher-priority event")
        await self._persist(rec)
        log.info("event_id=%s event=superseded by=%s", rec.event.event_id, by.event.event_id)
        await self.link.send_response(self.response(rec, superseded_by=by.event.event_id))
        await self.publish_state(rec)

    async def cancel(self, rec: EventRecord, ev: DrEvent, now: float) -> None:
        rec.event = ev
        was_running = rec.control is not None and rec.control.phase in ("shedding", "restoring")
        rec.state = State.CANCELLED
        if rec.opt.opt == "in":
            rec.opt = OptDecision(
                "in", "cancelled", "cancelled by the provider", rec.opt.committed_kw, rec.opt.partial
            )
        await self._stop_early(rec, now, "event cancelled")
        await self._persist(rec)
        log.info("event_id=%s event=cancelled was_running=%s", ev.event_id, was_running)
        await self.link.send_response(answer(ev, rec.opt.opt, "cancelled", "cancelled by the provider"))
        await self.publish_state(rec)

    async def _persist(self, rec: EventRecord) -> None:
        """Store the event, its decision and what a restart needs.

        The record is taken as it is now, before anything waits, and both rows are handed to the
        store's one thread together: a control cycle running meanwhile (it starts on the event
        while it is persisted) can persist it again, and the later call is always the newer state.
        """
        ev = rec.event
        row = (
            ev.event_id,
            ev.modification_number,
            ev.model_dump(mode="json"),
            rec.state,
            rec.opt.opt,
            rec.opt.code,
            rec.opt.reason,
            rec.effective_start,
        )
        runtime = dict(rec.runtime or {})
        runtime.update(
            {
                "committed_kw": rec.opt.committed_kw,
                "partial": rec.opt.partial,
                "intervals_kw": None if rec.opt.intervals_kw is None else list(rec.opt.intervals_kw),
                "supersedes": list(rec.opt.supersedes),
                "ended_ts": rec.ended_ts,
            }
        )
        c = rec.control
        if c is not None:
            runtime.update(
                {
                    "baseline_kw": c.baseline_kw,
                    "baseline_quality": c.baseline_quality,
                    "control_committed_kw": c.committed_kw,
                    "control_start": c.control_start,
                }
            )
        rec.runtime = runtime
        await asyncio.gather(self.store.save_event(*row), self.store.set_event_runtime(ev.event_id, runtime))

    async def _set_state(self, rec: EventRecord, state: State) -> None:
        rec.state = state
        await self.store.set_event_state(rec.event.event_id, state.value)
        await self.publish_state(rec)

    def state(self, rec: EventRecord) -> EventState:
        """The retained state of `rec`: the commitment in force now (after a modification or interval)."""
        ev = rec.event
        committed = rec.control.committed_kw if rec.control is not None else rec.opt.committed_kw
        return EventState(
            event_id=ev.event_id,
            modification_number=ev.modification_number,
            state=rec.state,
            opt=rec.opt.opt,
            code=rec.opt.code,
            reason=rec.opt.reason,
            program=ev.program,
            priority=ev.priority,
            start=ev.start.isoformat(),
            effective_start=datetime.fromtimestamp(rec.effective_start, self.tz).isoformat(),
            end=datetime.fromtimestamp(ev.end_ts, self.tz).isoformat(),
            interval=rec.interval,
            committed_kw=None if committed is None else round(committed, 3),
            ts=self.clock.now(),
        )

    async def publish_state(self, rec: EventRecord) -> None:
        await self.link.send_state(self.state(rec))

    def live_report(self, load_kw: float | None, now: float) -> LiveState | None:
        """The live report of the running event (without its sequence number), or None."""
        rec = self.running()
        if rec is None or rec.control is None:
            return None
        c = rec.control
        realized = None if load_kw is None else c.baseline_kw - load_kw
        lo, hi = c.band
        peak = c.peak_kw or self.cfg.contract.peak_kw  # the event's own contract, even after a reload
        db = self.actuation.deadband_kw(peak)
        aim = aim_kw(c.committed_kw, c.band, db)
        return LiveState(
            ts=now,
            event_id=rec.event.event_id,
            state=rec.state,
            phase=c.phase,
            measured_kw=None if load_kw is None else round(load_kw, 3),
            baseline_kw=round(c.baseline_kw, 3),
            realized_kw=None if realized is None else round(realized, 3),
            realized_pct_of_peak=None if realized is None else round(realized / peak * 100, 3),
            committed_kw=round(c.committed_kw, 3),
            band_kw=[round(lo, 3), round(hi, 3)],
            band_pct=[round(lo / peak * 100, 3), round(hi / peak * 100, 3)],
            target_kw=[round(aim - db, 3), round(aim + db, 3)],
            in_band=None if realized is None else lo <= realized <= hi,
            active_steps=[x.step.id for x in c.active],
            degraded=load_kw is None,
            last_decision=c.last_decision,
        )

    async def on_connected(self) -> None:
        """Re-publish every current state on each (re)connect: late subscribers, a broker that lost them."""
        now = self.clock.now()
        for rec in self.events.values():
            if rec.state not in FINAL_STATES or rec.event.end_ts > now - REPUBLISH_FINAL_S:
                await self.publish_state(rec)

    # -- price-based DR -----------------------------------------------------------------

    def price_events(self, price: PriceSignal) -> list[DrEvent]:
        """The events a price schedule asks for: runs of intervals at or above a threshold, within allowed hours."""
        pr = self.cfg.contract.price
        if pr is None:
            return []
        levels = sorted(pr.thresholds, key=lambda t: t.at_least)
        allowed = self.cfg.contract.allowed_hours
        # (start, end, threshold) pieces, clipped to the allowed hours of their day.
        pieces: list[tuple[float, float, int]] = []
        for iv in price.intervals:
            level = max((n for n, t in enumerate(levels) if iv.price >= t.at_least), default=None)
            if level is None:
                continue
            s, e = iv.start_ts, iv.end_ts
            if allowed:
                day = datetime.fromtimestamp(s, self.tz).date()
                lo = datetime.combine(day, datetime.strptime(allowed[0], "%H:%M").time(), self.tz).timestamp()
                hi = (
                    datetime.combine(day, datetime.min.time(), self.tz).timestamp() + 86400
                    if allowed[1] == "24:00"
                    else datetime.combine(
                        day, datetime.strptime(allowed[1], "%H:%M").time(), self.tz
                    ).timestamp()
                )
                s, e = max(s, lo), min(e, hi)
            if e > s:
                pieces.append((s, e, level))
        runs: list[list[tuple[float, float, int]]] = []
        for p in pieces:
            if runs and abs(runs[-1][-1][1] - p[0]) < 1e-6:
                runs[-1].append(p)
            else:
                runs.append([p])
        out = []
        for n, run in enumerate(r for r in runs if r[-1][1] - r[0][0] >= pr.min_event_s):
            merged: list[list[float]] = []
            for s, e, level in run:
                if merged and merged[-1][2] == level:
                    merged[-1][1] = e
                else:
                    merged.append([s, e, level])
            intervals = [
                Interval(duration_s=e - s, target=self._price_target(levels[int(level)]))
                for s, e, level in merged
            ]
            out.append(
                DrEvent(
                    event_id=f"price-{price.price_id}-{n}",
                    modification_number=price.revision,
                    program="price",
                    start=datetime.fromtimestamp(run[0][0], self.tz),
                    duration_s=run[-1][1] - run[0][0],
                    target=intervals[0].target,
                    intervals=intervals if len(intervals) > 1 else None,
                )
            )
        return out

    @staticmethod
    def _price_target(t: Any) -> Target:
        if t.reduce_kw is not None:
            return Target(reduce_kw=t.reduce_kw)
        return Target(reduce_pct_of_peak=t.reduce_pct_of_peak)

    async def handle_price(self, price: PriceSignal) -> None:
        """Map a price schedule to events on the `price` programme; a new revision replaces the old one's."""
        now = self.clock.now()
        wanted = [e for e in self.price_events(price) if e.end_ts > now]
        wanted_ids = {e.event_id for e in wanted}
        prefix = f"price-{price.price_id}-"
        for rec in list(self.events.values()):
            eid = rec.event.event_id
            if eid.startswith(prefix) and eid not in wanted_ids and rec.state not in FINAL_STATES:
                if price.revision > rec.event.modification_number:
                    cancel = rec.event.model_copy(
                        update={"modification_number": price.revision, "status": "cancelled"}
                    )
                    await self.cancel(rec, cancel, now)
        log.info(
            "event=price_signal price_id=%s revision=%d kind=%s intervals=%d events=%d",
            price.price_id,
            price.revision,
            price.kind,
            len(price.intervals),
            len(wanted),
        )
        reading = PriceReading(
            price_id=price.price_id,
            revision=price.revision,
            kind=price.kind,
            max_price=max(i.price for i in price.intervals),
            events=sorted(wanted_ids),
            ts=now,
        )
        await self.link.send_price(reading)
        for ev in wanted:
            await self.handle_event(ev)

    # -- the lifecycle, once a control cycle ----------------------------------------

    async def tick(self, now: float) -> None:
        """Advance every opted-in event: far → near → active; after the end, restore and settle."""
        load = self.readings.site_load_kw()
        if self.actuation.failed_restores:
            held = {
                (s.step.device, s.step.role)
                for r in self.events.values()
                if r.control is not None and r.control.phase in ("shedding", "restoring", "recovering")
                for s in r.control.active
            }
            await self.actuation.retry_failed_restores(held)
        for rec in list(self.events.values()):
            if rec.settle_pending:
                await self.settle(rec)
                continue
            recovering = rec.control is not None and rec.control.phase == "recovering"
            if rec.opt.opt != "in" or (rec.state in FINAL_STATES and not recovering):
                continue
            ev = rec.event
            if now >= ev.end_ts:
                if rec.control is None:
                    await self._set_state(rec, State.COMPLETED)
                    continue
                c = rec.control
                if c.phase == "shedding":
                    c.phase = "restoring"
                    log.info("event_id=%s event=ended restoring=%d", ev.event_id, len(c.active))
                recovery = ev.recovery_s if ev.recovery_s > 0 else c.restore_policy.rebound_window_s
                if c.phase == "restoring":
                    done = await self.actuation.restore_next(c, now, load, ev.end_ts + recovery)
                    if done:
                        # Devices are back; the settlement waits out the recovery window (it reports the rebound).
                        c.phase = "recovering"
                        await self._set_state(rec, State.COMPLETED)
                if c.phase == "recovering" and now >= ev.end_ts + recovery:
                    c.phase = "done"
                    await self.settle(rec)
                continue
            if now >= rec.control_start:
                if rec.control is None:
                    if rec.precooled:
                        await end_precool(self.actuation, ev.event_id, "pre-cooling ends: control starts")
                    await self.begin(rec, now)
                await self._follow_intervals(rec, now)
            else:
                await precool(self.cfg, self.devices, self.actuation, rec, now)
                if now >= ev.start_ts - ev.notification_s and rec.state == State.FAR:
                    await self._set_state(rec, State.NEAR)

    async def _follow_intervals(self, rec: EventRecord, now: float) -> None:
        """Take the target of the signal interval in force; the change shows in reports and the state."""
        c = rec.control
        if c is None or c.phase != "shedding":
            return
        n, _target = rec.event.target_at(max(now, rec.event.start_ts))
        if n == rec.interval:
            return
        changed = rec.interval is not None
        self._retarget(rec, now)
        if changed or rec.event.intervals:
            log.info(
                "event_id=%s event=interval n=%d committed_kw=%.1f", rec.event.event_id, n, c.committed_kw
            )
            if rec not in self._begun:  # else `after_cycle` publishes it, after the first writes
                await self.publish_state(rec)

    def _retarget(self, rec: EventRecord, now: float) -> None:
        """Set control's commitment to the event's target in force now (interval change or modification)."""
        c = rec.control
        if c is None:
            return
        n, target = rec.event.target_at(max(now, rec.event.start_ts))
        _asked, kw = commit_kw(target, self.cfg.contract, c.baseline_kw)
        rec.interval = n
        if abs(kw - c.committed_kw) > 1e-9:
            c.committed_kw = kw  # the controller sees the change on its next cycle and acts at once

    def owning_event_ids(self) -> set[str]:
        """Events that may hold journalled sheds now: not final, or still restoring/recovering."""
        out = set()
        for rec in self.events.values():
            live = rec.control is not None and rec.control.phase in ("shedding", "restoring", "recovering")
            if live or (rec.opt.opt == "in" and rec.state not in FINAL_STATES):
                out.add(rec.event.event_id)
        return out

    def shedding(self) -> list[EventRecord]:
        """Events whose control is shedding now (the controller cycles these)."""
        return [
            r
            for r in self.events.values()
            if r.control is not None and r.control.phase == "shedding" and r.state == State.ACTIVE
        ]

    def running(self) -> EventRecord | None:
        for rec in self.events.values():
            if rec.control is not None and rec.control.phase in ("shedding", "restoring"):
                return rec
        return None

    def baseline(
        self, samples: Iterable[tuple[float, float]], control_start: float, skip: Iterable[Period] = ()
    ) -> tuple[float, str]:
        """The real-time baseline control starts on: `realtime_baseline()` over the recent meter polls,
        the same function and polls (as stored) the settlement uses, skipping earlier events' control
        and recovery periods; else the current load (contract.baseline.realtime_min_history_s)."""
        min_cov = self.cfg.contract.baseline.realtime_min_history_s / 900.0
        rt = realtime_baseline(samples, control_start, skip=skip, min_coverage=min_cov)
        if rt.kw is not None:
            return rt.kw, rt.quality
        if (kw := self.readings.filtered_kw()) is not None:
            return kw, f"{rt.quality}: current load"
        return float("nan"), "no meter data"

    def _control(
        self, rec: EventRecord, baseline: float, committed: float, control_start: float
    ) -> EventControl:
        ev = rec.event
        strategy = self.cfg.strategy_for(ev.program)
        return EventControl(
            event_id=ev.event_id,
            program=ev.program,
            baseline_kw=baseline,
            committed_kw=committed,
            band=self.cfg.contract.band_kw(),
            steps=self._plan(ev.program).steps(self.devices),
            restore_policy=strategy.restore,
            control_start=control_start,
            end=ev.end_ts,
            test_event=ev.test_event,
            phase="shedding",
            peak_kw=self.cfg.contract.peak_kw,
        )

    async def begin(self, rec: EventRecord, now: float) -> None:
        """Control starts: the baseline, the commitment, the steps. The record is persisted and its
        state published after this cycle's writes (`after_cycle`): a crash before that finds the
        event not yet active and the journal's open rows, which a restart restores."""
        ev = rec.event
        # The baseline's window ends when control starts, here and in the settlement (c.control_start).
        skip = self._control_periods(now, ev.event_id)
        baseline, quality = self.baseline(self.readings.recent(), now, skip)
        _n, target = ev.target_at(max(now, ev.start_ts))
        _asked, committed = commit_kw(target, self.cfg.contract, baseline)
        rec.control = self._control(rec, baseline, committed, now)
        rec.control.baseline_quality = quality
        rec.state = State.ACTIVE
        self._begun.append(rec)
        log.info(
            "event_id=%s event=active baseline_kw=%.1f quality=%r committed_kw=%.1f strategy=%s steps=%d",
            ev.event_id,
            baseline,
            quality,
            committed,
            self.cfg.strategy_for(ev.program).name,
            len(rec.control.steps),
        )

    async def after_cycle(self) -> None:
        """Persist and publish the events this control cycle began (once their writes are out)."""
        begun, self._begun = self._begun, []
        for rec in begun:  # their arrival's bookkeeping goes first (`handle_event`)
            self.first_writes_done(rec.event.event_id)
        for rec in begun:
            if rec.event.event_id in self._answered_after_begin:
                self._answered_after_begin.discard(rec.event.event_id)
                continue
            await self._persist(rec)
            await self.publish_state(rec)

    def first_writes_done(self, event_id: str) -> None:
        """The control cycle changed a device for `event_id` (or began it and is done): its
        arrival's bookkeeping waits no longer."""
        started = self._writes_out.pop(event_id, None)
        if started is not None:
            started.set()
            self._answered_after_begin.add(event_id)

    async def _first_writes_out(self, rec: EventRecord) -> None:
        """Until the control cycle that begins `rec` has sent its first writes, or FIRST_WRITES_WAIT_S."""
        started = self._writes_out[rec.event.event_id] = asyncio.Event()
        try:
            async with asyncio.timeout(FIRST_WRITES_WAIT_S):  # no task per event, as wait_for makes
                await started.wait()
        except TimeoutError:
            log.debug(
                "event_id=%s event=bookkeeping_not_deferred reason=no_cycle_began_it", rec.event.event_id
            )
        finally:
            self._writes_out.pop(rec.event.event_id, None)

    def _control_periods(self, before: float, exclude_event: str) -> list[Period]:
        """Earlier events' control and recovery periods (`control_periods`), from the events in
        memory (every stored one: `load` reads them all) instead of reading every stored event."""
        periods = control_periods(self._unreadable_rows, before, exclude_event, self._rebound_window)
        cfg = self.cfg
        for r in self.events.values():
            if r.event.event_id == exclude_event:
                continue
            p = self._facts(r, cfg)[1] if _closed(r) else self._control_period(r)
            if p is not None and p[0] < before:
                periods.append(p)
        return periods

    def _control_period(self, r: EventRecord) -> Period | None:
        """The control and recovery period of `r`, if it ran control (`control_periods`)."""
        if r.opt.opt != "in" or r.runtime is None:
            return None
        ev = r.event
        return control_period(r.runtime, (ev.end_ts, ev.recovery_s, ev.program), self._rebound_window)

    def _rebound_window(self, program: str) -> float:
        return self.cfg.strategy_for(program).restore.rebound_window_s

    async def settle(self, rec: EventRecord, end: float | None = None) -> None:
        """Settle `rec` (agent/settlement/books.py computes the record), store it and publish it with the year to date."""
        if rec.settled:
            rec.settle_pending = False
            return
        ev = rec.event
        if rec.settle_pending:
            # Ended while the agent was down (or restarted in its recovery window); the devices are
            # back. Pending until settled: a database failing here retries next cycle.
            await self._set_state(rec, State.COMPLETED)
        await self.readings.flush()
        c = rec.control
        rt = rec.runtime or {}
        kept = rt.get("baseline_kw")
        run = EventRun(
            event=ev,
            state=rec.state,
            committed_kw=rec.opt.committed_kw,
            control=c,
            control_start=c.control_start
            if c is not None
            else float(rt.get("control_start") or rec.control_start),
            control_baseline_kw=c.baseline_kw if c is not None else (None if kept is None else float(kept)),
            resumed=bool(rt.get("resumed")),
            received_ts=rec.received_ts,
        )
        try:
            body = await self.books.settle(run, end)
            await self.store.save_settlement(ev.event_id, body)
            await self.link.send_settlement(ev.event_id, published(body))
        except (sqlite3.Error, OSError):
            # A full or failing database: settle again next cycle, never drop the settlement.
            rec.settle_pending = True
            raise
        rec.settled, rec.settle_pending = True, False
        log.info(
            "event_id=%s event=settled baseline=%s verified_kw=%.1f pct_of_peak=%.2f in_band_fraction=%.3f quality=%s",
            ev.event_id,
            body["baseline_method"],
            body["verified_reduction_kw"],
            body["verified_reduction_pct_of_peak"],
            body["in_band_fraction"],
            body["data_quality"]["status"],
        )
        now = self.clock.now()
        self.forget_old(now)
        await self.link.send_ledger(await self.books.year_to_date(now))
        p = self.ledger().participation(now)
        if p.warning and p.warning != self.participation_warning:
            log.warning("event=participation %s", p.warning)
        self.participation_warning = p.warning

    # -- restart -------------------------------------------------------------------

    async def load(self) -> None:
        """Reload the stored events after a restart."""
        self._unreadable_rows = []
        for row in await self.store.events():
            try:
                ev = DrEvent.model_validate(row["payload"])
            except Exception:
                # Not loaded, but the real-time baseline still skips the control it may have run.
                self._unreadable_rows.append(row)
                continue
            rt = row.get("runtime") or {}
            ikw = rt.get("intervals_kw")
            opt = OptDecision(
                row["opt"] or "out",
                row["code"] or "",
                row["reason"] or "",
                rt.get("committed_kw"),
                bool(rt.get("partial")),
                None if ikw is None else tuple(ikw),
                tuple(rt.get("supersedes") or ()),
            )
            try:
                state = State(row["state"])
            except ValueError:
                log.warning(
                    "event_id=%s event=unknown_stored_state state=%r skipped", ev.event_id, row["state"]
                )
                continue
            rec = EventRecord(ev, opt, state, row["effective_start"] or ev.start_ts)
            rec.runtime = rt or None
            rec.ended_ts = rt.get("ended_ts")
            rec.settled = await self.store.settlement(ev.event_id) is not None
            self.events[ev.event_id] = rec

    async def recover(self, now: float) -> None:
        """After a restart: resume events still running; restore everything else left shed; settle the rest."""
        await self.load()
        opens = await self.actuation.shed_now()
        resumable = [
            r
            for r in self.events.values()
            if r.state == State.ACTIVE
            and r.opt.opt == "in"
            and r.event.end_ts > now
            and (r.runtime or {}).get("baseline_kw") is not None
        ]
        if opens or resumable:
            # Restore and resume need the devices' current values.
            await self.readings.poll_now()
        kept: set[tuple[str, str]] = set()
        for rec in resumable:
            kept |= await self._resume(rec, now, [e for e in opens if e.event_id == rec.event.event_id])
        failed: list[str] = []
        restored = 0
        done: set[tuple[str, str]] = set(kept)
        for e in reversed(opens):
            key = (e.device, e.role)
            if key in done:
                continue
            done.add(key)
            restored += 1
            if not await self.actuation.restore(
                e.device, e.role, "restart: restoring what the previous run left shed", e.event_id
            ):
                failed.append(f"{e.device}.{e.role}")
        if opens:
            log.warning(
                "event=crash_recovery restored=%d resumed_steps=%d failed=%s",
                restored,
                len(kept),
                ",".join(failed) or "none",
            )
        for rec in self.events.values():
            if rec.state == State.ACTIVE and rec.control is None:
                # It ended (or cannot be resumed) while the agent was down: devices are back; settle it.
                rec.state, rec.settle_pending = State.COMPLETED, True
            elif (
                rec.state == State.COMPLETED
                and rec.opt.opt == "in"
                and not rec.settled
                and (rec.runtime or {}).get("baseline_kw") is not None
            ):
                # Restarted inside the recovery window (devices back, settlement pending): settle now.
                rec.settle_pending = True
        self.forget_old(now)

    def forget_old(self, now: float) -> int:
        """Forget the events the contract no longer counts: closed (`_closed`), settled or never run,
        and over before this year and the contract's period began (a day's margin). They stay
        stored (`dr-agent report` reads them there); each event that arrives walks those in memory
        (the ledger, the control periods), so an agent that runs for years must not keep them all.
        Returns how many were forgotten."""
        local = datetime.fromtimestamp(now, self.tz)
        first = local.date().replace(month=1, day=1)
        period = self.cfg.contract.period
        if period is not None and period.start < first:
            first = period.start
        horizon = datetime(first.year, first.month, first.day, tzinfo=self.tz).timestamp() - 86400
        old = [
            eid
            for eid, r in self.events.items()
            if _closed(r)
            and (r.settled or _ledger_entry(r) is None)
            and max(r.event.end_ts, r.ended_ts or 0.0) < horizon
        ]
        for eid in old:
            del self.events[eid]
            self._closed_facts.pop(eid, None)
        if old:
            log.info("event=events_forgotten n=%d before=%s (still stored)", len(old), first.isoformat())
        return len(old)

    async def _resume(self, rec: EventRecord, now: float, entries: list[Any]) -> set[tuple[str, str]]:
        """Carry on a running event: stored baseline and commitment, shed steps from the revert journal."""
        rt = rec.runtime or {}
        c = self._control(
            rec,
            float(rt["baseline_kw"]),
            float(rt.get("control_committed_kw") or rt.get("committed_kw") or 0.0),
            float(rt.get("control_start") or rec.control_start),
        )
        c.baseline_quality = str(rt.get("baseline_quality") or "ok")
        by_id = {st.id: st for st in c.steps}
        kept: set[tuple[str, str]] = set()
        latest: dict[tuple[str, str], Any] = {}
        for e in entries:
            latest[(e.device, e.role)] = e
        for key, e in latest.items():
            st = by_id.get(e.step or "")
            if st is None:
                continue  # the strategy changed: restore it instead
            c.active.append(ActiveStep(st, now, e.written if e.written is not None else 0.0, None))
            kept.add(key)
        c.last_change = now
        rec.control = c
        rec.runtime = {**rt, "resumed": True}
        await self._persist(rec)
        log.warning(
            "event_id=%s event=resumed active_steps=%d committed_kw=%.1f ends=%s",
            rec.event.event_id,
            len(c.active),
            c.committed_kw,
            datetime.fromtimestamp(rec.event.end_ts, self.tz).isoformat(),
        )
        await self.publish_state(rec)
        return kept
