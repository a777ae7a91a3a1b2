"""Accuracy of the baseline methods on metered load that no one here made.

Every eligible working day of each dataset is a pseudo-event over 14:00–16:00
local time. Nothing was curtailed on those days, so the right baseline is the
metered load itself: a method's error is its baseline minus the meter.
OpenEEmeter's CalTRACK hourly DR model runs on the same days as a peer under
the name ``caltrack``.

Datasets (installed with ``pip install -e '.[bench]'``, read offline):

* ``uk-sample-{0,1,2}``: the hourly UK electricity samples shipped in eemeter
  (kWh per hour = mean kW, UTC timestamps) with their hourly °C series.
* ``taylor``: half-hourly England & Wales demand (MW), 5 Jun – 27 Aug 2000,
  from ``pmdarima.datasets.load_taylor()``, which has no timestamps: they are
  built from the documented start, Monday 5 June 2000 00:00 local time,
  each value taken as the half hour starting there (no DST change inside).

Usage: ``python bench/baseline_accuracy.py [--json] [--datasets NAME ...] [--variants]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import statistics
import sys
import time as _time
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

# One BLAS thread per process: the pool already uses every core, and spinning
# BLAS threads fighting over 2 cores made the run several times slower.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.baseline import METHODS, EventWindow, LoadSeries, regression
from agent.calendar import Calendar

TZ = "Europe/London"
EVENT_START, EVENT_END = time(14), time(16)
CALTRACK_FIT_DAYS = 90
PEAK_SHARE = 0.05  # the smallest contracted response in the 5–20 % band

# England & Wales bank holidays in the years the datasets cover.
BANK_HOLIDAYS = frozenset(
    date.fromisoformat(d)
    for d in (
        "2012-01-02 2012-04-06 2012-04-09 2012-05-07 2012-06-04 2012-06-05 2012-08-27 "
        "2012-12-25 2012-12-26 2013-01-01 2013-03-29 2013-04-01 2013-05-06 2013-05-27 "
        "2013-08-26 2013-12-25 2013-12-26 2014-01-01 2014-04-18 2014-04-21 2014-05-05 "
        "2014-05-26 2014-08-25 2014-12-25 2014-12-26 2020-01-01 2020-04-10 2020-04-13 "
        "2020-05-08 2020-05-25 2020-08-31 2020-12-25 2020-12-28 2021-01-01 2021-04-02 "
        "2021-04-05 2021-05-03 2021-05-31 2021-08-30 2021-12-27 2021-12-28 2022-01-03 "
        "2022-04-15 2022-04-18 2022-05-02 2022-06-02 2022-06-03 2022-08-29 2022-09-19 "
        "2022-12-26 2022-12-27 2000-05-29 2000-08-28"
    ).split()
)
CALENDAR = Calendar(tz=TZ, holidays=BANK_HOLIDAYS)
UK_SAMPLES = {f"uk-sample-{i}": f"uk-electricity-hdd-only-hourly-sample-{i}" for i in range(3)}
DATASETS = [*UK_SAMPLES, "taylor"]


@dataclass
class Dataset:
    name: str
    series: LoadSeries
    temperature: LoadSeries | None
    warmup_days: int
    note: str


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def _to_series(s: Any, step_s: int) -> LoadSeries:
    """A pandas Series on a UTC DatetimeIndex -> LoadSeries, gaps (NaN, missing rows) as None."""
    import pandas as pd

    s = s.sort_index()
    full = pd.date_range(s.index[0], s.index[-1], freq=f"{step_s}s")
    s = s[~s.index.duplicated()].reindex(full)
    vals = [None if (v is None or math.isnan(v)) else float(v) for v in s.to_numpy()]
    return LoadSeries(full[0].timestamp(), step_s, vals)


@cache
def _raw(name: str) -> tuple[Any, Any]:
    """(load, temperature or None) as pandas Series on a UTC index."""
    _quiet()
    import pandas as pd

    if name == "taylor":
        from pmdarima.datasets import load_taylor

        y = load_taylor()
        idx = pd.date_range("2000-06-05", periods=len(y), freq="30min", tz=TZ)
        return pd.Series(y, index=idx.tz_convert("UTC"), name="observed"), None
    from eemeter.eemeter.samples.load import load_sample

    meter, temp, _ = load_sample(UK_SAMPLES[name], tempF=False)
    load = meter["value"].rename("observed")
    temp = temp.rename("temperature")
    # sample-2's temperature file covers only part of its meter data: keep the overlap.
    lo, hi = max(load.index[0], temp.index[0]), min(load.index[-1], temp.index[-1])
    return load[lo:hi], temp[lo:hi]


@cache
def load_dataset(name: str) -> Dataset:
    load, temp = _raw(name)
    if name == "taylor":
        return Dataset(
            name,
            _to_series(load, 1800),
            None,
            warmup_days=28,
            note="half-hourly MW, no temperature; 28-day warm-up (84 days in all)",
        )
    return Dataset(
        name,
        _to_series(load, 3600),
        _to_series(temp, 3600),
        warmup_days=CALTRACK_FIT_DAYS,
        note="hourly kWh (= mean kW) with °C; 90-day warm-up",
    )


def event_days(ds: Dataset) -> list[date]:
    """Working days after the warm-up whose metered event window is complete."""
    cal = CALENDAR
    first = cal.local_date(ds.series.start) + timedelta(days=ds.warmup_days)
    last = cal.local_date(ds.series.end - 1) - timedelta(days=1)
    out = []
    d = first
    while d <= last:
        if cal.is_working_day(d):
            vals = ds.series.window(cal.at(d, EVENT_START), cal.at(d, EVENT_END))
            if all(v is not None for v in vals):
                out.append(d)
        d += timedelta(days=1)
    return out


def _window(d: date) -> EventWindow:
    z = ZoneInfo(TZ)
    return EventWindow(
        datetime.combine(d, EVENT_START, tzinfo=z),
        datetime.combine(d, EVENT_END, tzinfo=z),
        notice_date=d - timedelta(days=1),  # day-ahead invitation
    )


def _hourly(values: list[float], step_s: int) -> list[float]:
    """Hour means of a curve starting on the hour (metrics are compared per hour)."""
    k = 3600 // step_s
    return [sum(values[i : i + k]) / k for i in range(0, len(values), k)]


def run_ours(name: str) -> dict[str, dict[str, list[float] | None]]:
    """method -> ISO day -> hourly baseline over the window (None when unavailable)."""
    ds = load_dataset(name)
    out: dict[str, dict[str, list[float] | None]] = {m: {} for m in METHODS}
    out["actual"] = {}
    for d in event_days(ds):
        w = _window(d)
        actual = ds.series.window(w.start_ts, w.end_ts)
        out["actual"][d.isoformat()] = _hourly([float(v or 0.0) for v in actual], ds.series.step_s)
        for m, fn in METHODS.items():
            kwargs: dict[str, Any] = {}
            if m.startswith("regression") and ds.temperature is not None:
                kwargs["temperature"] = ds.temperature
            r = fn(ds.series, w, CALENDAR, **kwargs)
            out[m][d.isoformat()] = _hourly(r.curve_kw, ds.series.step_s) if r.available else None
    return out


def run_caltrack_week(name: str, monday: date, days: list[date]) -> dict[str, list[float] | None]:
    """CalTRACK DR model fitted once on the 90 days before ``monday``, predicting that week."""
    _quiet()
    import pandas as pd
    from eemeter.drmeter import CaltrackDRBaselineData, CaltrackDRModel, CaltrackDRReportingData

    load, temp = _raw(name)
    load = load.resample("h").mean()  # CalTRACK is hourly: half hours -> hour means
    if temp is None:
        # No weather in the dataset: a constant leaves CalTRACK its time-of-week model only.
        temp = pd.Series(15.0, index=load.index, name="temperature")
    fit_end = pd.Timestamp(CALENDAR.at(monday, time(0)), unit="s", tz="UTC")
    fit_start = max(load.index[0], fit_end - pd.Timedelta(days=CALTRACK_FIT_DAYS))
    hour = pd.Timedelta(hours=1)
    out: dict[str, list[float] | None] = {d.isoformat(): None for d in days}
    try:
        bd = CaltrackDRBaselineData.from_series(
            load[fit_start : fit_end - hour], temp[fit_start : fit_end - hour], True
        )
        model = CaltrackDRModel().fit(bd)
        rep_end = fit_end + pd.Timedelta(days=7)
        rd = CaltrackDRReportingData.from_series(
            load[fit_end : rep_end - hour], temp[fit_end : rep_end - hour], True
        )
        pred = model.predict(rd)["predicted"]
    except Exception as exc:  # a failed fit leaves the week unavailable, not the bench
        print(f"caltrack {name} week {monday}: {exc!r}", file=sys.stderr)
        return out
    for d in days:
        a = pd.Timestamp(CALENDAR.at(d, EVENT_START), unit="s", tz="UTC")
        b = pd.Timestamp(CALENDAR.at(d, EVENT_END), unit="s", tz="UTC")
        vals = pred[a : b - hour].to_list()
        if len(vals) == 2 and all(math.isfinite(v) for v in vals):
            out[d.isoformat()] = [float(v) for v in vals]
    return out


def _weeks(days: Iterable[date]) -> dict[date, list[date]]:
    weeks: dict[date, list[date]] = {}
    for d in days:
        weeks.setdefault(d - timedelta(days=d.weekday()), []).append(d)
    return weeks


def _hourly_peak(s: LoadSeries) -> float:
    """Highest complete hour mean of the series (metrics are hourly)."""
    k = 3600 // s.step_s
    hours = (s.values[i : i + k] for i in range(0, len(s.values) - k + 1, k))
    return max(sum(h) / k for h in hours if all(v is not None for v in h))  # type: ignore[arg-type]


def metrics(
    curves: dict[str, list[float] | None], actual: dict[str, list[float]], peak: float
) -> dict[str, Any]:
    """CV(RMSE), NMBE (+ = baseline above meter = over-credit), energy error, 5 %-of-peak misses."""
    days = [d for d, c in curves.items() if c is not None]
    errs = [b - a for d in days for b, a in zip(curves[d] or [], actual[d], strict=True)]
    acts = [a for d in days for a in actual[d]]
    if not errs:
        return {"days": 0}
    mean_act = statistics.fmean(acts)
    energy_err = []
    big = 0
    for d in days:
        base, act = sum(curves[d] or []), sum(actual[d])
        if act > 0:
            energy_err.append(abs(base - act) / act * 100.0)
        if abs(base - act) / len(actual[d]) > PEAK_SHARE * peak:
            big += 1
    return {
        "cv_rmse": math.sqrt(statistics.fmean(e * e for e in errs)) / mean_act,
        "nmbe": statistics.fmean(errs) / mean_act,
        "median_abs_energy_err_pct": statistics.median(energy_err) if energy_err else None,
        "share_days_err_over_5pct_peak": big / len(days),
        "days": len(days),
    }


def evaluate(names: list[str], workers: int) -> dict[str, Any]:
    result: dict[str, Any] = {"datasets": {}, "info": {}}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        ours = {n: pool.submit(run_ours, n) for n in names}
        cal_jobs = {
            n: [
                pool.submit(run_caltrack_week, n, monday, days)
                for monday, days in _weeks(event_days(load_dataset(n))).items()
            ]
            for n in names
        }
        for n in names:
            res = ours[n].result()
            caltrack: dict[str, list[float] | None] = {}
            for f in cal_jobs[n]:
                caltrack.update(f.result())
            res["caltrack"] = caltrack
            actual = res.pop("actual")
            # Compare every method on the same days: those where all produced a baseline.
            common = [d for d in actual if all(res[m].get(d) is not None for m in res)]
            ds = load_dataset(n)
            peak = _hourly_peak(ds.series)
            table = {}
            for m, curves in res.items():
                table[m] = metrics({d: curves[d] for d in common}, actual, peak)
                table[m]["unavailable_days"] = sum(curves.get(d) is None for d in actual)
            result["datasets"][n] = table
            result["info"][n] = {
                "event_days": len(actual),
                "common_days": len(common),
                "series_peak": peak,
                "note": ds.note,
            }
    return result


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:7.1f}%" if pct else f"{v:7.1f}"


def print_table(result: dict[str, Any]) -> None:
    for name, table in result["datasets"].items():
        info = result["info"][name]
        print(
            f"\n{name}: {info['common_days']} of {info['event_days']} pseudo-event days "
            f"(14:00-16:00 local) common to all methods; {info['note']}"
        )
        print(
            f"{'method':16} {'CV(RMSE)':>9} {'NMBE':>8} {'med|dE|':>8} {'>5%peak':>8} {'days':>5} {'n/a':>5}"
        )
        rows = list(table.items())
        rows.sort(key=lambda mr: mr[1].get("cv_rmse", math.inf))
        for m, r in rows:
            med = r.get("median_abs_energy_err_pct")
            print(
                f"{m:16} {_fmt(r.get('cv_rmse'), True):>9} {_fmt(r.get('nmbe'), True):>8} "
                f"{(f'{med:6.1f}%' if med is not None else '-'):>8} "
                f"{_fmt(r.get('share_days_err_over_5pct_peak'), True):>8} "
                f"{r.get('days', 0):>5} {r.get('unavailable_days', 0):>5}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--datasets", nargs="*", default=DATASETS, choices=DATASETS)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument(
        "--variants",
        action="store_true",
        help="also score regression_how: the regression with hour-of-week cells (by_weekday=True)",
    )
    args = ap.parse_args(argv)
    if args.variants:
        # Registered before the worker pool forks, so the workers see it too.
        METHODS["regression_how"] = functools.partial(regression, by_weekday=True)
    _quiet()
    t0 = _time.monotonic()
    result = evaluate(list(args.datasets), args.workers)
    result["elapsed_s"] = round(_time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print_table(result)
        print(f"\nelapsed {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
