"""The control loop: hold realized curtailment inside the contracted band, then restore without a rebound.

Each cycle freezes the latest (filtered) site load and computes realized
curtailment = baseline - load. Changes already written but not yet visible
on the meter (actuation delay, device lag, the load filter) are added as
*pending* kW, so the loop never adds steps while earlier ones have not taken
effect. `decide()` is pure: it turns the predicted gap to the aim into
decisions — deepen or ease a continuous actuator (battery kW, charger A),
add the steps that best fit the gap (stage order first, best fit within a
stage), or release steps in reverse order — with hysteresis, minimum hold
times and an anti-flap settle time. Step sizes start as the strategy's
estimates and are learned per step from the device's own power reading,
persisted across events.

At the end, `restore_next()` brings devices back staggered and ramped: HVAC
setpoints walk back in small steps, continuous actuators ramp down last and
absorb the HVAC rebound, and nothing is released while the site would go
above baseline x the rebound cap during the recovery window.

Simulation and production run this same code; only the clock and the
devices' physics differ.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from agent.config.model import ControlConfig
from agent.control.actuator import REFUSALS, Actuator, LimitViolation, Shed
from agent.platform.logs import FailureLog
from drivers.device import Device, WriteError
from strategies.engine import NotApplicable, Step, shed_value
from strategies.model import RestorePolicy

log = logging.getLogger("dr_agent.control")

# How a step's kind behaves (its effect's lag on the meter, continuous or not, how it comes back)
# is the kind's `ControlTraits` (drivers/kinds/<kind>.py), read as `step.traits`.
#: Learned kW stays within this factor of the configured estimate (one bad reading can't run away).
LEARN_CLAMP = (0.25, 4.0)
LEARN_ALPHA = 0.4
LEARNED_META_KEY = "control.learned_kw"
#: Minimum seconds between two adjustments of one continuous actuator.
TRIM_INTERVAL_S = 5.0
#: Window of the means the quality metrics judge, s.
QUALITY_WINDOW_S = 10.0


# -- state ---------------------------------------------------------------------------


@dataclass
class ActiveStep:
    """A step that is shed, fully or (continuous actuators, HVAC during restore) in part."""

    step: Step
    applied_at: float
    value: float | bool
    load_before: float | None
    original: float | bool | None = None
    full_value: float | bool | None = None
    depth: float = 1.0
    device_kw_before: float | None = None
    measured_kw: float | None = None
    changed_at: float = 0.0
    learn_at: float | None = None

    @property
    def continuous(self) -> bool:
        return self.step.traits.continuous and isinstance(self.full_value, (int, float))


@dataclass(frozen=True)
class Decision:
    """One thing to do now. `depth` is the new depth for add/adjust (1 = the strategy's full shed)."""

    action: Literal["add", "release", "adjust", "hold"]
    reason: str
    step: Step | None = None
    depth: float = 1.0
    kw: float = 0.0


@dataclass
class Pending:
    """A change written but not yet fully visible on the meter: kW still to come, fading with tau."""

    t: float
    kw: float
    tau: float

    def remaining(self, now: float) -> float:
        return self.kw * math.exp(-max(0.0, now - self.t) / self.tau)


# -- pure decisions -------------------------------------------------------------------


def aim_kw(committed_kw: float, band: tuple[float, float], deadband_kw: float) -> float:
    """Where to steer: the commitment, kept a margin inside the band so noise stays in band."""
    lo, hi = band
    margin = max(deadband_kw * 2, 0.1 * (hi - lo))
    return min(max(committed_kw, lo + margin), hi - margin)


@dataclass(frozen=True)
class Option:
    """A candidate for decide(): a step that could be added with its estimated full kW."""

    step: Step
    kw: float
    continuous: bool = False
    fast: bool = True  # shows on the meter within seconds (not an HVAC compressor)


@dataclass(frozen=True)
class Held:
    """An active step as decide() sees it: its current effect and what may still change."""

    step: Step
    kw: float  # current estimated effect, kW
    depth: float
    full_kw: float  # effect at depth 1
    continuous: bool
    releasable: bool  # min hold passed
    adjustable: bool  # continuous and not adjusted too recently


class _Stage:
    """One stage's options as decide() picks from them: in pool order, the fixed-kW ones also
    sorted by kW, so a best fit costs two bisections instead of a scan of the stage (a stage of
    N zones is picked from up to N times in one cycle)."""

    def __init__(self, options: Sequence[Option]) -> None:
        self.stage = options[0].step.stage
        self.options = list(options)
        #: (rank in pool order, option): the continuous ones, scanned (they are few).
        self._continuous = [(r, o) for r, o in enumerate(options) if o.continuous]
        fixed = sorted(((o.kw, r) for r, o in enumerate(options) if not o.continuous))
        self._kws = [kw for kw, _ in fixed]
        self._fixed = [(r, options[r]) for _, r in fixed]

    def best_fit(self, gap: float, room: float, most: float) -> Option | None:
        """The option whose kW comes closest to `gap` (the first in pool order of equals), among
        those that fit: continuous ones (set to the gap, within `room`) and fixed ones of at most
        `most` kW."""
        best: tuple[float, int, Option] | None = None
        for r, o in self._continuous:
            miss = abs(gap - min(o.kw, gap, room))
            if best is None or (miss, r) < best[:2]:
                best = (miss, r, o)
        kws = self._kws
        fit = bisect.bisect_right(kws, most)
        below = bisect.bisect_right(kws, gap, 0, fit)
        # The closest fixed kW are the largest at most the gap and the smallest above it; each is
        # the first of its equals in pool order (sorted by kW, then rank).
        near = [] if below == fit else [below]
        if below:
            near.append(bisect.bisect_left(kws, kws[below - 1], 0, below))
        for i in near:
            r, o = self._fixed[i]
            miss = abs(gap - kws[i])
            if best is None or (miss, r) < best[:2]:
                best = (miss, r, o)
        return None if best is None else best[2]

    def remove(self, option: Option) -> None:
        _remove(self.options, option)
        for i, (_r, o) in enumerate(self._fixed):
            if o is option:
                del self._fixed[i], self._kws[i]
                return
        self._continuous = [(r, o) for r, o in self._continuous if o is not option]


def _stages(options: Sequence[Option]) -> list[_Stage]:
    """`options` cut where the stage changes (a stage split by the fast-first order is two)."""
    groups: list[list[Option]] = []
    for o in options:
        if groups and groups[-1][0].step.stage == o.step.stage:
            groups[-1].append(o)
        else:
            groups.append([o])
    return [_Stage(g) for g in groups]


def _remove(options: list[Option], option: Option) -> None:
    """Remove `option` itself: `list.remove` would compare options field by field (dataclass ==)."""
    for i, o in enumerate(options):
        if o is option:
            del options[i]
            return
    raise ValueError("option not in the list")


def decide(
    *,
    now: float,
    predicted_kw: float | None,
    aim: float,
    band: tuple[float, float],
    deadband_kw: float,
    settle_s: float,
    last_add: float | None,
    last_release: float | None,
    held: Sequence[Held],
    options: Sequence[Option],
    urgent: bool = False,
) -> list[Decision]:
    """The decisions of one cycle. `options` are in strategy order; `held` in the order they were added.

    `predicted_kw` is realized curtailment plus what is pending. Below
    aim - deadband: deepen continuous steps, then add steps, earliest stage
    first, the best fit to the gap within a stage, several at once if the gap
    needs it, never planning above the band's top. Above aim + deadband: ease
    continuous steps, then release one step (reverse order, best fit) that
    keeps curtailment at or above aim - deadband — unless above the band's
    top, when something must go. After an add, no release for `settle_s`
    (and vice versa) unless the band itself is at stake: that is the
    hysteresis that stops flapping. `urgent` (a new target not reached yet) fills the gap as a new
    event's first entry does: fast actuators first whatever their stage, continuous ones deepened,
    a step may overshoot by what the continuous ones hold, and nothing is eased on a predicted
    overshoot below the band's top until the target shows on the meter.
    """
    if predicted_kw is None:
        return [Decision("hold", "meter unknown: holding, not adding or releasing blind")]
    lo, hi = band
    top = hi - deadband_kw
    out: list[Decision] = []
    if predicted_kw < aim - deadband_kw:
        if last_release is not None and now - last_release < settle_s and predicted_kw >= lo + deadband_kw:
            return [Decision("hold", "settling after a release")]
        gap = aim - predicted_kw
        room = top - predicted_kw
        at_stake = predicted_kw < lo + deadband_kw or urgent

        def deepen() -> None:
            nonlocal gap, room
            for h in held:
                if gap <= deadband_kw / 2:
                    break
                if h.continuous and h.adjustable and h.depth < 1.0 and h.full_kw > 0:
                    add = min(gap, h.full_kw - h.kw, room)
                    if add >= deadband_kw / 2:
                        depth = min(1.0, (h.kw + add) / h.full_kw)
                        out.append(Decision("adjust", f"deepen by {add:.1f} kW", h.step, depth, add))
                        gap -= add
                        room -= add

        if at_stake:
            # The band itself is at stake: fast actuators first, whatever their stage; slow ones
            # (HVAC) follow. The hand-over back to strategy order happens once in band.
            deepen()
            pool = [o for o in options if o.fast] + [o for o in options if not o.fast]
        else:
            pool = list(options)
        # A step fits the gap if it overshoots the aim by at most the deadband. For a new target
        # also by what the continuous steps hold (just deepened included): they ease back as the
        # step lands, instead of the site staying short of the target when no step fits what
        # they leave.
        slack = deadband_kw
        if urgent:
            slack += sum(h.kw for h in held if h.continuous) + sum(d.kw for d in out if d.action == "adjust")
        # The pool's stage groups, kept as steps are picked (grouped again only when one empties,
        # which may join its neighbours): a stage of 50 devices is not regrouped 50 times.
        groups = _stages(pool)
        why_add = f"{predicted_kw:.1f} kW predicted, aiming at {aim:.1f} kW"
        while gap > deadband_kw / 2 and pool:
            pick: Option | None = None
            picked_from: _Stage | None = None
            # Continuous ones are set to the gap. Stages in order; within a stage, the best fit.
            most = min(gap + slack, room)
            for group in groups:
                pick = group.best_fit(gap, room, most)
                if pick is not None:
                    picked_from = group
                    break
            if pick is None and aim - gap < lo + deadband_kw:
                # Nothing fits and the band's bottom is near: the first step that stays inside the band.
                pick = next((o for o in pool if o.kw <= room), None)
            if pick is None:
                break
            _remove(pool, pick)
            if picked_from is not None and len(picked_from.options) > 1:
                picked_from.remove(pick)
            else:
                groups = _stages(pool)
            kw = min(pick.kw, gap, room) if pick.continuous else pick.kw
            if kw <= 0:
                continue
            depth = kw / pick.kw if pick.continuous and pick.kw > 0 else 1.0
            out.append(Decision("add", why_add, pick.step, depth, kw))
            gap -= kw
            room -= kw
        if not at_stake:
            deepen()
        if not out and options and predicted_kw < lo:
            smallest = min(options, key=lambda o: o.kw)
            out.append(
                Decision(
                    "add",
                    f"below the band ({predicted_kw:.1f} < {lo:.1f} kW): smallest step",
                    smallest.step,
                    1.0,
                    smallest.kw,
                )
            )
        if not out:
            out.append(
                Decision(
                    "hold", "no step fits the remaining room in the band" if options else "no steps left"
                )
            )
        return out
    if predicted_kw > aim + deadband_kw:
        if urgent and predicted_kw <= top:
            # A new target not reached on the meter yet: the kW predicted above it are still on their
            # way (slow steps); easing the fast ones now would leave the meter short meanwhile.
            return [Decision("hold", "new target: waiting for the steps added to show on the meter")]
        if last_add is not None and now - last_add < settle_s and predicted_kw <= top:
            return [Decision("hold", "settling after an add")]
        excess = predicted_kw - aim
        for h in reversed(held):
            if excess <= deadband_kw / 2:
                break
            if h.continuous and h.adjustable and h.kw > 0 and h.full_kw > 0:
                cut = min(excess, h.kw)
                depth = max(0.0, (h.kw - cut) / h.full_kw)
                if depth <= 0.02:
                    if h.releasable:
                        out.append(Decision("release", "eased to nothing", h.step, 0.0, h.kw))
                    else:
                        out.append(Decision("adjust", f"ease by {h.kw:.1f} kW", h.step, 0.0, -h.kw))
                else:
                    out.append(Decision("adjust", f"ease by {cut:.1f} kW", h.step, depth, -cut))
                excess -= cut
        if excess > deadband_kw:
            touched = {d.step.id for d in out if d.step is not None}
            free = [h for h in reversed(held) if h.releasable and h.step.id not in touched and h.kw > 0]
            # A release must leave curtailment at or above aim - deadband (hysteresis).
            current = aim + excess
            keep = [h for h in free if current - h.kw >= aim - deadband_kw]
            pick_h: Held | None = None
            if keep:
                pick_h = min(keep, key=lambda h: abs(excess - h.kw))
            elif current > top and free:
                pick_h = min(free, key=lambda h: abs(current - h.kw - aim))
            if pick_h is not None:
                out.append(
                    Decision(
                        "release",
                        f"{current:.1f} kW predicted, above {aim + deadband_kw:.1f} kW",
                        pick_h.step,
                        0.0,
                        pick_h.kw,
                    )
                )
        if not out:
            out.append(Decision("hold", "above the aim but no step may be released yet"))
        return out
    # In the deadband. If a continuous actuator carries load that an earlier stage could carry,
    # hand it over (the strategy's priority), slowly: the next cycles ease the actuator.
    cont = [h for h in held if h.continuous and h.kw > deadband_kw]
    quiet = all(t is None or now - t >= 2 * settle_s for t in (last_add, last_release))
    if cont and quiet:
        first = min(h.step.order for h in cont)
        cont_kw = sum(h.kw for h in cont)
        earlier = [o for o in options if not o.continuous and o.step.order < first and o.kw <= cont_kw]
        if earlier:
            pick = max(earlier, key=lambda o: o.kw)
            return [
                Decision(
                    "add",
                    f"hand {pick.kw:.1f} kW over from {cont[0].step.id} to strategy order",
                    pick.step,
                    1.0,
                    pick.kw,
                )
            ]
    return [Decision("hold", "in band")]


# -- the load filter and quality metrics ---------------------------------------------------


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


#: Site-meter plausibility (MeterGuard): a reading that moves by more than this fraction of the
#: load (of at least 10 % of the contracted peak) at once is suspect ...
METER_JUMP_FRACTION = 0.5
#: ... until it has held this long (s): then it is the site's new load, not a glitch.
METER_CONFIRM_S = 30.0
#: A live site's load moves by at least a resolution step: the same value this long (s) is frozen.
METER_FROZEN_S = 60.0


@dataclass
class MeterGuard:
    """Refuses site-meter readings that are not a load: frozen, a spike, a drop to zero.

    A refused reading reaches neither the filter nor the baseline, so the meter goes stale and
    the controller holds (degraded) instead of chasing a 10x spike into shedding everything or
    a zero into releasing everything. A jump that holds METER_CONFIRM_S is believed.
    """

    peak_kw: float
    frozen_s: float = METER_FROZEN_S
    jump_fraction: float = METER_JUMP_FRACTION
    confirm_s: float = METER_CONFIRM_S
    accepted_kw: float | None = None
    last_kw: float | None = None
    changed_ts: float = 0.0
    suspect_kw: float | None = None
    suspect_ts: float = 0.0
    #: Why readings are being refused now (None while they are plausible).
    refusing: str | None = None

    def _far(self, kw: float, ref: float) -> bool:
        return abs(kw - ref) > self.jump_fraction * max(abs(ref), 0.1 * self.peak_kw)

    def accept(self, ts: float, kw: float) -> bool:
        """True if `kw` (read at `ts`) is a plausible site load; logs the first refusal and the recovery."""
        if kw != self.last_kw:
            self.last_kw, self.changed_ts = kw, ts
        why = None
        if ts - self.changed_ts >= self.frozen_s:
            why = f"frozen at {kw:g} kW for {ts - self.changed_ts:.0f} s"
        elif self.accepted_kw is not None and self._far(kw, self.accepted_kw):
            if self.suspect_kw is None or self._far(kw, self.suspect_kw):
                self.suspect_kw, self.suspect_ts = kw, ts
            if ts - self.suspect_ts < self.confirm_s:
                why = f"jump from {self.accepted_kw:g} to {kw:g} kW"
        if why is not None:
            if self.refusing is None:
                log.warning("event=meter_reading_refused reason=%r action=hold", why)
            self.refusing = why
            return False
        if self.refusing is not None:
            log.warning("event=meter_plausible_again kw=%g was=%r", kw, self.refusing)
            self.refusing = None
        self.suspect_kw = None
        self.accepted_kw = kw
        return True


@dataclass
class QualityTracker:
    """Control quality of one event, from raw meter readings, O(1) per reading.

    Judged on 10-s means of realized curtailment (baseline - metered load):
    time to band = from the event start (after any ramp-up) to the first time
    the trailing 10-s mean is inside the band and stays there for `hold_s`
    (60 s; sweeping through the band on the way up does not count); in-band fraction,
    tracking error and time above the band over the 10-s windows (aligned to
    the start) from band entry to the end; overshoot = the highest 10-s mean
    above the band's top at any time, % of peak.
    """

    start: float
    end: float
    baseline_kw: float
    band: tuple[float, float]
    peak_kw: float
    window_s: float = QUALITY_WINDOW_S
    entry: float | None = None
    buckets: dict[int, list[float]] = field(default_factory=dict)
    hold_s: float = 60.0
    _trail: deque[tuple[float, float]] = field(default_factory=deque)
    _trail_sum: float = 0.0
    _inside_since: float | None = None

    def add(self, ts: float, load_kw: float, committed_kw: float) -> None:
        if not self.start <= ts < self.end or not math.isfinite(self.baseline_kw):
            return
        r = self.baseline_kw - load_kw
        b = self.buckets.setdefault(int((ts - self.start) // self.window_s), [0.0, 0.0, 0.0])
        b[0] += r
        b[1] += 1
        b[2] += committed_kw
        if self.entry is None:
            self._trail.append((ts, r))
            self._trail_sum += r
            while self._trail and self._trail[0][0] <= ts - self.window_s:
                self._trail_sum -= self._trail.popleft()[1]
            covered = ts - self.start >= self.window_s * 0.5
            mean = self._trail_sum / len(self._trail)
            if covered and self.band[0] <= mean <= self.band[1]:
                if self._inside_since is None:
                    self._inside_since = ts
                if ts - self._inside_since >= self.hold_s:
                    self.entry = self._inside_since  # entered and stayed: passing through does not count
            else:
                self._inside_since = None

    def summary(self) -> dict[str, Any]:
        lo, hi = self.band
        means = {i: (s / n, c / n) for i, (s, n, c) in self.buckets.items() if n >= 3}
        overshoot = max((m - hi for m, _c in means.values()), default=0.0)
        out: dict[str, Any] = {
            "judged_on_s": self.window_s,
            "time_to_band_s": None if self.entry is None else round(self.entry - self.start, 1),
            "in_band_fraction": 0.0,
            "tracking_error_pct": None,
            "above_band_fraction": 0.0,
            "overshoot_pct": round(max(0.0, overshoot) / self.peak_kw * 100, 3),
        }
        if self.entry is not None:
            first = math.ceil((self.entry - self.start) / self.window_s - 1e-9)
            judged = [v for i, v in means.items() if i >= first]
            if judged:
                out["in_band_fraction"] = round(sum(lo <= m <= hi for m, _c in judged) / len(judged), 4)
                out["above_band_fraction"] = round(sum(m > hi for m, _c in judged) / len(judged), 4)
                err = sum(abs(m - c) for m, c in judged) / len(judged)
                out["tracking_error_pct"] = round(err / self.peak_kw * 100, 3)
            else:
                out["in_band_fraction"] = 1.0
        return out


def rebound_peak_pct(
    samples: Sequence[tuple[float, float]], end: float, window_s: float, baseline_kw: float, peak_kw: float
) -> float | None:
    """Highest 1-minute mean of site load above baseline in [end, end + window), % of peak."""
    buckets: dict[int, list[float]] = {}
    for ts, kw in samples:
        if end <= ts < end + window_s:
            buckets.setdefault(int((ts - end) // 60), []).append(kw)
    means = [sum(v) / len(v) for v in buckets.values() if len(v) >= 3]
    if not means or not math.isfinite(baseline_kw):
        return None
    return round((max(means) - baseline_kw) / peak_kw * 100, 3)


# -- one event ------------------------------------------------------------------------------


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
    last_add: float | None = None
    last_release: float | None = None
    released_at: dict[str, float] = field(default_factory=dict)
    actuations: int = 0
    phase: Literal["armed", "shedding", "restoring", "recovering", "done"] = "armed"
    last_decision: str = ""
    realized_kw: float | None = None
    predicted_kw: float | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    baseline_quality: str = "ok"
    #: The contract peak the band was computed from (a reload mid-event keeps the event's own).
    peak_kw: float = 0.0
    pending: list[Pending] = field(default_factory=list)
    degraded: bool = False
    degraded_s: float = 0.0
    last_cycle: float | None = None
    start: float | None = None
    quality: QualityTracker | None = None
    last_committed: float | None = None
    #: A new target (modification, signal interval) not reached yet: control fills the gap as on entry.
    retargeting: bool = False
    rebound_held_s: float = 0.0
    restore_steps: int | None = None
    #: The settlement's control figures, once settled.
    final: dict[str, Any] | None = None

    def active_ids(self) -> set[str]:
        return {a.step.id for a in self.active}

    def pending_kw(self, now: float) -> float:
        self.pending = [p for p in self.pending if now - p.t < 5 * p.tau]
        return sum(p.remaining(now) for p in self.pending)

    def metrics(self) -> dict[str, Any]:
        """The control-quality figures of this event so far (settlement and Prometheus)."""
        q = self.quality.summary() if self.quality else {}
        q.update({"actuations": self.actuations, "degraded_s": round(self.degraded_s, 1)})
        return q

    def settlement_metrics(
        self, post: Sequence[tuple[float, float]], window_s: float, peak_kw: float
    ) -> dict[str, Any]:
        """`metrics()` plus the rebound over the recovery window, from the meter readings after the end."""
        out = self.metrics()
        out["recovery_window_s"] = window_s
        out["rebound_peak_pct"] = rebound_peak_pct(post, self.end, window_s, self.baseline_kw, peak_kw)
        out["rebound_held_s"] = round(self.rebound_held_s, 1)
        self.final = out
        return out


# -- the controller -------------------------------------------------------------------------


class Controller:
    """Runs `EventControl`s: cycles while shedding, then a staggered, capped, ramped restore."""

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
        #: The most recent event controlled (Prometheus shows its figures after it ends).
        self.last: EventControl | None = None
        #: Learned kW per step id, measured on the device after each step settled; persisted.
        self.learned: dict[str, float] = {}
        self._adjust_failures: dict[str, FailureLog] = {}
        self._learned_loaded = False
        self._learned_dirty = False

    def quality(self) -> tuple[str, dict[str, Any]] | None:
        """(event id, control figures) of the running or most recent event, for Prometheus."""
        ev = self.last
        if ev is None:
            return None
        m = ev.final or ev.metrics()
        m["degraded"] = ev.degraded
        return ev.event_id, m

    # -- learned kW, persisted in the store's meta table -------------------------------

    async def load_learned(self) -> None:
        self._learned_loaded = True
        try:
            raw = await self.actuator.store.meta_get(LEARNED_META_KEY)
        except Exception as exc:  # a missing table is not a reason to stop controlling
            log.warning("event=learned_kw_unreadable error=%r", str(exc))
            return
        if raw:
            try:
                data = json.loads(raw)
                self.learned.update({str(k): float(v) for k, v in data.items()})
            except (ValueError, TypeError, AttributeError):
                log.warning("event=learned_kw_corrupt ignored=true")

    async def save_learned(self) -> None:
        if not self._learned_dirty:
            return
        self._learned_dirty = False
        await self.actuator.store.meta_set(
            LEARNED_META_KEY, json.dumps({k: round(v, 3) for k, v in sorted(self.learned.items())})
        )

    # -- helpers ---------------------------------------------------------------------------

    def deadband_kw(self, peak_kw: float) -> float:
        return peak_kw * self.cfg.deadband_pct / 100

    def tau(self, step: Step) -> float:
        return max(self.cfg.filter_s, 0.5) + step.traits.lag_s

    def _device_kw(self, name: str) -> float | None:
        return self.devices[name].power_kw()

    def live_kw(self, a: ActiveStep) -> float:
        """The step's effect now: the device's own power against before, else learned/estimated x depth."""
        now_kw = self._device_kw(a.step.device)
        if a.device_kw_before is not None and now_kw is not None:
            return max(0.0, a.device_kw_before - now_kw)
        if a.measured_kw is not None:
            return a.measured_kw * a.depth
        return a.step.estimate_kw * a.depth

    def option_kw(self, st: Step) -> float:
        """What adding this step would shed now, as best known (the kind refines it from readings)."""
        est = self.learned.get(st.id, st.estimate_kw)
        return st.action.live_kw(self.devices[st.device], est)

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

    def _held(self, ev: EventControl, now: float) -> list[Held]:
        out = []
        for a in ev.active:
            if not self.devices[a.step.device].health.available:
                # Unreachable: its effect is unknown and a write would fail; feedback covers the rest.
                out.append(Held(a.step, 0.0, a.depth, 0.0, False, False, False))
                continue
            kw = self.live_kw(a)
            full = kw / a.depth if a.depth > 0.05 else self.learned.get(a.step.id, a.step.estimate_kw)
            if a.continuous:
                full = max(full, self.learned.get(a.step.id, a.step.estimate_kw)) if a.depth >= 0.99 else full
            out.append(
                Held(
                    step=a.step,
                    kw=kw,
                    depth=a.depth,
                    full_kw=full,
                    continuous=a.continuous and self.devices[a.step.device].health.available,
                    releasable=now - a.applied_at >= a.step.action.min_hold_s,
                    adjustable=now - a.changed_at >= TRIM_INTERVAL_S,
                )
            )
        return out

    # -- the cycle ---------------------------------------------------------------------------

    def observe(self, ev: EventControl, now: float, raw_kw: float | None) -> None:
        """Feed the event's quality tracker with a raw meter reading (cheap; every cycle)."""
        if ev.quality is None:
            ev.quality = QualityTracker(
                ev.start if ev.start is not None else ev.control_start,
                ev.end,
                ev.baseline_kw,
                ev.band,
                peak_kw=max(1e-9, self._peak),
            )
        if raw_kw is not None:
            ev.quality.add(now, raw_kw, ev.committed_kw)

    _peak: float = 0.0

    async def cycle(
        self,
        ev: EventControl,
        now: float,
        load_kw: float | None,
        peak_kw: float,
        raw_kw: float | None = None,
    ) -> Decision:
        """One control cycle for a shedding event, applied. Returns the first decision taken."""
        if not self._learned_loaded:
            await self.load_learned()
        self._peak = peak_kw
        self.run = self.last = ev
        dt = 0.0 if ev.last_cycle is None else now - ev.last_cycle
        ev.last_cycle = now
        self.observe(ev, now, raw_kw if raw_kw is not None else load_kw)
        realized = None if load_kw is None else ev.baseline_kw - load_kw
        ev.realized_kw = realized
        if realized is None:
            ev.degraded_s += dt
            if not ev.degraded:
                ev.degraded = True
                log.warning("event_id=%s event=degraded reason=meter_unknown action=hold", ev.event_id)
        elif ev.degraded:
            ev.degraded = False
            log.warning("event_id=%s event=recovered degraded_s=%.0f", ev.event_id, ev.degraded_s)
        if ev.last_committed is not None and abs(ev.committed_kw - ev.last_committed) > 1e-6:
            log.info(
                "event_id=%s event=target_changed from_kw=%.1f to_kw=%.1f",
                ev.event_id,
                ev.last_committed,
                ev.committed_kw,
            )
            # A new target is acted on at once, not after the anti-flap settle time, and reached
            # the way the event's first target was: fast actuators first, whatever their stage.
            ev.last_add = ev.last_release = None
            ev.retargeting = True
        ev.last_committed = ev.committed_kw
        await self._learn(ev, now)
        # A step past its max_shed_s comes back whatever the band says.
        for a in list(ev.active):
            limit = a.step.action.max_shed_s
            if limit is not None and now - a.applied_at >= limit:
                await self._release(ev, a, now, f"max_shed_s {limit:g} s reached")
                return Decision("release", "max_shed_s reached", a.step)
        db = self.deadband_kw(peak_kw)
        aim = aim_kw(ev.committed_kw, ev.band, db)
        if ev.retargeting and realized is not None and realized >= aim - db:
            ev.retargeting = False  # reached (or passed) on the meter: strategy order again
        predicted = None if realized is None else realized + ev.pending_kw(now)
        ev.predicted_kw = predicted
        cands = self.candidates(ev, now) if predicted is not None else []
        options = []
        for st in cands:
            kw = self.option_kw(st)
            if kw >= 0.5:
                options.append(Option(st, kw, st.traits.continuous, st.traits.fast))
        decisions = decide(
            now=now,
            predicted_kw=predicted,
            aim=aim,
            band=ev.band,
            deadband_kw=db,
            settle_s=self.cfg.settle_s,
            last_add=ev.last_add,
            last_release=ev.last_release,
            held=self._held(ev, now) if predicted is not None else [],
            options=options,
            urgent=ev.retargeting,
        )
        ev.last_decision = "; ".join(d.reason for d in decisions[:3])
        # A stage's adds go out together; the next stage's after them, so a later stage never
        # queues on a shared endpoint ahead of an earlier one's writes.
        stages: list[list[Decision]] = []
        for d in decisions:
            if d.action == "add" and d.step is not None:
                if stages and stages[-1][0].step is not None and stages[-1][0].step.stage == d.step.stage:
                    stages[-1].append(d)
                else:
                    stages.append([d])
        firsts = {id(group[0]): group for group in stages}
        for d in decisions:
            if d.step is None:
                continue
            if d.action == "add":
                group = firsts.get(id(d))
                if group is None:
                    continue
                if len(group) == 1:
                    await self._add(ev, d.step, now, load_kw, d.depth, d.kw)
                else:
                    await self._add_many(ev, group, now, load_kw)
            elif d.action == "release":
                hit = next((a for a in ev.active if a.step.id == d.step.id), None)
                if hit is not None:
                    await self._release(ev, hit, now, d.reason, d.kw)
            elif d.action == "adjust":
                hit = next((a for a in ev.active if a.step.id == d.step.id), None)
                if hit is not None:
                    await self._set_depth(ev, hit, now, d.depth, d.kw)
        return decisions[0]

    async def _learn(self, ev: EventControl, now: float) -> None:
        """Measure a step's effect on its own device once it has settled; blend into the learned kW."""
        for a in ev.active:
            if a.learn_at is None or now < a.learn_at or a.device_kw_before is None:
                continue
            a.learn_at = None
            now_kw = self._device_kw(a.step.device)
            if now_kw is None or a.depth <= 0.05:
                continue
            measured = max(0.0, a.device_kw_before - now_kw) / a.depth
            a.measured_kw = measured
            expected = a.step.expected_kw
            measured = min(max(measured, expected * LEARN_CLAMP[0]), expected * LEARN_CLAMP[1])
            prev = self.learned.get(a.step.id)
            self.learned[a.step.id] = (
                measured if prev is None else (1 - LEARN_ALPHA) * prev + LEARN_ALPHA * measured
            )
            self._learned_dirty = True
            log.debug(
                "event_id=%s step=%s event=learned kw=%.1f", ev.event_id, a.step.id, self.learned[a.step.id]
            )

    def _value_at(self, a: ActiveStep, depth: float) -> float | bool:
        if isinstance(a.full_value, bool) or a.full_value is None or not isinstance(a.original, (int, float)):
            if depth > 0 and a.full_value is not None:
                return a.full_value
            return a.original if a.original is not None else False
        v = a.original + depth * (a.full_value - a.original)
        return round(v, 1)

    def _prepare_add(
        self, step: Step, now: float, load_kw: float | None, depth: float, original: float | None
    ) -> tuple[ActiveStep, float | bool]:
        """The active step and the value to write for adding `step` at `depth` (NotApplicable if none)."""
        full = shed_value(step, self.devices[step.device], original)
        a = ActiveStep(step, now, full, load_kw, original=original, full_value=full)
        value = self._value_at(a, depth) if a.continuous and depth < 1.0 else full
        if a.continuous and depth < 1.0:
            a.depth = depth
        a.value = value
        return a, value

    def _skip(self, ev: EventControl, step: Step, exc: Exception) -> None:
        # One failing step never stops the others: skip it for this event.
        ev.skipped[step.id] = str(exc)
        ev.steps = [s for s in ev.steps if s.id != step.id]
        log.warning("event_id=%s step=%s action=skip reason=%r", ev.event_id, step.id, str(exc))

    async def _added(self, ev: EventControl, a: ActiveStep, now: float, kw: float) -> None:
        step = a.step
        a.device_kw_before = self._device_kw(step.device)
        a.changed_at = now
        tau = self.tau(step)
        a.learn_at = now + 3 * tau
        ev.active.append(a)
        ev.pending.append(Pending(now, kw or step.estimate_kw * a.depth, tau))
        ev.last_change = ev.last_add = now
        ev.actuations += 1
        if self.on_change:
            await self.on_change(ev.event_id, f"added {step.id}")

    async def _add(
        self,
        ev: EventControl,
        step: Step,
        now: float,
        load_kw: float | None,
        depth: float = 1.0,
        kw: float = 0.0,
    ) -> None:
        try:
            original = await self.actuator.original(step.device, step.role)
            a, value = self._prepare_add(step, now, load_kw, depth, original)
            if not ev.test_event:
                await self.actuator.shed(step.device, step.role, value, ev.event_id, step.id)
        except (NotApplicable, LimitViolation, WriteError) as exc:
            self._skip(ev, step, exc)
            return
        await self._added(ev, a, now, kw)

    async def _add_many(
        self, ev: EventControl, adds: list[Decision], now: float, load_kw: float | None
    ) -> None:
        """Several adds of one cycle (a stage entering) at once (Actuator.shed_many): each device
        is journalled and written as soon as its original is read, so no device waits for the
        slowest one's round trip. A step's value is worked out from its own original.

        A device the database could not journal is not written and its step stays a candidate:
        the others are booked, then the error holds the cycle (the control loop tries again)."""
        prepared: dict[int, ActiveStep] = {}

        def value_of(i: int, d: Decision) -> Callable[[float | None], float | bool]:
            assert d.step is not None
            step = d.step

            def work_out(original: float | None) -> float | bool:
                a, value = self._prepare_add(step, now, load_kw, d.depth, original)
                prepared[i] = a
                return value

            return work_out

        sheds = [
            Shed(d.step.device, d.step.role, value_of(i, d), ev.event_id, d.step.id)
            for i, d in enumerate(adds)
            if d.step is not None
        ]
        if ev.test_event:
            # Nothing is written: each value is worked out from the original all the same.
            results: list[float | BaseException] = []
            originals = await self.actuator.originals([(s.device, s.role) for s in sheds])
            for s, original in zip(sheds, originals, strict=True):
                try:
                    s.value_for(original)
                    results.append(0.0)
                except NotApplicable as exc:
                    results.append(exc)
        else:
            results = await self.actuator.shed_many(sheds)
        held: BaseException | None = None
        for i, (d, r) in enumerate(zip(adds, results, strict=True)):
            assert d.step is not None
            if isinstance(r, REFUSALS):
                self._skip(ev, d.step, r)
            elif isinstance(r, BaseException):
                held = held or r
            else:
                await self._added(ev, prepared[i], now, d.kw)
        if held is not None:
            raise held

    def _adjust_log(self, event_id: str, step_id: str) -> FailureLog:
        key = f"{event_id}/{step_id}"
        fl = self._adjust_failures.get(key)
        if fl is None:
            fl = self._adjust_failures[key] = FailureLog(log, "adjust", event_id=event_id, step=step_id)
        return fl

    async def _set_depth(self, ev: EventControl, a: ActiveStep, now: float, depth: float, kw: float) -> bool:
        """Move a partly shed step to `depth` (continuous trim, or an HVAC restore step)."""
        value = self._value_at(a, depth)
        if value == a.value:
            return False
        try:
            if not ev.test_event:
                await self.actuator.shed(a.step.device, a.step.role, value, ev.event_id, a.step.id)
        except (LimitViolation, WriteError) as exc:
            # A trim retried every cycle must not flood the journal: first failure loud, repeats quiet.
            self._adjust_log(ev.event_id, a.step.id).failed(str(exc))
            a.changed_at = now
            return False
        self._adjust_log(ev.event_id, a.step.id).ok()
        a.value = value
        a.depth = depth
        a.changed_at = now
        ev.pending.append(Pending(now, kw, self.tau(a.step)))
        ev.last_change = now
        ev.actuations += 1
        return True

    async def _release(
        self, ev: EventControl, a: ActiveStep, now: float, reason: str, kw: float | None = None
    ) -> None:
        if not ev.test_event:
            await self.actuator.restore(a.step.device, a.step.role, reason, ev.event_id)
        if a in ev.active:
            ev.active.remove(a)
        ev.released_at[a.step.id] = now
        ev.pending.append(Pending(now, -(kw if kw is not None else self.live_kw(a)), self.tau(a.step)))
        ev.last_change = ev.last_release = now
        ev.actuations += 1
        if self.on_change:
            await self.on_change(ev.event_id, f"released {a.step.id}")

    # -- restore -----------------------------------------------------------------------------

    def _restore_order(self, ev: EventControl) -> list[ActiveStep]:
        """Discrete steps last-in-first-out, then the continuous ones, which absorb the rebound meanwhile."""
        discrete = [a for a in reversed(ev.active) if not a.continuous]
        cont = [a for a in reversed(ev.active) if a.continuous]
        return discrete + cont

    def _hvac_increment(self, a: ActiveStep, pol: RestorePolicy) -> tuple[float, float]:
        """(new depth, rebound kW to expect) for walking an HVAC setpoint back one step."""
        if (
            pol.hvac_release_step_c <= 0
            or not isinstance(a.original, (int, float))
            or not isinstance(a.full_value, (int, float))
            or isinstance(a.full_value, bool)
        ):
            return 0.0, self._hvac_headroom(a)
        span = abs(float(a.full_value) - float(a.original))
        if span <= 0:
            return 0.0, 0.0
        new = max(0.0, a.depth - pol.hvac_release_step_c / span)
        if new < 0.02:
            new = 0.0
        # A unit under proportional control answers a 1 K cut with up to full power: assume it.
        rated = self.devices[a.step.device].config.rated_kw or a.step.estimate_kw
        return new, min(self._hvac_headroom(a), rated * (a.depth - new) * span)

    def _hvac_headroom(self, a: ActiveStep) -> float:
        rated = self.devices[a.step.device].config.rated_kw
        now_kw = self._device_kw(a.step.device)
        if rated is None or now_kw is None:
            return a.step.estimate_kw
        return max(0.0, rated - now_kw)

    async def restore_next(
        self, ev: EventControl, now: float, load_kw: float | None, recovery_deadline: float
    ) -> bool:
        """One restore move, if the stagger interval and the rebound cap allow. True when all are back."""
        self.run = self.last = ev
        if not ev.active:
            return True
        pol = ev.restore_policy
        db = self.deadband_kw(self._peak or 0.0)
        capped = pol.rebound_cap_factor is not None and now < recovery_deadline
        cap = ev.baseline_kw * (pol.rebound_cap_factor or 1.0) - db if capped else math.inf
        predicted_load = None if load_kw is None else load_kw - ev.pending_kw(now)
        order = self._restore_order(ev)
        if capped and predicted_load is None:
            ev.last_decision = "restore held: meter unknown"
            return False
        # The continuous actuators still shed keep the site under the cap while HVAC recovers.
        if capped and predicted_load is not None and predicted_load > cap:
            over = predicted_load - cap
            for a in ev.active:
                if a.continuous and a.depth < 1.0 and now - a.changed_at >= TRIM_INTERVAL_S:
                    full = max(self.learned.get(a.step.id, a.step.estimate_kw), 1e-6)
                    depth = min(1.0, a.depth + over / full)
                    add = (depth - a.depth) * full
                    if await self._set_depth(ev, a, now, depth, add):
                        over -= add
                if over <= 0:
                    break
            ev.last_decision = "restore held by the rebound cap"
            ev.rebound_held_s += self.cfg.period_s
            return False
        a = order[0]
        walk_back = a.step.traits.restore == "walk_back"
        min_off = getattr(a.step.action, "min_off_s", None)
        if min_off and now - a.applied_at < min_off:
            # A relay's minimum off time protects the machine (compressors): it outranks the stagger.
            ev.last_decision = f"restore of {a.step.id} waits for its minimum off time"
            return False
        if not self.devices[a.step.device].health.available:
            # No stepping back a device that does not answer: one restore attempt (the journal
            # keeps the entry open if it fails, and shutdown or the next start retries it).
            await self._release(ev, a, now, "event ended (device unreachable)", 0.0)
            return not ev.active
        if ev.restore_steps is None:
            ev.restore_steps = len(ev.active)
        interval = pol.interval_s(ev.restore_steps)
        if walk_back and pol.hvac_release_step_c > 0:
            interval = max(interval, pol.hvac_release_interval_s)
        if ev.last_change is not None and now - ev.last_change < interval:
            return False
        if walk_back:
            depth, inc = self._hvac_increment(a, pol)
        elif a.continuous and pol.continuous_ramp_s > 0:
            depth = max(0.0, a.depth - max(0.1, interval / pol.continuous_ramp_s))
            depth = 0.0 if depth < 0.05 else depth
            inc = self.live_kw(a) * (1 - depth / a.depth if a.depth > 0 else 1.0)
        else:
            depth, inc = 0.0, self.live_kw(a)
        if not capped:
            depth = 0.0 if not walk_back else depth
        if capped and predicted_load is not None and predicted_load + inc > cap:
            ev.last_decision = "restore held by the rebound cap"
            ev.rebound_held_s += self.cfg.period_s
            return False
        if depth <= 0.0:
            await self._release(ev, a, now, "event ended", inc)
        else:
            await self._set_depth(ev, a, now, depth, -inc)
        ev.last_decision = f"restoring {a.step.id} to depth {depth:.2f}"
        if not ev.active:
            await self.save_learned()
        return not ev.active

    async def release_all(self, ev: EventControl, now: float, reason: str) -> None:
        """Immediate restore of everything (shutdown, cancellation)."""
        for a in list(reversed(ev.active)):
            await self._release(ev, a, now, reason)
        await self.save_learned()
