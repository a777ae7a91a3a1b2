"""The control loop: hold realized curtailment inside the contracted band, then restore.

Each cycle freezes the latest (filtered) site load, computes realized
curtailment = baseline - load, and makes one decision: add a step, release a
step, or hold. `decide()` is pure so it is tested on its own; `EventControl`
carries the state of one event and applies decisions through the actuator.
Simulation and production run this same code; only the clock and the
devices' physics differ.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from agent.actuator import Actuator, LimitViolation
from agent.config import ControlConfig
from drivers.device import Device, WriteError
from strategies.engine import NotApplicable, Step, shed_value
from strategies.model import RestorePolicy

log = logging.getLogger("dr_agent.control")


@dataclass
class ActiveStep:
    step: Step
    applied_at: float
    value: float | bool
    load_before: float | None
    measured_kw: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Literal["add", "release", "hold"]
    reason: str
    step: Step | None = None


def aim_kw(committed_kw: float, band: tuple[float, float], deadband_kw: float) -> float:
    """Where to steer: the commitment, kept a margin inside the band so noise stays in band."""
    lo, hi = band
    margin = max(deadband_kw * 2, 0.1 * (hi - lo))
    return min(max(committed_kw, lo + margin), hi - margin)


def decide(
    *,
    now: float,
    realized_kw: float | None,
    aim: float,
    band: tuple[float, float],
    deadband_kw: float,
    settle_s: float,
    last_change: float | None,
    active: Sequence[ActiveStep],
    candidates: Sequence[Step],
) -> Decision:
    """One control decision. `candidates` are the steps that could be added now, in strategy order."""
    if realized_kw is None:
        return Decision("hold", "meter unknown: holding, not adding or releasing blind")
    if last_change is not None and now - last_change < settle_s:
        return Decision("hold", "settling after the last change")
    lo, hi = band
    if realized_kw < aim - deadband_kw:
        room = hi - deadband_kw - realized_kw
        for st in candidates:
            if st.estimate_kw <= room:
                return Decision("add", f"{realized_kw:.1f} kW realized, aiming at {aim:.1f} kW", st)
        if candidates and realized_kw < lo:
            smallest = min(candidates, key=lambda s: s.estimate_kw)
            return Decision(
                "add", f"below the band ({realized_kw:.1f} < {lo:.1f} kW): smallest step", smallest
            )
        return Decision(
            "hold", "no step fits the remaining room in the band" if candidates else "no steps left"
        )
    if realized_kw > hi - deadband_kw:
        excess = realized_kw - aim
        releasable = [a for a in reversed(active) if now - a.applied_at >= a.step.action.min_hold_s]
        for a in releasable:
            est = a.measured_kw if a.measured_kw is not None else a.step.estimate_kw
            if realized_kw - est >= lo + deadband_kw or est <= excess:
                return Decision(
                    "release", f"{realized_kw:.1f} kW realized, above {hi - deadband_kw:.1f} kW", a.step
                )
        return Decision("hold", "above the band but no step may be released yet")
    return Decision("hold", "in band")


@dataclass
class LoadFilter:
    """Exponential moving average of site load; the controller acts on this, not raw noise."""

    tau_s: float
    value: float | None = None
    last_ts: float | None = None

    def update(self, ts: float, kw: float) -> float:
        if self.value is None or self.last_ts is None or self.tau_s <= 0:
            self.value = kw
        else:
            dt = max(0.0, ts - self.last_ts)
            a = 1 - math.exp(-dt / self.tau_s)
            self.value += a * (kw - self.value)
        self.last_ts = ts
        return self.value


@dataclass
class EventControl:
    """The control state of one running event."""

    event_id: str
    program: str
    baseline_kw: float
    committed_kw: float
    band: tuple[float, float]
    steps: list[Step]
    restore_policy: RestorePolicy
    control_start: float
    end: float
    test_event: bool = False
    active: list[ActiveStep] = field(default_factory=list)
    last_change: float | None = None
    released_at: dict[str, float] = field(default_factory=dict)
    actuations: int = 0
    phase: Literal["armed", "shedding", "restoring", "done"] = "armed"
    last_decision: str = ""
    realized_kw: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    baseline_quality: str = "ok"

    def active_ids(self) -> set[str]:
        return {a.step.id for a in self.active}


class Controller:
    """Runs `EventControl`s: cycles while shedding, then a staggered restore."""

    def __init__(
        self,
        cfg: ControlConfig,
        devices: Mapping[str, Device],
        actuator: Actuator,
        tz: ZoneInfo,
        on_change: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.devices = devices
        self.actuator = actuator
        self.tz = tz
        self.on_change = on_change
        self.run: EventControl | None = None
        #: Learned kW per step id, measured after each step settled.
        self.learned: dict[str, float] = {}

    def deadband_kw(self, peak_kw: float) -> float:
        return peak_kw * self.cfg.deadband_pct / 100

    def candidates(self, ev: EventControl, now: float) -> list[Step]:
        local = datetime.fromtimestamp(now, self.tz)
        active_ids = ev.active_ids()
        busy_devices = {(a.step.device, a.step.role) for a in ev.active}
        out = []
        for st in ev.steps:
            if st.id in active_ids or (st.device, st.role) in busy_devices:
                continue
            if not st.allowed_at(local):
                continue
            cd = st.action.cooldown_s
            if cd and now - ev.released_at.get(st.id, -math.inf) < cd:
                continue
            if not self.devices[st.device].health.available:
                continue
            if st.id in self.learned:
                st.learned_kw = self.learned[st.id]
            out.append(st)
        return out

    async def cycle(self, ev: EventControl, now: float, load_kw: float | None, peak_kw: float) -> Decision:
        """One control decision for a shedding event, applied."""
        realized = None if load_kw is None else ev.baseline_kw - load_kw
        ev.realized_kw = realized
        self._learn(ev, now, load_kw)
        # A step past its max_shed_s comes back whatever the band says.
        for a in list(ev.active):
            limit = a.step.action.max_shed_s
            if limit is not None and now - a.applied_at >= limit:
                await self._release(ev, a, now, f"max_shed_s {limit:g} s reached")
                return Decision("release", "max_shed_s reached", a.step)
        d = decide(
            now=now,
            realized_kw=realized,
            aim=aim_kw(ev.committed_kw, ev.band, self.deadband_kw(peak_kw)),
            band=ev.band,
            deadband_kw=self.deadband_kw(peak_kw),
            settle_s=self.cfg.settle_s,
            last_change=ev.last_change,
            active=ev.active,
            candidates=self.candidates(ev, now),
        )
        ev.last_decision = d.reason
        if d.action == "add" and d.step is not None:
            await self._add(ev, d.step, now, load_kw)
        elif d.action == "release" and d.step is not None:
            a = next(a for a in ev.active if a.step.id == d.step.id)
            await self._release(ev, a, now, d.reason)
        return d

    def _learn(self, ev: EventControl, now: float, load_kw: float | None) -> None:
        if load_kw is None:
            return
        for a in ev.active:
            if (
                a.measured_kw is None
                and a.load_before is not None
                and now - a.applied_at >= self.cfg.settle_s
            ):
                a.measured_kw = max(0.0, a.load_before - load_kw)
                prev = self.learned.get(a.step.id)
                self.learned[a.step.id] = a.measured_kw if prev is None else 0.5 * prev + 0.5 * a.measured_kw

    async def _add(self, ev: EventControl, step: Step, now: float, load_kw: float | None) -> None:
        dev = self.devices[step.device]
        try:
            original = await self.actuator.original(step.device, step.role)
            value = shed_value(step, dev, original)
            if not ev.test_event:
                await self.actuator.shed(step.device, step.role, value, ev.event_id, step.id)
        except (NotApplicable, LimitViolation, WriteError) as exc:
            # One failing step never stops the others: skip it for this event.
            ev.skipped[step.id] = str(exc)
            ev.steps = [s for s in ev.steps if s.id != step.id]
            log.warning("event_id=%s step=%s action=skip reason=%r", ev.event_id, step.id, str(exc))
            return
        ev.active.append(ActiveStep(step, now, value, load_kw))
        ev.last_change = now
        ev.actuations += 1
        if self.on_change:
            await self.on_change(ev.event_id, f"added {step.id}")

    async def _release(self, ev: EventControl, a: ActiveStep, now: float, reason: str) -> None:
        if not ev.test_event:
            await self.actuator.restore(a.step.device, a.step.role, reason, ev.event_id)
        ev.active.remove(a)
        ev.released_at[a.step.id] = now
        ev.last_change = now
        ev.actuations += 1
        if self.on_change:
            await self.on_change(ev.event_id, f"released {a.step.id}")

    async def restore_next(
        self, ev: EventControl, now: float, load_kw: float | None, recovery_deadline: float
    ) -> bool:
        """Release one step (LIFO) if the stagger interval and the rebound cap allow. True when all are back."""
        if not ev.active:
            return True
        pol = ev.restore_policy
        if ev.last_change is not None and now - ev.last_change < pol.step_interval_s:
            return False
        a = ev.active[-1]
        if pol.rebound_cap_factor is not None and load_kw is not None and now < recovery_deadline:
            est = a.measured_kw if a.measured_kw is not None else a.step.estimate_kw
            if load_kw + est > ev.baseline_kw * pol.rebound_cap_factor:
                ev.last_decision = "restore held by the rebound cap"
                return False
        await self._release(ev, a, now, "event ended")
        return not ev.active

    async def release_all(self, ev: EventControl, now: float, reason: str) -> None:
        """Immediate restore of everything (shutdown, cancellation)."""
        for a in list(reversed(ev.active)):
            await self._release(ev, a, now, reason)
