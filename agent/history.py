"""Metering history: load series from the store's aggregates, their gaps, and retention.

The baselines look back weeks (Jiangsu: 5 working days, Beijing: 10 typical
days, the regression: 60 days), so they read the 1-minute aggregates, never
the poll-rate rows (50x less to read, PERFORMANCE-NOTES.md), always with
explicit time ranges on the table's key. A minute without any reading is a
gap (`None`), never a guess: the baseline rules skip such days and say so.

Retention keeps disk use bounded: poll-rate rows for `raw_retention_s`, the
site meter's 1-minute means for 13 months and more (the rules look back up
to a year for the same season), other devices' 1-minute means for weeks, and
15-minute means of everything for two years. `prune()` runs from the
daemon's flush loop once an hour.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from agent.baseline import LoadSeries, Period
from agent.config import StorageConfig
from agent.settlement import Gap
from agent.store import Store

log = logging.getLogger("dr_agent")

DAY_S = 86400.0
#: How far back the settlement reads history: the longest look-back of any method
#: (regression: 60 days) plus weekends and skipped days.
LOOKBACK_DAYS = 70
#: Prune at most this often, s.
PRUNE_EVERY_S = 3600.0
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
    from agent.events import DrEvent

    out: list[Period] = []
    for row in rows:
        rt = row.get("runtime") or {}
        if row["event_id"] == exclude_event or row.get("opt") != "in" or rt.get("control_start") is None:
            continue
        try:
            ev = DrEvent.model_validate(row["payload"])
        except Exception:  # a row this version cannot read ran no control we know of
            continue
        start = float(rt["control_start"])
        if start >= before:
            continue
        end = ev.end_ts if rt.get("ended_ts") is None else min(ev.end_ts, float(rt["ended_ts"]))
        rec = ev.recovery_s if ev.recovery_s > 0 else recovery_s(ev.program)
        out.append((start, end + rec))
    return out


def prune(store: Store, storage: StorageConfig, devices: Iterable[str], meter: str, now: float) -> int:
    """Apply the retention of `storage` to every device; returns the rows deleted."""
    n = 0
    for dev in devices:
        minute_days = (
            storage.meter_minute_retention_days if dev == meter else storage.device_minute_retention_days
        )
        n += store.prune_device(
            dev,
            raw_before=now - storage.raw_retention_s,
            minute_before=now - minute_days * DAY_S,
            quarter_before=now - storage.quarter_hour_retention_days * DAY_S,
        )
    return n


class Pruner:
    """Runs `prune` at most once per PRUNE_EVERY_S (called from the daemon's flush loop)."""

    def __init__(self) -> None:
        self.last: float | None = None

    def due(self, now: float) -> bool:
        return self.last is None or now - self.last >= PRUNE_EVERY_S

    def run(
        self, store: Store, storage: StorageConfig, devices: Iterable[str], meter: str, now: float
    ) -> int:
        self.last = now
        n = prune(store, storage, devices, meter, now)
        if n:
            log.info("event=history_pruned rows=%d", n)
        return n
