"""Metering history: load series from the store's aggregates, their gaps, and retention
within a disk budget.

The baselines look back weeks (Jiangsu: 5 working days, Beijing: 10 typical
days, the regression: 60 days), so they read the 1-minute aggregates, never
the poll-rate rows (50x less to read, PERFORMANCE-NOTES.md), always with
explicit time ranges on the table's key. A minute without any reading is a
gap (`None`), never a guess: the baseline rules skip such days and say so.

What is written (`ReadingsBuffer`, fed by the daemon's flush every
FLUSH_INTERVAL_S): the site meter and the outdoor temperature at poll rate
(the settlement and the real-time baseline read them); every other device's
power only when it moved beyond `storage.device_deadband_pct` (or every
HEARTBEAT_S); 1-minute means of every key once their minute is over. The
meter's (and the temperature's) go at the next flush to `readings_1m`, keyed by
device (the baselines read weeks of them), folded into the 15-minute means in
the same transaction. The others' are batched every AGGREGATE_EVERY_S into
`readings_1m_others`, keyed by time, so a batch fills a few pages at the
table's end rather than one page per device; `prune` folds their whole quarters
into the 15-minute means once an hour (one page per device an hour, not per
batch): 1,000 devices write under 1 GB a day (docs/performance.md).

Retention keeps disk use inside `storage.max_mb`: `plan_retention` shortens
the configured retention to fit the budget (other devices' 1-minute means
first, then the 15-minute means, never the meter's 1-minute means below what
the baseline rules look back), `prune()` applies it once an hour (to every
key the tables hold, so removed devices age out too), and `enforce_budget`
is the backstop when the database still reaches its budget: the oldest
history goes first, a chunk at a time, never a settlement, an undelivered
outbox row or an open journal row.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.config.model import StorageConfig
from agent.platform.store import Store
from agent.settlement.baseline import LoadSeries, Period
from agent.settlement.formula import Gap

log = logging.getLogger("dr_agent")

DAY_S = 86400.0
#: How far back the settlement reads history: the longest look-back of any method
#: (regression: 60 days) plus weekends and skipped days.
LOOKBACK_DAYS = 70
#: Prune at most this often, s.
PRUNE_EVERY_S = 3600.0
#: A device's power is stored at least this often even when it does not move, s.
HEARTBEAT_S = 900.0
#: Other devices' closed 1-minute means are written in batches this far apart, s.
AGGREGATE_EVERY_S = 600.0
#: Other devices' 1-minute means are folded into 15-minute ones for the quarters that ended
#: this long ago: a minute reaches the database up to a batch and a minute after it ends, s.
ROLLUP_LAG_S = AGGREGATE_EVERY_S + 120.0
#: Delivered outbox rows are kept this long (a day of what was sent, for diagnosis), s.
OUTBOX_KEEP_S = DAY_S
#: Closed journal rows and audit lines are kept this long, s.
BOOKKEEPING_KEEP_S = 400 * DAY_S
#: Bytes a row costs on disk by table, B-tree pages included (bench/storage.py measures them
#: with dbstat on SQLite 3.40): what `plan_retention` sizes the tiers from.
ROW_BYTES = {"readings": 35.0, "readings_1m": 56.0, "readings_15m": 60.0}
#: The share of other devices' readings the deadband keeps at poll rate, as planned (a device
#: that moves all the time keeps more: the budget's backstop takes those rows first).
DEVICE_RAW_SHARE = 0.05
#: The share of the budget the planned history may fill; the rest is the journal, events,
#: settlements, the outbox, the WAL and the estimate's error.
PLAN_SHARE = 0.75
#: `enforce_budget` frees down to this share of the budget once it is reached.
ENFORCE_TO = 0.9
#: The series key outdoor temperature (°C) is stored under, beside the devices' kW
#: ('@' cannot start a device name, so it never collides with one).
TEMPERATURE_KEY = "@outdoor_temp_c"


def load_series(store: Store, device: str, t0: float, t1: float, step_s: int = 60) -> LoadSeries:
    """The mean kW of `device` per `step_s` interval (60: 1-minute, 900: 15-minute aggregates) over
    [t0, t1), widened to whole intervals; intervals without readings are `None` (gaps)."""
    if step_s not in (60, 900):
        raise ValueError(f"step_s must be 60 or 900 (the stored aggregates), got {step_s}")
    a = math.floor(t0 / step_s) * step_s
    b = math.ceil(t1 / step_s) * step_s
    values: list[float | None] = [None] * int((b - a) // step_s)
    rows = store.minute_means(device, a, b) if step_s == 60 else store.quarter_means(device, a, b)
    first = int(a // step_s)
    for idx, kw in rows:
        values[idx - first] = kw
    return LoadSeries(float(a), step_s, values)


def series_gaps(series: LoadSeries, t0: float | None = None, t1: float | None = None) -> list[Gap]:
    """Runs of missing intervals of `series` inside [t0, t1) (default: all of it)."""
    lo = series.start if t0 is None else max(t0, series.start)
    hi = series.end if t1 is None else min(t1, series.end)
    out: list[Gap] = []
    run: float | None = None
    for i, v in enumerate(series.values):
        ts = series.time_at(i)
        if ts + series.step_s <= lo or ts >= hi:
            continue
        if v is None and run is None:
            run = max(ts, lo)
        elif v is not None and run is not None:
            out.append(Gap(run, ts))
            run = None
    if run is not None:
        out.append(Gap(run, hi))
    return out


def _stored_span(payload: Any) -> tuple[float, float, str] | None:
    """(end, recovery_s, program) of a stored event payload (validated when it arrived), or None
    if it cannot be read: the fields and defaults of `agent.events.model.DrEvent`."""
    try:
        start = datetime.fromisoformat(str(payload["start"]).upper())
        if start.utcoffset() is None:
            return None
        duration = float(payload["duration_s"])
        recovery = float(payload.get("recovery_s", 0.0))
        program = str(payload.get("program", "contracted"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not (math.isfinite(duration) and duration > 0 and math.isfinite(recovery) and recovery >= 0):
        return None
    return start.timestamp() + duration, recovery, program


def control_periods(
    rows: Iterable[dict[str, Any]],
    before: float,
    exclude_event: str,
    recovery_s: Callable[[str], float],
) -> list[Period]:
    """Earlier events' control and recovery periods, from the store's event rows: the real-time
    baseline skips them (the load then was curtailed or rebounding, not normal).

    A period runs from the event's control start (kept in its runtime: control ran) to its end, or
    its early stop, plus its recovery window: the event's own, else `recovery_s(program)`, the
    strategy's rebound window. Only periods starting before `before`; opted-out events never ran.
    """
    out: list[Period] = []
    for row in rows:
        rt = row.get("runtime") or {}
        if row["event_id"] == exclude_event or row.get("opt") != "in" or rt.get("control_start") is None:
            continue
        span = _stored_span(row["payload"])
        if span is None:  # a row this version cannot read ran no control we know of
            continue
        period = control_period(rt, span, recovery_s)
        if period is not None and period[0] < before:
            out.append(period)
    return out


def control_period(
    runtime: dict[str, Any], span: tuple[float, float, str], recovery_s: Callable[[str], float]
) -> Period | None:
    """One event's control and recovery period (`control_periods`) from its runtime and its
    (end, recovery_s, program); None if it ran no control."""
    if runtime.get("control_start") is None:
        return None
    ev_end, ev_recovery, program = span
    end = ev_end if runtime.get("ended_ts") is None else min(ev_end, float(runtime["ended_ts"]))
    rec = ev_recovery if ev_recovery > 0 else recovery_s(program)
    return float(runtime["control_start"]), end + rec


def prune(store: Store, storage: StorageConfig, devices: Iterable[str], meter: str, now: float) -> int:
    """Apply the retention planned for the budget (`plan_retention`) to every key the tables
    hold, configured or not (a removed device's rows age out like any other), and drop old
    bookkeeping (delivered outbox rows, closed journal rows, audit lines). Other devices'
    1-minute means of whole quarters are first folded into the 15-minute means (never pruned
    before they are). Returns rows deleted."""
    full = {meter, TEMPERATURE_KEY}
    r = plan_retention(storage, max(0, len([d for d in devices if d not in full])))
    store.rollup_quarters(now - ROLLUP_LAG_S)
    n = store.prune_raw(now - r.raw_s, full)
    n += store.prune_raw(now - r.device_raw_s, full, others=True)
    n += store.prune_others_minutes(now - r.device_minute_days * DAY_S)
    for k in store.keys("readings_1m"):
        days = r.meter_minute_days if k in full else r.device_minute_days
        n += store.prune_aggregates("readings_1m", k, now - days * DAY_S)
    for k in store.keys("readings_15m"):
        days = max(r.meter_minute_days, r.quarter_days) if k in full else r.quarter_days
        n += store.prune_aggregates("readings_15m", k, now - days * DAY_S)
    n += store.prune_bookkeeping(now - OUTBOX_KEEP_S, now - BOOKKEEPING_KEEP_S)
    return n


#: What `enforce_budget` deletes, in this order, the oldest day of it at a time: (table, the
#: full-rate keys (meter, temperature) or the others, how recent it may go, s).
BUDGET_ORDER: tuple[tuple[str, bool, float], ...] = (
    ("readings", False, 0.0),
    ("readings_1m_others", False, 0.0),
    ("readings_1m", False, 0.0),
    ("readings_15m", False, 0.0),
    # A day of the meter's poll-rate rows stays: an event ending now is settled from them.
    ("readings", True, DAY_S),
    ("readings_15m", True, LOOKBACK_DAYS * DAY_S),
    # The shortest look-back of the day-based rules (5 working days, with a weekend).
    ("readings_1m", True, 7 * DAY_S),
)


def enforce_budget(store: Store, storage: StorageConfig, meter: str, now: float) -> tuple[int, str | None]:
    """Once the database reaches `storage.max_mb`, delete one chunk of the oldest history
    (BUDGET_ORDER, a day at a time) while it is above ENFORCE_TO of it; call again until it
    returns 0. Returns (rows deleted, what). Never a settlement, an undelivered outbox row, an
    open journal row, an event, nor the floors in BUDGET_ORDER: (0, why) when only those are left."""
    limit = storage.max_mb * 1024 * 1024
    used = store.usage_bytes()
    if used <= limit * ENFORCE_TO:
        return 0, None
    full = {meter, TEMPERATURE_KEY}
    for table, full_rate, keep_s in BUDGET_ORDER:
        if table == "readings" or table == "readings_1m_others":
            first = (
                store.oldest_raw(full, others=not full_rate)
                if table == "readings"
                else store.oldest_others_minute()
            )
            olds = [] if first is None else [first]
        else:
            keys = [k for k in store.keys(table) if (k in full) == full_rate]
            olds = [t for k in keys if (t := store.oldest(table, k)) is not None]
        if not olds:
            continue
        cut = min(min(olds) + DAY_S, now - keep_s)
        if cut <= min(olds):
            continue
        if table == "readings":
            n = store.prune_raw(cut, full, others=not full_rate)
        elif table == "readings_1m_others":
            n = store.prune_others_minutes(cut)
        else:
            n = sum(store.prune_aggregates(table, k, cut) for k in keys)
        if n:
            return n, f"{table} of {'the meter' if full_rate else 'other devices'} before {cut:.0f}"
    return 0, f"only protected data left: {used / 2**20:.0f} MB of a {storage.max_mb:g} MB budget"


class Pruner:
    """Runs `prune` at most once per PRUNE_EVERY_S and the budget's backstop after every flush
    (both from the daemon's flush loop), saying once when the budget is reached."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.at_budget = False

    def due(self, now: float) -> bool:
        return self.last is None or now - self.last >= PRUNE_EVERY_S

    def replan(self) -> None:
        """The devices changed (a config reload): plan and prune at the next flush, not up to
        an hour later, so an added device's share of the budget is taken from the start."""
        self.last = None

    def run(
        self, store: Store, storage: StorageConfig, devices: Iterable[str], meter: str, now: float
    ) -> int:
        self.last = now
        n = prune(store, storage, devices, meter, now)
        if n:
            log.info("event=history_pruned rows=%d", n)
        return n

    def budget_step(self, store: Store, storage: StorageConfig, meter: str, now: float) -> int:
        """One chunk of `enforce_budget`; returns the rows deleted (0: within the budget, or stuck)."""
        n, what = enforce_budget(store, storage, meter, now)
        if n and not self.at_budget:
            self.at_budget = True
            log.warning(
                "event=storage_budget_reached budget_mb=%g action=oldest_history_deleted first=%r",
                storage.max_mb,
                what,
            )
        elif not n and what and not self.at_budget:
            self.at_budget = True
            log.error("event=storage_budget_exceeded budget_mb=%g reason=%r", storage.max_mb, what)
        elif what is None and self.at_budget:
            self.at_budget = False
            log.info("event=storage_within_budget budget_mb=%g", storage.max_mb)
        return n


def rule_lookback_days() -> dict[str, float]:
    """How far back each baseline rule reads the meter's 1-minute means, days (its
    `max_lookback_days`, else its `days`, doubled for the days it may skip); the real-time
    rule reads poll-rate rows, minutes before the event."""
    from agent.settlement.baseline import METHODS, REALTIME_LOOKBACK_S

    out: dict[str, float] = {}
    for name, fn in METHODS.items():
        params = inspect.signature(fn).parameters
        if name.startswith("realtime"):
            out[name] = REALTIME_LOOKBACK_S / DAY_S
        elif "max_lookback_days" in params:
            out[name] = float(params["max_lookback_days"].default)
        elif "days" in params:
            out[name] = 2.0 * float(params["days"].default)
    return out


@dataclass(frozen=True)
class Retention:
    """How long each tier is kept, as planned for the budget (`plan_retention`); the site meter's
    (and the outdoor temperature's) 15-minute means are kept as long as its 1-minute ones."""

    raw_s: float
    device_raw_s: float
    meter_minute_days: float
    device_minute_days: float
    quarter_days: float
    #: The bytes this plan is expected to fill at its steady state.
    planned_bytes: float
    #: What was shortened to fit the budget, in the order it was (empty: the configured fits).
    shortened: tuple[str, ...] = ()


#: What `plan_retention` shortens, in this order, and how far at most: other devices' 15-minute
#: means to 13 months (a year's season), their 1-minute means to a week, then both further,
#: then their poll-rate rows; the meter's history last.
PLAN_CUTS: tuple[tuple[str, float], ...] = (
    ("quarter_days", 400.0),
    ("device_minute_days", 7.0),
    ("quarter_days", 90.0),
    ("device_minute_days", 1.0),
    ("quarter_days", 7.0),
    ("device_raw_s", 3600.0),
    ("raw_s", DAY_S),
    ("meter_minute_days", float(LOOKBACK_DAYS)),
)


def planned_bytes(r: dict[str, float], devices: int) -> float:
    """The bytes retention `r` fills with the meter and `devices` other series."""
    return (
        (r["raw_s"] + devices * DEVICE_RAW_SHARE * r["device_raw_s"]) * ROW_BYTES["readings"]
        + (r["meter_minute_days"] + devices * r["device_minute_days"]) * 1440 * ROW_BYTES["readings_1m"]
        + (max(r["meter_minute_days"], r["quarter_days"]) + devices * r["quarter_days"])
        * 96
        * ROW_BYTES["readings_15m"]
    )


def plan_retention(storage: StorageConfig, devices: int) -> Retention:
    """The configured retention, shortened to fit PLAN_SHARE of `storage.max_mb` with the meter
    and `devices` other series (PLAN_CUTS: other devices' history first, the meter's last, never
    its 1-minute means below the longest baseline look-back). Other devices' poll-rate rows are
    counted at DEVICE_RAW_SHARE of the poll rate."""
    budget = storage.max_mb * 1024 * 1024 * PLAN_SHARE
    r = {
        "raw_s": storage.raw_retention_s,
        "device_raw_s": storage.raw_retention_s,
        "meter_minute_days": storage.meter_minute_retention_days,
        "device_minute_days": storage.device_minute_retention_days,
        "quarter_days": storage.quarter_hour_retention_days,
    }
    shortened: list[str] = []
    for name, floor in PLAN_CUTS:
        over = planned_bytes(r, devices) - budget
        if over <= 0:
            break
        if r[name] <= floor:
            continue
        # The bytes one unit of this retention costs; shorten it by what is over, to its floor.
        one = planned_bytes({**r, name: r[name] + 1}, devices) - planned_bytes(r, devices)
        r[name] = max(floor, r[name] - over / one) if one > 0 else r[name]
        if name not in shortened:
            shortened.append(name)
    return Retention(
        r["raw_s"],
        r["device_raw_s"],
        r["meter_minute_days"],
        r["device_minute_days"],
        r["quarter_days"],
        planned_bytes(r, devices),
        tuple(shortened),
    )


@dataclass
class _Minute:
    minute: int
    kw_sum: float
    n: int
    lo: float
    hi: float


@dataclass
class ReadingsBuffer:
    """Readings on their way to the database (see the module docstring for what is kept)."""

    #: Keys stored at poll rate: the site meter, the outdoor temperature.
    full_rate: Collection[str]
    #: Per device, the move (kW) that is worth a poll-rate row.
    deadband_kw: Mapping[str, float]
    default_deadband_kw: float = 0.1
    heartbeat_s: float = HEARTBEAT_S
    aggregate_every_s: float = AGGREGATE_EVERY_S
    raw: list[tuple[str, float, float]] = field(default_factory=list)
    _open: dict[str, _Minute] = field(default_factory=dict)
    _closed_full: list[tuple[str, int, float, int, float, float]] = field(default_factory=list)
    _closed: list[tuple[str, int, float, int, float, float]] = field(default_factory=list)
    _kept: dict[str, tuple[float, float]] = field(default_factory=dict)
    _last_batch: float | None = None

    def add(self, device: str, ts: float, kw: float) -> None:
        if device in self.full_rate:
            self.raw.append((device, ts, kw))
        else:
            last = self._kept.get(device)
            band = self.deadband_kw.get(device, self.default_deadband_kw)
            if last is None or abs(kw - last[1]) > band or ts - last[0] >= self.heartbeat_s:
                self.raw.append((device, ts, kw))
                self._kept[device] = (ts, kw)
        m = int(ts // 60)
        o = self._open.get(device)
        if o is not None and o.minute != m:
            self._close(device, o)
            o = None
        if o is None:
            self._open[device] = _Minute(m, kw, 1, kw, kw)
        else:
            o.kw_sum += kw
            o.n += 1
            o.lo = min(o.lo, kw)
            o.hi = max(o.hi, kw)

    def _close(self, device: str, o: _Minute) -> None:
        row = (device, o.minute, o.kw_sum, o.n, o.lo, o.hi)
        (self._closed_full if device in self.full_rate else self._closed).append(row)

    def take(
        self, now: float, final: bool = False
    ) -> tuple[list[tuple[str, float, float]], list[tuple[str, int, float, int, float, float]]]:
        """(poll-rate rows, closed 1-minute means) to write now; `final` (a stop, a settlement)
        closes every open minute too (a minute split so is added to when its rest comes)."""
        if final:
            for dev, o in self._open.items():
                self._close(dev, o)
            self._open.clear()
        raw, self.raw = self.raw, []
        minutes, self._closed_full = self._closed_full, []
        if self._last_batch is None:
            self._last_batch = now
        if final or now - self._last_batch >= self.aggregate_every_s:
            minutes += self._closed
            self._closed = []
            self._last_batch = now
        return raw, minutes

    def put_back(
        self,
        raw: list[tuple[str, float, float]],
        minutes: list[tuple[str, int, float, int, float, float]],
        limit: int,
    ) -> int:
        """A batch the database refused, kept for the next flush (at most `limit` poll-rate rows:
        the oldest go first). Returns the rows dropped."""
        keep = (raw + self.raw)[-limit:]
        dropped = len(raw) + len(self.raw) - len(keep)
        self.raw = keep
        self._closed_full = minutes + self._closed_full
        return dropped

    def pending(self) -> int:
        return len(self.raw) + len(self._closed) + len(self._closed_full)

    def reconfigure(self, full_rate: Collection[str], deadband_kw: Mapping[str, float]) -> list[str]:
        """New keys and deadbands (a config reload). A key in neither (a removed device) has its
        open minute closed, to be written with the next batch, and its last kept value forgotten;
        a device whose band changed compares its next reading with the new band. Returns the
        keys whose deadband changed, was added or went away."""
        changed = sorted(
            k for k in {*self.deadband_kw, *deadband_kw} if self.deadband_kw.get(k) != deadband_kw.get(k)
        )
        full, bands = set(full_rate), dict(deadband_kw)
        self.full_rate, self.deadband_kw = full, bands
        for key in {*self._open, *self._kept} - full - bands.keys():
            if key in self._open:
                self._close(key, self._open.pop(key))
            self._kept.pop(key, None)
        return changed


def deadbands(devices: Iterable[Any], pct: float) -> dict[str, float]:
    """Each device's deadband, kW: `pct` of its rated_kw, 0.1 kW without a rating (0: none)."""
    if pct <= 0:
        return {d.name: -1.0 for d in devices}
    return {d.name: (d.rated_kw * pct / 100 if d.rated_kw else 0.1) for d in devices}
